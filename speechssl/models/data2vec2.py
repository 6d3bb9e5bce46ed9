"""data2vec 2.0 (Baevski et al. 2023, arXiv 2212.07525) and data2vec 1.0 (Baevski et al. 2022) for audio.

fairseq ``examples/data2vec/models/data2vec2.py`` + ``modalities/audio.py`` (2.0) and
``models/data2vec_audio.py`` (1.0); Hugging Face ``Data2VecAudioModel`` holds the 1.0 encoder
(import / export: :mod:`speechssl.upstream.data2vec_hf`).

Pipeline (shapes for one batch of ``B`` waveforms)::

    wavs [B, L] --frontend--> --feature_encoder (strided conv, LayerNorm)--> f [B, T, C]
         --feature_projection: LayerNorm(C) -> Linear(C, D)--> z [B, T, D]                 "latent"
    context(z): x = LN(z + PositionalConvStack(z)) -> N post-LN transformer blocks        layer_1..N

Teacher (an EMA copy of ``context``, :mod:`speechssl.modules.ema`; with ``ema_feature_encoder`` also
of the feature encoder and projection) encodes the *unmasked* z. Targets: the top ``top_k`` blocks'
FFN outputs (before the last residual, as both papers use; ``ffn_targets: false`` takes the block
outputs), each instance-normalised over the valid frames of its utterance (no parameters), averaged,
then optionally normalised again (``target_norm``). ``target_input_weight`` w > 0 (not in the papers)
mixes in the teacher's input z, normalised like a block: ``y = (1 - w) * mean + w * z``.

* ``variant: data2vec2``: ``clone_batch`` masks per utterance share that one teacher pass. Masked frames
  of z are zeroed, the positional conv runs over the whole sequence, then the student transformer
  encodes **only the unmasked frames** (the source of 2.0's speed); :class:`ConvDecoder1d` gets the
  student's output at the unmasked frames and ``N(0, mask_noise_std^2)`` noise at the masked ones and
  predicts every frame.
* ``variant: data2vec``: masked frames of z become a learned ``mask_emb``, the student encodes every
  frame and a Linear ``final_proj`` predicts; the teacher shares the positional conv (copied, fairseq
  ``ema_layers_only``).

Loss: squared error summed over dimensions / sqrt(D), averaged over masked frames (fairseq
``d2v_loss`` with ``loss_beta 0``, ``loss_scale None``).

Frames: as wav2vec 2.0 (``frame_shift`` = product of strides x the frontend's shift, 320 for Base;
``min_samples`` = receptive field). ``encode`` layer names: ``latent`` = z, ``layer_k``, ``context`` (==
``layer_N``, post-LN). Hugging Face ``hidden_states[k]`` == ``layer_k``.

Metrics (diagnostics; a collapsing data2vec keeps a falling loss, fairseq #5239): ``target_var`` (variance
over masked frames of the final targets, averaged over dimensions), ``target_var_layer_<k>`` (the same for
block k's raw output before instance norm), ``teacher_var`` / ``student_var`` (the teacher's last block and
the student's encoder output), ``pred_var``, ``ema_decay``. A variance below ``collapse_var`` is a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from speechssl.features.base import build_frontend
from speechssl.models.base import MODELS, EncoderOutput, FeatureEncoderFrames, LossOutput, ModelSpec, SSLModel
from speechssl.models.wav2vec2 import BASE_CONV_LAYERS, FeatureProjection
from speechssl.modules.conv import (
    ConvFeatureEncoder,
    FrameStack,
    build_feature_encoder,
    check_feature_encoder,
)
from speechssl.modules.conv_stacks import ConvDecoder1d, PositionalConvStack
from speechssl.modules.ema import EMATeacher, check_ema_config, released_state
from speechssl.modules.masking import span_mask
from speechssl.modules.padding import lengths_to_mask
from speechssl.modules.transformer import TransformerLayer

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Data2Vec2Config:
    """data2vec 2.0 / 1.0 config. Defaults = data2vec 2.0 Base audio (fairseq ``base_audio_only_task.yaml``)."""

    variant: Literal["data2vec2", "data2vec"] = "data2vec2"
    # Frontend: waveform normalised per utterance (fairseq task.normalize: true).
    frontend: dict = dataclasses.field(default_factory=lambda: {"name": "waveform", "normalize": True})
    # Feature encoder: (out_channels, kernel, stride) per conv layer; [] = no CNN: the frontend's frames
    # stacked ``stack_frames`` at a time (as MelHuBERT; needs a frame frontend such as logmel).
    conv_layers: list[tuple[int, int, int]] = dataclasses.field(default_factory=lambda: list(BASE_CONV_LAYERS))
    conv_norm: Literal["group_norm", "layer_norm", "none"] = "layer_norm"  # fairseq extractor_mode layer_norm
    conv_bias: bool = False
    stack_frames: int = 1  # only without a CNN: frontend frames per model frame
    feature_grad_mult: float = 1.0  # gradient scale into the feature encoder (0: frozen)
    # Keep the feature projection (LayerNorm + Linear: the ``latent`` layer) at its random init (not in
    # the papers; as wav2vec 2.0's option). With feature_grad_mult 0 the latent is then exactly the
    # random-init control's, and an ``ema_feature_encoder`` teacher's copy stays equal to it too.
    freeze_projection: bool = False
    # Context network.
    embed_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    pos_conv_depth: int = 5  # blocks of the positional conv stack
    pos_conv_kernel: int = 19  # fairseq conv_pos_width 95 // depth 5
    pos_conv_groups: int = 16
    layer_norm_eps: float = 1.0e-5
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    input_dropout: float = 0.0  # on z (fairseq dropout_input)
    layer_drop: float = 0.05
    # Masking (speechssl.modules.masking units: fairseq mask_prob 0.5 + mask_prob_adjust 0.05 over span 5).
    mask_prob: float = 0.11
    mask_span: int = 5
    min_masks: int = 1
    clone_batch: int = 8  # masks per utterance sharing one teacher pass
    mask_noise_std: float = 0.01  # data2vec2: decoder input at masked frames
    # Decoder (data2vec2 only).
    decoder_dim: int = 384
    decoder_layers: int = 4
    decoder_kernel: int = 7
    decoder_groups: int = 16
    decoder_input_dropout: float = 0.1
    # Zero the decoder's output projection at init (not in the papers): the first predictions are 0 (the
    # targets' mean) instead of random, so the first steps do not push the student's output to a constant.
    decoder_zero_init: bool = False
    # Targets.
    top_k: int = 8  # average of the top K blocks
    ffn_targets: bool = True  # FFN output before the last residual (both papers); False: block output
    instance_norm_layers: bool = True  # instance-normalise each block's output before averaging
    target_norm: Literal["none", "layer", "instance"] = "none"  # normalisation of the average
    target_input_weight: float = 0.0  # weight w of the teacher's input z: y = (1 - w) * mean(top K) + w * z
    # EMA teacher (speechssl.modules.ema).
    ema_start: float = 0.999
    ema_end: float = 0.99999
    ema_anneal_steps: int = 75000
    ema_feature_encoder: bool = False  # False: the teacher uses the student's feature encoder + projection
    release: Literal["student", "teacher"] = "student"  # which network a released encoder holds
    collapse_var: float = 1.0e-4  # warn when a target / representation variance falls below this

    def __post_init__(self) -> None:
        self.conv_layers = [tuple(int(v) for v in layer) for layer in self.conv_layers]
        for key in ("dropout", "attention_dropout", "activation_dropout", "input_dropout", "layer_drop", "mask_prob",
                    "decoder_input_dropout", "target_input_weight"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"model.{key} must be in [0, 1], got {value}")
        for key in ("num_layers", "mask_span", "clone_batch", "top_k", "pos_conv_depth", "decoder_layers"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if self.top_k > self.num_layers:
            raise ValueError(f"model.top_k {self.top_k} exceeds model.num_layers {self.num_layers}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"model.embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        check_feature_encoder(self.conv_layers, self.stack_frames)
        if self.variant == "data2vec" and self.ema_feature_encoder:
            raise ValueError("model.ema_feature_encoder: the data2vec (1.0) variant's teacher shares the feature encoder")
        check_ema_config(self.ema_start, self.ema_end, self.ema_anneal_steps)


def data2vec2_base() -> Data2Vec2Config:
    """data2vec 2.0 Base audio (fairseq ``examples/data2vec/config/v2/base_audio_only_task.yaml``): 12 x 768
    post-LN, K = 8, mask 0.5 (+0.05) span 5, clone_batch 8, decoder 4 x 384 kernel 7, EMA 0.999 -> 0.99999
    over 75k steps (lr 7.5e-4 cosine, 8k warm-up: recipes/pretrain/data2vec2_base.yaml)."""
    return Data2Vec2Config()


def data2vec_base() -> Data2Vec2Config:
    """data2vec 1.0 Base audio (fairseq ``examples/data2vec/config/audio/pretraining/base_librispeech.yaml``):
    mask 0.65 span 10, mask embedding, no decoder, EMA 0.999 -> 0.9999 over 30k steps, K = 8."""
    return Data2Vec2Config(variant="data2vec", mask_prob=0.065, mask_span=10, min_masks=2, clone_batch=1,
                           ema_end=0.9999, ema_anneal_steps=30000)


def data2vec2_tiny() -> Data2Vec2Config:
    """A small data2vec 2.0 that learns on 2 CPU cores in minutes: 80-dim log-Mel (utterance CMVN) with a
    stride-2 conv subsampler (20 ms frames), 4 x 192 post-LN blocks, K = 3, clone_batch 4, a 2-layer
    decoder of 96 channels, EMA 0.99 -> 0.999 over 1k steps (a short run needs a teacher that follows)."""
    return Data2Vec2Config(
        frontend={"name": "logmel", "n_mels": 80, "cmvn": "utterance"}, conv_layers=[(192, 3, 2)],
        embed_dim=192, num_layers=4, num_heads=4, ffn_dim=768, pos_conv_depth=2, pos_conv_kernel=9,
        pos_conv_groups=8, dropout=0.05, attention_dropout=0.0, layer_drop=0.0, top_k=3, clone_batch=4,
        decoder_dim=96, decoder_layers=2, decoder_kernel=5, decoder_groups=8,
        ema_start=0.99, ema_end=0.999, ema_anneal_steps=1000,
    )


class Data2VecContext(nn.Module):
    """Positional conv stack + LayerNorm + post-LN (or pre-LN) transformer blocks (data2vec's encoder).

    ``forward`` runs it over whole sequences; the pieces (:attr:`pos_conv`, :meth:`pre_blocks`,
    :meth:`blocks`) let the data2vec 2.0 student run the blocks on its unmasked frames only.
    """

    def __init__(self, cfg: Data2Vec2Config):
        super().__init__()
        self.pos_conv = PositionalConvStack(cfg.embed_dim, cfg.pos_conv_depth, cfg.pos_conv_kernel, cfg.pos_conv_groups)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layer_drop = cfg.layer_drop
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.embed_dim, cfg.num_heads, cfg.ffn_dim, cfg.dropout, cfg.attention_dropout,
                             cfg.activation_dropout, False, cfg.layer_norm_eps)
            for _ in range(cfg.num_layers))
        for module in self.layers.modules():
            if isinstance(module, nn.Linear):  # BERT-style init (fairseq init_bert_params)
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.bias)

    def pre_blocks(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.layer_norm(x))

    def blocks(self, x: torch.Tensor, padding_mask: torch.Tensor | None, collect: str | None = None
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the blocks on x [B, U, D]. ``collect``: None, "block" (each block's output) or "ffn"
        (each block's FFN output before its last residual). Returns (output, collected)."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        attn_mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
        out: list[torch.Tensor] = []
        for layer in self.layers:
            if self.training and self.layer_drop > 0 and float(torch.rand(())) < self.layer_drop:
                if collect:
                    out.append(torch.zeros_like(x) if collect == "ffn" else x)
                continue
            if collect == "ffn":
                h = layer.attn_norm(x + layer.dropout(layer.attention(x, attn_mask)))
                ffn = layer.ffn(h)
                x = layer.ffn_norm(h + ffn)
                out.append(ffn)
            else:
                x = layer(x, attn_mask)
                if collect:
                    out.append(x)
        return x, out

    def forward(self, z: torch.Tensor, padding_mask: torch.Tensor | None = None, collect: str | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """z [B, T, D] (padding frames anything) -> (output [B, T, D], collected per block)."""
        if padding_mask is not None:
            z = z.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = self.pre_blocks(z + self.pos_conv(z, padding_mask))
        return self.blocks(x, padding_mask, collect)


def masked_instance_norm(x: torch.Tensor, valid: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Normalise x [B, T, D] per utterance and channel over its valid frames (``F.instance_norm``
    restricted to ``valid`` [B, T]); padding frames come out 0. fp32."""
    x = x.float()
    w = valid.unsqueeze(-1).float()
    n = w.sum(1, keepdim=True).clamp(min=1)
    mean = (x * w).sum(1, keepdim=True) / n
    var = ((x - mean).pow(2) * w).sum(1, keepdim=True) / n
    return (x - mean) * torch.rsqrt(var + eps) * w


def _frame_var(x: torch.Tensor) -> float:
    """Variance over frames of x [N, D], averaged over dimensions (0 for fewer than 2 frames)."""
    return float(x.detach().float().var(0).mean()) if x.shape[0] > 1 else 0.0


class Data2Vec2Model(FeatureEncoderFrames, SSLModel):
    """data2vec 2.0 / 1.0 (see the module docstring). Build with :func:`build_data2vec2`."""

    name = "data2vec2"

    def __init__(self, config: Data2Vec2Config, frontend: nn.Module, feature_encoder: ConvFeatureEncoder | FrameStack,
                 feature_projection: FeatureProjection, context: Data2VecContext, decoder: ConvDecoder1d | None,
                 final_proj: nn.Module | None):
        super().__init__(config)
        self.frontend = frontend
        self.feature_encoder = feature_encoder
        self.feature_projection = feature_projection
        self.context = context
        if config.variant == "data2vec":
            self.mask_emb = nn.Parameter(torch.empty(config.embed_dim).uniform_())
        self.decoder = decoder
        self.final_proj = final_proj
        copy_keys = [f"pos_conv.{n}" for n, _ in context.pos_conv.named_parameters()] if config.variant == "data2vec" else []
        self.teacher = EMATeacher(self._ema_source(), config.ema_start, config.ema_end, config.ema_anneal_steps,
                                  copy_keys=copy_keys)
        self._calls_since_warning = 10**9

    def _ema_source(self) -> nn.Module:
        """The part of the student the teacher copies (a fresh container of the same modules when the
        teacher has its own feature encoder: same parameter names every time)."""
        if self.config.ema_feature_encoder:
            return nn.ModuleDict({"feature_encoder": self.feature_encoder,
                                  "feature_projection": self.feature_projection, "context": self.context})
        return self.context

    # ---- contract properties -------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.context.layers)

    def step_update(self, step: int) -> None:
        self.teacher.update(self._ema_source(), step)

    def released_state_dict(self) -> dict[str, torch.Tensor]:
        prefix = "" if self.config.ema_feature_encoder else "context."
        return released_state(self, "teacher.", prefix, self.config.release)

    def complete_state(self, missing: list[str]) -> list[str]:
        return self.teacher.reset_if_missing(self._ema_source(), missing, "teacher.")

    # ---- features --------------------------------------------------------------------------
    def conv_features(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wavs [B, L], lengths [B] -> (conv features f [B, T, C], valid frames [B])."""
        feats, feat_lengths = self.frontend(wavs, lengths)
        return self.feature_encoder(feats.transpose(1, 2), feat_lengths)

    @staticmethod
    def _padding(valid: torch.Tensor) -> torch.Tensor | None:
        return None if bool(valid.all()) else ~valid

    def encode(self, wavs: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        """Features without masking: ``[latent, layer_1..layer_N, context]``, each [B, T, D]."""
        lengths = self.check_lengths(wavs, lengths)
        feats, frame_lengths = self.conv_features(wavs, lengths)
        latent = self.feature_projection(feats)
        valid = lengths_to_mask(frame_lengths, latent.shape[1])
        context, layers = self.context(latent, self._padding(valid), collect="block")
        return EncoderOutput(hidden_states=[latent, *layers, context], lengths=frame_lengths,
                             layer_names=self.layer_names, frame_shift=self.frame_shift)

    # ---- targets ---------------------------------------------------------------------------
    @torch.no_grad()
    def targets(self, wavs: torch.Tensor, lengths: torch.Tensor, latent: torch.Tensor, valid: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """The teacher's targets [B, T, D] (fp32, 0 on padding) for the unmasked input, and their health numbers."""
        cfg = self.config
        padding = self._padding(valid)
        teacher = self.teacher.module
        if cfg.ema_feature_encoder:
            inputs, input_lengths = self.frontend(wavs, lengths)
            feats, _ = teacher["feature_encoder"](inputs.transpose(1, 2), input_lengths)
            z = teacher["feature_projection"](feats)
            out, layers = teacher["context"](z, padding, collect="ffn" if cfg.ffn_targets else "block")
        else:
            z = latent.detach()
            out, layers = teacher(z, padding, collect="ffn" if cfg.ffn_targets else "block")
        top = layers[-cfg.top_k:]
        stats = {"teacher_var": _frame_var(out[valid])}
        first = cfg.num_layers - cfg.top_k + 1
        for k, layer in enumerate(top):
            stats[f"target_var_layer_{first + k}"] = _frame_var(layer[valid])
        if cfg.instance_norm_layers:
            top = [masked_instance_norm(layer, valid) for layer in top]
        y = torch.stack([layer.float() for layer in top]).mean(0)
        if cfg.target_input_weight > 0:  # the teacher's input (the latent) as an extra target, normalised alike
            stats["target_var_input"] = _frame_var(z[valid])
            zt = masked_instance_norm(z, valid) if cfg.instance_norm_layers else z.float()
            y = (1.0 - cfg.target_input_weight) * y + cfg.target_input_weight * zt
        if cfg.target_norm == "layer":
            y = F.layer_norm(y, y.shape[-1:])
        elif cfg.target_norm == "instance":
            y = masked_instance_norm(y, valid)
        return y * valid.unsqueeze(-1), stats

    # ---- pretraining loss --------------------------------------------------------------------
    def loss(self, batch: Mapping[str, Any]) -> LossOutput:
        """Masked regression of the teacher's targets on ``batch["wavs"]`` [B, L], ``batch["lengths"]`` [B]."""
        cfg = self.config
        wavs = batch["wavs"]
        lengths = self.check_lengths(wavs, batch.get("lengths"))
        feats, frame_lengths = self.training_conv_features(wavs, lengths)
        latent = self.feature_projection(feats)
        frames = latent.shape[1]
        valid = lengths_to_mask(frame_lengths, frames)
        y, stats = self.targets(wavs, lengths, latent, valid)

        clones = cfg.clone_batch
        if clones > 1:  # every mask of an utterance reuses its features and its targets
            latent, y = latent.repeat_interleave(clones, 0), y.repeat_interleave(clones, 0)
            frame_lengths, valid = frame_lengths.repeat_interleave(clones, 0), valid.repeat_interleave(clones, 0)
        padding = self._padding(valid)
        mask = span_mask(frame_lengths, frames, cfg.mask_prob, cfg.mask_span, cfg.min_masks) & valid
        if cfg.variant == "data2vec2":
            pred, student = self._student_data2vec2(latent, mask, valid)
        else:
            x = torch.where(mask.unsqueeze(-1), self.mask_emb.to(latent.dtype), latent)
            out, _ = self.context(x, padding)
            pred, student = self.final_proj(out), out[valid]
        p, t = pred[mask].float(), y[mask]
        if p.shape[0]:
            loss = (p - t).pow(2).sum(-1).mean() / math.sqrt(p.shape[-1])
        else:  # no masked frame: a zero that keeps every parameter in the graph (DDP)
            loss = 0.0 * pred.float().sum()
        metrics = {
            "loss": float(loss.detach()),
            "mask_ratio": float(mask.sum() / valid.sum().clamp(min=1)),
            "target_var": _frame_var(t),
            "pred_var": _frame_var(p),
            "student_var": _frame_var(student),
            "ema_decay": float(self.teacher.decay),
            **stats,
        }
        self._warn_on_collapse(metrics)
        return LossOutput(loss=loss.float(), metrics=metrics)

    def _student_data2vec2(self, latent: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """The 2.0 student: blocks over the unmasked frames only, then the decoder over all of them.

        latent, mask, valid: [B, T, D], [B, T], [B, T] -> (predictions [B, T, D], student frames [N, D])."""
        cfg = self.config
        padding = self._padding(valid)
        x = latent.masked_fill((mask | ~valid).unsqueeze(-1), 0.0)
        x = x + self.context.pos_conv(x, padding)
        keep = valid & ~mask
        counts = keep.sum(1)
        kept_frames = max(1, int(counts.max()))
        # indices of the kept frames of each row, in time order, first (stable sort of "not kept")
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :kept_frames]
        slot_used = torch.arange(kept_frames, device=x.device)[None, :] < counts[:, None]
        xk = torch.gather(x, 1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        xk, _ = self.context.blocks(self.context.pre_blocks(xk), None if bool(slot_used.all()) else ~slot_used)
        student = xk[slot_used]
        xk = F.dropout(xk, cfg.decoder_input_dropout, self.training)
        noise = torch.randn_like(x) * cfg.mask_noise_std
        dec_in = noise.masked_fill(~valid.unsqueeze(-1), 0.0)
        # put each kept frame's output back at its time index (unused slots write to a kept index
        # again with their own value zeroed out: scatter_add of zeros)
        src = xk.masked_fill(~slot_used.unsqueeze(-1), 0.0)
        dec_in = dec_in.masked_fill(keep.unsqueeze(-1), 0.0)
        dec_in = dec_in.scatter_add(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]), src.to(dec_in.dtype))
        return self.decoder(dec_in, padding), student

    def _warn_on_collapse(self, metrics: dict[str, float]) -> None:
        self._calls_since_warning += 1
        # the final targets and the two networks' outputs (post-LN: ~1 when healthy); the raw block outputs
        # (target_var_layer_<k>) are logged, not judged: their scale depends on the initialisation
        keys = ["target_var", "teacher_var", "student_var"]
        low = {k: metrics[k] for k in keys if k in metrics and metrics[k] < self.config.collapse_var}
        if low and self._calls_since_warning >= 100:
            log.warning("data2vec2: representation collapse: variance over frames %s below %.1e while the loss is "
                        "%.4g; the teacher's targets are (nearly) constant, so a falling loss means nothing. Try a "
                        "lower lr, a slower EMA (higher ema_start) or instance-normalised targets",
                        {k: f"{v:.2e}" for k, v in low.items()}, self.config.collapse_var, metrics["loss"])
            self._calls_since_warning = 0


def build_data2vec2(cfg: Data2Vec2Config) -> Data2Vec2Model:
    """Build every submodule from ``cfg`` and assemble the model."""
    frontend = build_frontend(cfg.frontend)
    feature_encoder = build_feature_encoder(frontend, cfg.conv_layers, cfg.conv_norm, cfg.conv_bias,
                                            cfg.stack_frames)
    feature_projection = FeatureProjection(feature_encoder.out_dim, cfg.embed_dim, cfg.input_dropout, cfg.layer_norm_eps,
                                           frozen=cfg.freeze_projection)
    context = Data2VecContext(cfg)
    decoder = final_proj = None
    if cfg.variant == "data2vec2":
        decoder = ConvDecoder1d(cfg.embed_dim, cfg.decoder_dim, cfg.decoder_layers, cfg.decoder_kernel,
                                cfg.decoder_groups)
        # zeroed after the default init: the random stream (and the released encoder) stay unchanged
        if cfg.decoder_zero_init:
            nn.init.zeros_(decoder.proj.weight)
            nn.init.zeros_(decoder.proj.bias)
    else:
        final_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
    return Data2Vec2Model(cfg, frontend, feature_encoder, feature_projection, context, decoder, final_proj)


MODELS.register("data2vec2", ModelSpec(Data2Vec2Config, build_data2vec2))
