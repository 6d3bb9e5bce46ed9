"""HuBERT: masked prediction of offline discrete targets (Hsu et al. 2021), and MelHuBERT as a config.

"HuBERT: Self-Supervised Speech Representation Learning by Masked Prediction of Hidden Units";
fairseq ``examples/hubert`` (``HubertModel``, ``hubert_base_librispeech.yaml``); torchaudio
``models.HuBERTPretrainModel`` / ``hubert_pretrain_base``; Hugging Face ``HubertModel``. Weights of
torchaudio and Hugging Face map into this model (``speechssl.upstream.importers``) and out to Hugging
Face (``speechssl.upstream.hf_export``).

Pipeline (shapes for one batch of ``B`` waveforms)::

    wavs [B, L] --frontend--> [B, L', D0]   waveform ([B, L, 1]) or log-Mel / MFCC ([B, L/160, F])
         --feature_encoder: wav2vec 2.0 conv stack (Base), or, with ``conv_layers: []``, the
           frontend frames stacked ``stack_frames`` at a time (MelHuBERT: no CNN)--> f [B, T, C]
         --feature_projection: LayerNorm(C) -> Linear(C, D) -> dropout--> z [B, T, D]     "latent"
         --span mask (training): z[masked] = mask_emb
         --encoder (pos conv + transformer)--> layer_1 .. layer_N, context [B, T, D]
    loss = mean_k CE_k(cos(final_proj(context), label_emb_k) / 0.1, targets_k) on masked frames
           (+ unmasked_weight x the same on unmasked frames) + feature_penalty x mean(f ** 2)

Targets come from ``speechssl targets kmeans`` / ``assign`` (:mod:`speechssl.targets`), one or more
target sets ("several k-means at once", the paper's section 4), as ``batch["targets"]``:
a LongTensor [B, T_t, K] already at the model's frame rate (the data loader picks every
``frame_shift / label_frame_shifts[k]``-th label, as fairseq's ``feat2tar_ratio``; -1 = no label).
``label_frame_shifts[k]`` is the label rate of set ``k`` in samples (160: 100 Hz MFCC labels of
iteration 1; 320: 50 Hz labels of iteration 2) and must divide :attr:`frame_shift`; the loader
refuses labels written at another rate. A valid model frame without a label is an error naming the
utterance and both counts.

Frames: as wav2vec 2.0 (``frame_shift`` 320 = 20 ms and ``min_samples`` 400 for Base). MelHuBERT
(Lin et al. 2022, :func:`melhubert_base`): 40-dim log-Mel (10 ms) stacked by 2 -> 20 ms frames, no
CNN; frame ``t`` covers samples ``[320 t, 320 t + 560)``.

``encode`` layer names: ``latent`` = z; ``layer_k`` = transformer layer k; ``context`` = final output.

Loss metrics: ``loss``, ``masked_ce``, ``unmasked_ce``, ``feature_pen``, ``acc`` (masked accuracy,
mean over target sets), ``acc_target_<k>``, ``code_perplexity_<k>`` (perplexity of the targets),
``codebook_usage`` (share of each set's classes among the targets), ``mask_ratio``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from speechssl.features.base import build_frontend
from speechssl.models.base import MODELS, EncoderOutput, FeatureEncoderFrames, LossOutput, ModelSpec, SSLModel
from speechssl.models.wav2vec2 import BASE_CONV_LAYERS, FeatureProjection
from speechssl.modules.conv import build_feature_encoder, check_feature_encoder
from speechssl.modules.linear import Linear
from speechssl.modules.masked_prediction import DiscreteTargetHead, masked_prediction_loss
from speechssl.modules.masking import span_mask
from speechssl.modules.padding import lengths_to_mask
from speechssl.modules.transformer import TransformerEncoder

log = logging.getLogger(__name__)


@dataclasses.dataclass
class HubertConfig:
    """HuBERT config. Defaults = HuBERT Base, iteration 1 (fairseq ``hubert_base_librispeech``)."""

    # Frontend (``speechssl.features``): ``waveform`` for the conv encoder; logmel/fbank for MelHuBERT.
    frontend: dict = dataclasses.field(default_factory=lambda: {"name": "waveform"})
    # Feature encoder: (out_channels, kernel, stride) per conv layer; [] = no CNN (frame stacking).
    conv_layers: list[tuple[int, int, int]] = dataclasses.field(default_factory=lambda: list(BASE_CONV_LAYERS))
    conv_norm: Literal["group_norm", "layer_norm", "none"] = "group_norm"
    conv_bias: bool = False
    stack_frames: int = 1  # only without a CNN: frontend frames per model frame (MelHuBERT: 2 x 10 ms)
    # Transformer context network.
    embed_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    layer_norm_first: bool = False  # post-LN (Base)
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    layer_norm_eps: float = 1.0e-5
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    input_dropout: float = 0.1  # fairseq dropout_input
    layer_drop: float = 0.05
    # Span masking: fairseq mask_prob 0.80, mask_length 10 -> 0.08 of frames start a 10-frame span.
    mask_prob: float = 0.08
    mask_span: int = 10
    min_masks: int = 2
    # Targets: classes of each target set and their label frame shift in samples (160 = 100 Hz).
    num_classes: list[int] = dataclasses.field(default_factory=lambda: [100])
    label_frame_shifts: list[int] = dataclasses.field(default_factory=lambda: [160])
    # Logits: cosine(final_proj(c), label embedding) / logit_temperature.
    final_dim: int = 256
    logit_temperature: float = 0.1
    untie_final_proj: bool = False  # one projection per target set (fairseq untie_final_proj)
    # Loss.
    unmasked_weight: float = 0.0  # fairseq pred_nomask_weight (Base: 0)
    feature_penalty: float = 10.0  # fairseq loss_weights [10]: weight of mean(f ** 2)
    feature_grad_mult: float = 0.1  # gradient scale into the feature encoder (0: frozen)
    # Keep the feature projection (LayerNorm + Linear: the ``latent`` layer) at its random init too, as
    # wav2vec2's option: with a frozen feature encoder the latent is then exactly the random-init control's.
    freeze_projection: bool = False

    def __post_init__(self) -> None:
        self.conv_layers = [tuple(int(v) for v in layer) for layer in self.conv_layers]
        self.num_classes = [int(v) for v in self.num_classes]
        self.label_frame_shifts = [int(v) for v in self.label_frame_shifts]
        for key in ("dropout", "attention_dropout", "activation_dropout", "input_dropout", "layer_drop", "mask_prob"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"model.{key} must be in [0, 1], got {value}")
        check_feature_encoder(self.conv_layers, self.stack_frames)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"model.embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if not self.num_classes or min(self.num_classes) < 2:
            raise ValueError(f"model.num_classes: every target set needs >= 2 classes, got {self.num_classes} "
                             "(an empty cluster dictionary would turn every label into one class)")
        if len(self.label_frame_shifts) != len(self.num_classes) or min(self.label_frame_shifts) < 1:
            raise ValueError(f"model.label_frame_shifts needs one shift >= 1 per target set of model.num_classes "
                             f"{self.num_classes}, got {self.label_frame_shifts}")
        if self.logit_temperature <= 0 or self.unmasked_weight < 0 or self.feature_penalty < 0:
            raise ValueError(f"model.logit_temperature must be > 0 and unmasked_weight, feature_penalty >= 0, got "
                             f"{self.logit_temperature}, {self.unmasked_weight}, {self.feature_penalty}")


def hubert_base() -> HubertConfig:
    """HuBERT Base, iteration 1: 94.68 M parameters with K = 100 (torchaudio ``hubert_pretrain_base()``).

    fairseq ``hubert_base_librispeech.yaml``: mask_prob 0.80 (fairseq units) span 10, final_dim 256,
    logits cosine / 0.1, layer drop 0.05, feature penalty 10, feature-encoder gradient x 0.1; optimiser
    Adam 5e-4 with 32k warm-up (``recipes/pretrain/hubert_base.yaml``). Targets: K = 100 k-means on
    39-dim MFCC at 100 Hz. Iteration 2 is ``num_classes=[500], label_frame_shifts=[320]`` (layer 6, 50 Hz).
    """
    return HubertConfig()


def melhubert_base() -> HubertConfig:
    """MelHuBERT (Lin et al. 2022, arXiv 2211.09944): 40-dim log-Mel stacked to 20 ms, no CNN, 12L/768,
    512 clusters (labels at 50 Hz), mask 0.7 span 5 (0.14 of frames start a 5-frame span here)."""
    return HubertConfig(
        frontend={"name": "logmel", "n_mels": 40, "cmvn": "utterance"}, conv_layers=[], stack_frames=2,
        mask_prob=0.14, mask_span=5, num_classes=[512], label_frame_shifts=[320], feature_penalty=0.0,
        feature_grad_mult=1.0,
    )


def hubert_tiny() -> HubertConfig:
    """A ~1.5 M-parameter MelHuBERT-style model that learns on 2 CPU cores in minutes.

    80-dim log-Mel (utterance CMVN) stacked 2 x 10 ms -> 20 ms frames (no CNN), 3 x 192 post-LN
    transformer, K = 100 targets at 100 Hz (MFCC k-means, iteration 1), 100 ms spans.
    """
    return HubertConfig(
        frontend={"name": "logmel", "n_mels": 80, "cmvn": "utterance"}, conv_layers=[], stack_frames=2,
        embed_dim=192, num_layers=3, num_heads=4, ffn_dim=768, pos_conv_kernel=32, pos_conv_groups=8,
        dropout=0.05, attention_dropout=0.0, input_dropout=0.05, layer_drop=0.0, mask_prob=0.08, mask_span=5,
        min_masks=1, num_classes=[100], label_frame_shifts=[160], final_dim=64, feature_penalty=0.0,
        feature_grad_mult=1.0,
    )


class CosineHead(DiscreteTargetHead):
    """HuBERT's logits: ``cos(final_proj(x), label_embedding_c) / temperature`` for every class c.

    fairseq ``HubertModel.compute_nce`` over all classes (``label_embs_concat``), torchaudio
    ``LogitGenerator``. With several target sets the label embeddings are one [sum(classes), final_dim]
    parameter split per set; ``untie`` gives each set its own slice of ``final_proj``.

    Args:
        in_dim: context dimension D.
        num_classes: classes of each target set.
        final_dim: dimension of the projection and the label embeddings.
        temperature: logit temperature (0.1).
        untie: one projection per target set.
    """

    def __init__(self, in_dim: int, num_classes: Sequence[int], final_dim: int = 256, temperature: float = 0.1,
                 untie: bool = False):
        super().__init__()
        self.num_classes = [int(v) for v in num_classes]
        self.final_dim, self.temperature, self.untie = final_dim, temperature, untie
        self.final_proj = Linear(in_dim, final_dim * (len(self.num_classes) if untie else 1))
        self.label_embeddings = nn.Parameter(torch.empty(sum(self.num_classes), final_dim).uniform_())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        proj = self.final_proj(x).float()
        projs = proj.chunk(len(self.num_classes), dim=-1) if self.untie else [proj] * len(self.num_classes)
        embs = self.label_embeddings.float().split(self.num_classes, dim=0)
        out = []
        for p, e in zip(projs, embs):
            # cosine as torch.cosine_similarity (each norm clamped at 1e-8), as fairseq and torchaudio
            sims = (p @ e.T) / (p.norm(dim=-1, keepdim=True).clamp(min=1e-8) * e.norm(dim=-1).clamp(min=1e-8))
            out.append(sims / self.temperature)
        return out


class HubertModel(FeatureEncoderFrames, SSLModel):
    """HuBERT (see the module docstring). Build with :func:`build_hubert`."""

    name = "hubert"
    # Iteration 2 initialised from iteration 1 (--init-from) predicts other units: a new K re-initialises
    # the head's label embeddings (and final_proj when final_dim changes); the encoder must fit.
    target_dependent = ("head.",)

    def __init__(self, config: HubertConfig, frontend: nn.Module, feature_encoder: nn.Module,
                 feature_projection: FeatureProjection, encoder: TransformerEncoder, head: CosineHead):
        super().__init__(config)
        self.frontend = frontend
        self.feature_encoder = feature_encoder
        self.feature_projection = feature_projection
        self.mask_emb = nn.Parameter(torch.empty(config.embed_dim).uniform_())
        self.encoder = encoder
        self.head = head
        for k, shift in enumerate(config.label_frame_shifts):
            if self.frame_shift % shift:
                raise ValueError(
                    f"model.label_frame_shifts[{k}] = {shift} samples ({16000 / shift:g} Hz labels) does not divide the "
                    f"model's frame shift of {self.frame_shift} samples ({16000 / self.frame_shift:g} Hz frames); "
                    "labels must come at the model's frame rate or an integer multiple of it")

    # ---- contract properties -------------------------------------------------------------
    def target_specs(self) -> list[tuple[int, int]]:
        """``(num_classes, label_frame_shift)`` of every target set the loss expects, in order."""
        return list(zip(self.config.num_classes, self.config.label_frame_shifts))

    # ---- shared feature path -------------------------------------------------------------
    def conv_features(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wavs [B, L], lengths [B] -> (features f [B, T, C], valid frames [B])."""
        feats, feat_lengths = self.frontend(wavs, lengths)
        return self.feature_encoder(feats.transpose(1, 2), feat_lengths)

    @staticmethod
    def _padding_mask(valid: torch.Tensor) -> torch.Tensor | None:
        return None if bool(valid.all()) else ~valid

    # ---- frozen features -----------------------------------------------------------------
    def encode(self, wavs: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        """Features without masking. wavs [B, L] 16 kHz, lengths [B] -> EncoderOutput with
        ``hidden_states`` ``[latent, layer_1..layer_N, context]``, each [B, T, D]."""
        lengths = self.check_lengths(wavs, lengths)
        feats, frame_lengths = self.conv_features(wavs, lengths)
        latent = self.feature_projection(feats)
        valid = lengths_to_mask(frame_lengths, latent.shape[1])
        context, layers = self.encoder(latent, self._padding_mask(valid), return_layers=True)
        return EncoderOutput(hidden_states=[latent, *layers, context], lengths=frame_lengths,
                             layer_names=self.layer_names, frame_shift=self.frame_shift)

    # ---- pretraining loss ----------------------------------------------------------------
    def aligned_targets(self, batch: Mapping[str, Any], frames: int, frame_lengths: torch.Tensor) -> torch.Tensor:
        """``batch["targets"]`` [B, T_t, K] -> [B, frames, K]; a valid frame without a label is an error."""
        targets = batch.get("targets")
        ids = batch.get("ids") or [str(i) for i in range(len(frame_lengths))]
        if targets is None:
            raise ValueError("hubert: the batch has no 'targets'; HuBERT needs frame labels: write them with "
                             "`speechssl targets kmeans` + `speechssl targets assign` and list their folders in "
                             "data.targets")
        k = len(self.config.num_classes)
        if targets.dim() != 3 or targets.shape[-1] != k:
            raise ValueError(f"hubert: batch['targets'] must be [batch, frames, {k}] (one column per target set of "
                             f"model.num_classes {self.config.num_classes}), got {tuple(targets.shape)}")
        if targets.shape[1] < frames:
            targets = F.pad(targets, (0, 0, 0, frames - targets.shape[1]), value=-1)
        targets = targets[:, :frames].long()
        valid = lengths_to_mask(frame_lengths, frames)
        missing = ((targets < 0).any(-1) & valid)
        if bool(missing.any()):
            b = int(missing.any(-1).nonzero()[0])
            have = int((targets[b] >= 0).all(-1).sum())
            raise ValueError(
                f"hubert: utterance {ids[b]!r} has labels for {have} of its {int(frame_lengths[b])} model frames "
                f"({16000 / self.frame_shift:g} Hz); the label files do not fit this audio or this model's frame rate "
                "(model.label_frame_shifts); re-run `speechssl targets assign` on this manifest")
        return targets.masked_fill(~valid[..., None], 0)

    def loss(self, batch: Mapping[str, Any]) -> LossOutput:
        """Masked CE on ``batch["wavs"]`` [B, L], ``batch["lengths"]`` [B], ``batch["targets"]`` [B, T, K]."""
        cfg = self.config
        wavs = batch["wavs"]
        lengths = self.check_lengths(wavs, batch.get("lengths"))
        feats, frame_lengths = self.training_conv_features(wavs, lengths)
        frames = feats.shape[1]
        targets = self.aligned_targets(batch, frames, frame_lengths)
        valid = lengths_to_mask(frame_lengths, frames)
        feature_pen = (feats.float().pow(2).mean(-1) * valid).sum() / valid.sum().clamp(min=1)
        x = self.feature_projection(feats)
        mask = span_mask(frame_lengths, frames, cfg.mask_prob, cfg.mask_span, cfg.min_masks)
        x = torch.where(mask.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        context, _ = self.encoder(x, self._padding_mask(valid))
        out = masked_prediction_loss(self.head, context, targets, mask, valid, cfg.unmasked_weight)
        loss = out.loss + cfg.feature_penalty * feature_pen if cfg.feature_penalty else out.loss
        metrics = {
            "loss": float(loss.detach()),
            "masked_ce": float(out.masked_loss.detach()),
            "unmasked_ce": float(out.unmasked_loss.detach()),
            "feature_pen": float(feature_pen.detach()),
            "acc": sum(out.accuracy) / len(out.accuracy),
            "mask_ratio": float(mask.sum() / valid.sum().clamp(min=1)),
            "codebook_usage": sum(out.codebook_usage) / len(out.codebook_usage),
        }
        for k in range(len(cfg.num_classes)):
            metrics[f"acc_target_{k}"] = out.accuracy[k]
            metrics[f"code_perplexity_{k}"] = out.code_perplexity[k]
        return LossOutput(loss=loss.float(), metrics=metrics)


def build_hubert(cfg: HubertConfig) -> HubertModel:
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
    head = CosineHead(cfg.embed_dim, cfg.num_classes, cfg.final_dim, cfg.logit_temperature, cfg.untie_final_proj)
    return HubertModel(cfg, frontend, feature_encoder, feature_projection, encoder, head)


MODELS.register("hubert", ModelSpec(HubertConfig, build_hubert))
