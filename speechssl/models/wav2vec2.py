"""wav2vec 2.0-style masked, quantized contrastive model (Baevski et al. 2020).

fairseq ``models/wav2vec/wav2vec2.py`` (``Wav2Vec2Model``); torchaudio ``models.wav2vec2``;
Hugging Face ``Wav2Vec2ForPreTraining``. Weights of all three map into this model
(``speechssl.upstream.importers``) and out to Hugging Face (``speechssl.upstream.hf_export``).

Pipeline (shapes for one batch of ``B`` waveforms of ``L`` samples)::

    wavs [B, L] --frontend--> [B, L', D0]       waveform ([B, L, 1]) or log-Mel ([B, L/160, 80])
         --feature_encoder (strided conv, or stacked frames)--> f [B, T, C]   T = frames (20 ms for Base)
         --feature_projection: LayerNorm(C) -> Linear(C, D) -> dropout--> z [B, T, D]   "latent"
         --span mask (training): z[masked] = mask_emb
         --encoder (pos conv + transformer)--> layer_1 .. layer_N, context [B, T, D]

Training loss (``loss``): the quantizer turns ``LayerNorm(f)`` into targets ``q``; the context at
masked frames must pick ``project_q(q)`` among K distractors from other masked frames of the same
utterance (cosine / 0.1), plus ``diversity_weight * diversity_loss`` (codebook entropy) plus
``feature_penalty * mean(f ** 2)``; the feature encoder's gradient is scaled by ``feature_grad_mult``.
Options of fairseq kept off by default: ``cross_sample_negatives`` (extra distractors from other
utterances of the batch) and ``quantize_targets: false`` (continuous targets ``project_q(LayerNorm(f))``).

Frames: ``frame_shift`` = product of conv strides x frontend shift (320 samples = 20 ms for Base);
``min_samples`` = receptive field (400 samples for Base); frames(L) = conv formula applied
layer by layer (see ``speechssl.modules.conv``). ``encode`` raises for audio shorter than
``min_samples``; the Trainer drops such utterances using ``model.min_samples``.

``encode`` layer names: ``latent`` = z, the projected conv features *before* the positional
conv and any transformer layer (dimension D like every other layer); ``layer_k`` = output of
transformer layer k; ``context`` = final output (== ``layer_N`` for post-LN, its final LayerNorm for pre-LN).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from speechssl.features.base import build_frontend
from speechssl.models.base import (
    MODELS,
    EncoderOutput,
    FeatureEncoderFrames,
    LossOutput,
    ModelSpec,
    SSLModel,
)
from speechssl.modules.contrastive import contrastive_loss
from speechssl.modules.conv import (
    ConvFeatureEncoder,
    FrameStack,
    build_feature_encoder,
    check_feature_encoder,
)
from speechssl.modules.dropout import Dropout
from speechssl.modules.linear import Linear
from speechssl.modules.masking import span_mask
from speechssl.modules.padding import lengths_to_mask
from speechssl.modules.quantizer import GumbelVectorQuantizer
from speechssl.modules.transformer import TransformerEncoder

log = logging.getLogger(__name__)

BASE_CONV_LAYERS: list[tuple[int, int, int]] = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2


@dataclasses.dataclass
class Wav2Vec2Config:
    """wav2vec 2.0 model config. Defaults = wav2vec 2.0 Base (fairseq ``wav2vec2_base_librispeech``)."""

    # Frontend (``speechssl.features``): ``waveform`` feeds raw samples to the conv stack; with
    # ``logmel`` the conv stack acts as a subsampler over Mel frames (e.g. conv_layers [[512, 3, 2]]).
    frontend: dict = dataclasses.field(default_factory=lambda: {"name": "waveform"})
    # Feature encoder: (out_channels, kernel, stride) per conv layer; [] = no CNN: the frontend's frames
    # stacked ``stack_frames`` at a time (as MelHuBERT; needs a frame frontend such as logmel).
    conv_layers: list[tuple[int, int, int]] = dataclasses.field(default_factory=lambda: list(BASE_CONV_LAYERS))
    # group_norm: GroupNorm in the first conv layer (Base); layer_norm: LayerNorm in every layer (Large).
    conv_norm: Literal["group_norm", "layer_norm", "none"] = "group_norm"
    conv_bias: bool = False  # conv biases (False for Base, True for Large-LV60)
    stack_frames: int = 1  # only without a CNN: frontend frames per model frame
    # Transformer context network.
    embed_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12  # fairseq config (the paper says 8)
    ffn_dim: int = 3072
    layer_norm_first: bool = False  # pre-LN ("stable layer norm", Large) if True; post-LN (Base) if False
    pos_conv_kernel: int = 128  # convolutional relative positional embedding
    pos_conv_groups: int = 16
    layer_norm_eps: float = 1.0e-5
    dropout: float = 0.1  # residual / positional dropout
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0  # inside the FFN
    input_dropout: float = 0.1  # on projected features before masking (fairseq dropout_input)
    target_dropout: float = 0.1  # on the quantizer input (fairseq dropout_features)
    layer_drop: float = 0.05  # LayerDrop; > 0 leaves skipped layers without gradient (DDP: find_unused_parameters)
    # Span masking (fraction masked ~ 1 - (1 - mask_prob) ** mask_span = 49 %).
    mask_prob: float = 0.065  # probability that a frame starts a span (fairseq mask_prob 0.65 / span)
    mask_span: int = 10
    min_masks: int = 2
    # Gumbel product quantizer. quantize_targets false (fairseq quantize_targets): the targets are the
    # continuous features project_q(LayerNorm(f)) instead of codewords; the quantizer is then unused
    # (no gradient: DDP needs train.find_unused_parameters) and the diversity loss is not added.
    quantize_targets: bool = True
    num_groups: int = 2  # G
    num_vars: int = 320  # V codewords per group
    vq_dim: int = 256  # quantized vector size (G codewords of vq_dim / G)
    final_dim: int = 256  # contrastive space (project_q and final_proj outputs)
    temp_max: float = 2.0
    temp_min: float = 0.5
    temp_decay: float = 0.999995  # per optimiser step
    # Loss.
    num_negatives: int = 100  # K distractors per masked frame, from masked frames of the same utterance
    # Extra distractors from the masked frames of any utterance of the batch (fairseq
    # cross_sample_negatives; 0 = off, as in the paper). They make the context keep speaker and
    # channel information that same-utterance distractors let it drop.
    cross_sample_negatives: int = 0
    logit_temperature: float = 0.1
    diversity_weight: float = 0.1
    feature_penalty: float = 10.0  # weight of mean(f ** 2)
    feature_grad_mult: float = 0.1  # gradient scale into the feature encoder (0: frozen)
    # Keep the feature projection (LayerNorm + Linear: the ``latent`` layer) at its random init too:
    # with a frozen feature encoder the latent is then exactly the random-init control's.
    freeze_projection: bool = False
    # Warn when a group's code perplexity falls below this (codebook collapse).
    collapse_perplexity: float = 2.0

    def __post_init__(self) -> None:
        self.conv_layers = [tuple(int(v) for v in layer) for layer in self.conv_layers]
        for key in ("dropout", "attention_dropout", "activation_dropout", "input_dropout", "target_dropout",
                    "layer_drop", "mask_prob"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"model.{key} must be in [0, 1], got {value}")
        check_feature_encoder(self.conv_layers, self.stack_frames)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"model.embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.vq_dim % self.num_groups:
            raise ValueError(f"model.vq_dim {self.vq_dim} is not divisible by num_groups {self.num_groups}")
        if self.num_negatives < 0 or self.cross_sample_negatives < 0:
            raise ValueError(f"model.num_negatives and model.cross_sample_negatives must be >= 0, got "
                             f"{self.num_negatives} and {self.cross_sample_negatives}")
        if self.num_negatives + self.cross_sample_negatives < 1:
            raise ValueError(f"model.num_negatives must be >= 1 (or model.cross_sample_negatives >= 1), got "
                             f"{self.num_negatives}")


def wav2vec2_base() -> Wav2Vec2Config:
    """wav2vec 2.0 Base: 95.04 M parameters (fairseq ``wav2vec2_base_librispeech``)."""
    return Wav2Vec2Config()


def wav2vec2_tiny() -> Wav2Vec2Config:
    """A ~1.8 M-parameter model that learns on 2 CPU cores in minutes.

    80-dim log-Mel frontend (utterance CMVN) + one conv subsampler layer (stride 2: 20 ms frames,
    like Base), 3 x 192 post-LN transformer, G = 2 x V = 64 codewords, K = 50 distractors. On the
    synthetic corpus the waveform conv encoder at this size sits at chance (ln(K + 1)) for the first
    hundreds of steps (wav2vec 2.0's initial plateau); log-Mel targets are predictable from the start.
    """
    return Wav2Vec2Config(
        frontend={"name": "logmel", "n_mels": 80, "cmvn": "utterance"},
        conv_layers=[(192, 3, 2)], conv_norm="layer_norm",
        embed_dim=192, num_layers=3, num_heads=4, ffn_dim=768, pos_conv_kernel=64, pos_conv_groups=8,
        dropout=0.05, attention_dropout=0.0, input_dropout=0.05, target_dropout=0.05, layer_drop=0.0,
        num_groups=2, num_vars=64, vq_dim=128, final_dim=128, temp_decay=0.995, num_negatives=50,
        feature_grad_mult=0.5,
    )


class FeatureProjection(nn.Module):
    """``dropout(Linear(LayerNorm(f)))``: conv features [B, T, C] -> [B, T, D].

    ``frozen=True`` keeps it at its random init (``freeze_projection``: no gradient, not counted as trained,
    as BEST-RQ's freeze_input); with a frozen feature encoder the ``latent`` layer is then the control's.
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float, eps: float = 1e-5, frozen: bool = False):
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_dim, eps=eps)
        self.projection = Linear(in_dim, out_dim)
        self.dropout = Dropout(dropout, out_dim)
        if frozen:
            self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.projection(self.layer_norm(x)))


class Wav2Vec2Model(FeatureEncoderFrames, SSLModel):
    """wav2vec 2.0 (see the module docstring). Build with :func:`build_wav2vec2`."""

    name = "wav2vec2"

    def __init__(self, config: Wav2Vec2Config, frontend: nn.Module, feature_encoder: ConvFeatureEncoder | FrameStack,
                 feature_projection: FeatureProjection, encoder: TransformerEncoder,
                 quantizer: GumbelVectorQuantizer, project_q: nn.Linear, final_proj: nn.Linear):
        super().__init__(config)
        self.frontend = frontend
        self.feature_encoder = feature_encoder
        self.feature_projection = feature_projection
        self.mask_emb = nn.Parameter(torch.empty(config.embed_dim).uniform_())
        self.encoder = encoder
        self.quantizer = quantizer
        self.target_dropout = Dropout(config.target_dropout, config.embed_dim)
        self.project_q = project_q
        self.final_proj = final_proj
        self._calls_since_warning = 10**9

    # ---- contract properties -------------------------------------------------------------
    def step_update(self, step: int) -> None:
        self.quantizer.set_step(step)

    # ---- shared feature path -------------------------------------------------------------
    def conv_features(self, wavs: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """wavs [B, L], lengths [B] -> (conv features f [B, T, C], valid frames [B])."""
        if lengths is None:
            lengths = torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long, device=wavs.device)
        feats, feat_lengths = self.frontend(wavs, lengths)
        return self.feature_encoder(feats.transpose(1, 2), feat_lengths)

    @staticmethod
    def _padding_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor | None:
        """[B, T] bool, True = padding; None when no utterance is padded (fast path)."""
        if bool((lengths >= frames).all()):
            return None
        return ~lengths_to_mask(lengths, frames)

    # ---- frozen features -----------------------------------------------------------------
    def encode(self, wavs: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        """Features without masking. wavs [B, L] 16 kHz, lengths [B] -> EncoderOutput with
        ``hidden_states`` ``[latent, layer_1..layer_N, context]``, each [B, T, D]."""
        lengths = self.check_lengths(wavs, lengths)
        feats, frame_lengths = self.conv_features(wavs, lengths)
        latent = self.feature_projection(feats)
        padding = self._padding_mask(frame_lengths, latent.shape[1])
        context, layers = self.encoder(latent, padding, return_layers=True)
        return EncoderOutput(
            hidden_states=[latent, *layers, context],
            lengths=frame_lengths,
            layer_names=self.layer_names,
            frame_shift=self.frame_shift,
        )

    # ---- pretraining loss ----------------------------------------------------------------
    def loss(self, batch: Mapping[str, Any]) -> LossOutput:
        """Contrastive + diversity + feature-penalty loss on ``batch["wavs"]`` [B, L], ``batch["lengths"]`` [B]."""
        cfg = self.config
        wavs = batch["wavs"]
        lengths = self.check_lengths(wavs, batch.get("lengths"))
        feats, frame_lengths = self.training_conv_features(wavs, lengths)
        batch_size, frames, _ = feats.shape
        valid = lengths_to_mask(frame_lengths, frames)
        padding = None if bool(valid.all()) else ~valid
        feature_pen = (feats.float().pow(2).mean(-1) * valid).sum() / valid.sum().clamp(min=1)

        normed = self.feature_projection.layer_norm(feats)
        x = self.feature_projection.dropout(self.feature_projection.projection(normed))
        mask = span_mask(frame_lengths, frames, cfg.mask_prob, cfg.mask_span, cfg.min_masks)
        x = torch.where(mask.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        context, _ = self.encoder(x, padding)

        if cfg.quantize_targets:
            q = self.quantizer(self.target_dropout(normed), mask)
            targets, codes = self.project_q(q.quantized), q.codes
        else:
            # Continuous targets: distractors equal to the positive are found by comparing vectors.
            with torch.no_grad():
                q = self.quantizer(normed, mask)  # health numbers only: what the codebook would do
            targets, codes = self.project_q(self.target_dropout(normed)), None
        predictions = self.final_proj(context)
        con = contrastive_loss(predictions, targets, mask, cfg.num_negatives, cfg.logit_temperature,
                               target_codes=codes, cross_negatives=cfg.cross_sample_negatives)
        if cfg.quantize_targets:  # the published sum, in its order (bit-identical numbers)
            loss = con.loss + cfg.diversity_weight * q.diversity_loss + cfg.feature_penalty * feature_pen
        else:
            loss = con.loss + cfg.feature_penalty * feature_pen

        metrics = {
            "loss": float(loss.detach()),
            "contrastive": float(con.loss.detach()),
            "diversity": float(q.diversity_loss.detach()),
            "feature_pen": float(feature_pen.detach()),
            "acc": float(con.accuracy),
            "mask_ratio": float(mask.sum() / valid.sum().clamp(min=1)),
            "codebook_usage": float(q.codebook_usage),
            "temperature": q.temperature,
        }
        for g in range(cfg.num_groups):
            metrics[f"code_perplexity_{g}"] = float(q.code_perplexity[g])
            metrics[f"prob_perplexity_{g}"] = float(q.prob_perplexity[g])
        self._warn_on_collapse(q.code_perplexity, q.codebook_usage, con.num_targets)
        return LossOutput(loss=loss.float(), metrics=metrics)

    def _warn_on_collapse(self, code_perplexity: torch.Tensor, usage: torch.Tensor, num_targets: int) -> None:
        self._calls_since_warning += 1
        worst = float(code_perplexity.min())
        if num_targets >= 2 * self.config.collapse_perplexity and worst < self.config.collapse_perplexity:
            if self._calls_since_warning >= 100:
                log.warning(
                    "wav2vec2: codebook collapse: code perplexity per group %s (threshold %.1f), codebook usage "
                    "%.1f %% of %d codewords; consider a higher temp_min, a larger diversity_weight or a lower lr",
                    [round(float(v), 2) for v in code_perplexity], self.config.collapse_perplexity,
                    100 * float(usage), self.config.num_groups * self.config.num_vars,
                )
                self._calls_since_warning = 0


def build_wav2vec2(cfg: Wav2Vec2Config) -> Wav2Vec2Model:
    """Build every submodule from ``cfg`` and assemble the model."""
    frontend = build_frontend(cfg.frontend)
    feature_encoder = build_feature_encoder(frontend, cfg.conv_layers, cfg.conv_norm, cfg.conv_bias,
                                            cfg.stack_frames)
    feature_projection = FeatureProjection(feature_encoder.out_dim, cfg.embed_dim, cfg.input_dropout,
                                           cfg.layer_norm_eps, frozen=cfg.freeze_projection)
    encoder = TransformerEncoder(
        cfg.embed_dim, cfg.num_layers, cfg.num_heads, cfg.ffn_dim, cfg.layer_norm_first, cfg.pos_conv_kernel,
        cfg.pos_conv_groups, cfg.dropout, cfg.attention_dropout, cfg.activation_dropout, cfg.layer_drop,
        cfg.layer_norm_eps,
    )
    for module in encoder.modules():
        if isinstance(module, nn.Linear):  # BERT-style init (fairseq init_bert_params)
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)
    quantizer = GumbelVectorQuantizer(feature_encoder.out_dim, cfg.num_groups, cfg.num_vars, cfg.vq_dim,
                                      cfg.temp_max, cfg.temp_min, cfg.temp_decay)
    project_q = Linear(cfg.vq_dim if cfg.quantize_targets else feature_encoder.out_dim, cfg.final_dim)
    final_proj = Linear(cfg.embed_dim, cfg.final_dim)
    return Wav2Vec2Model(cfg, frontend, feature_encoder, feature_projection, encoder, quantizer, project_q,
                         final_proj)


MODELS.register("wav2vec2", ModelSpec(Wav2Vec2Config, build_wav2vec2))
