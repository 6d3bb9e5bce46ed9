"""View-based SSL: SimCLR / COLA (+ a MoCo-style negative queue), Barlow Twins and triplet loss.

Two augmented views of each utterance pass through one shared encoder; the objective pulls the
views of an utterance together (and, for the contrastive ones, pushes other utterances apart).
Registered here as ``simclr`` (default objective NT-Xent); :mod:`speechssl.models.barlow` registers
``barlow`` (default Barlow Twins, a wider 3-layer projector) on the same model; ``objective`` selects
any of ``ntxent | cola | barlow | triplet`` in either.
Losses: :mod:`speechssl.modules.siamese_losses`; augmentations: :mod:`speechssl.augment`.

Pipeline (shapes for one batch of ``N`` training crops)::

    wavs [N, L] --two_crops (crop_seconds, min_gap_seconds; COLA's two segments)--> view_a, view_b
         (crop_seconds null: both views are the whole input)
    each view --WaveformAugment (model.augment.waveform)--> --frontend (log-Mel, CMVN)-->
         --SpectrogramAugment (model.augment.spectrogram)--> feats [N, T, F]
    encoder (TDNN: dilated conv layers + statistics pooling) --> layer_1..layer_K [N, T, C], h [N, E]
    projector (MLP) --> z [N, P]; loss(z_a, z_b) (+ the queue's keys as negatives)

Released encoder layers (10 ms frames): ``latent`` (the first conv layer), ``layer_1 .. layer_{K-1}``
(the next conv layers) and ``context`` (the pooled utterance embedding h, repeated over the valid
frames so every layer has the same frames; mean-pooling heads read it as is).
The projector is used in training only (SimCLR: the representation before it transfers better).

Loss metrics: ``loss``, ``acc`` (contrastive / triplet: positive ranked first), ``num_negatives``,
``align`` and ``uniform`` (Wang & Isola 2020), ``queue_fill``, and the collapse watch on the batch's
embeddings h: ``embed_std_mean``, ``embed_std_min``, ``embed_eff_rank``, ``embed_dim``
(:func:`speechssl.train.diagnostics.embedding_health`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from speechssl.augment import (
    AugmentConfig,
    SpectrogramAugment,
    WaveformAugment,
    augment_config,
    two_crops,
)
from speechssl.features.base import build_frontend
from speechssl.models.base import MODELS, EncoderOutput, LossOutput, ModelSpec, SSLModel
from speechssl.modules import siamese_losses as L
from speechssl.modules.ema import EMATeacher, released_state
from speechssl.modules.tdnn import ProjectionMLP, TDNNEncoder

Objective = Literal["ntxent", "cola", "barlow", "triplet"]


@dataclasses.dataclass
class SimCLRConfig:
    """SimCLR / COLA config (defaults: :func:`simclr_tiny` sizes, NT-Xent, no queue)."""

    frontend: dict = dataclasses.field(
        default_factory=lambda: {"name": "logmel", "n_mels": 80, "cmvn": "utterance"})
    # TDNN encoder: one conv layer per (kernel, dilation); statistics pooling to embed_dim.
    channels: int = 128
    kernels: list[int] = dataclasses.field(default_factory=lambda: [5, 3, 3, 1])
    dilations: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 3, 1])
    embed_dim: int = 256
    # Projector dims after the embedding (SimCLR: 2 layers; Barlow Twins: 3 x 8192 in the paper).
    projector: list[int] = dataclasses.field(default_factory=lambda: [256, 128])
    objective: Objective = "ntxent"
    temperature: float = 0.1  # NT-Xent
    # MoCo-style negatives kept from past batches (0: batch negatives only). Use it with `momentum`:
    # without a momentum encoder the keys come from the online encoder, a memory bank that drifts; on the
    # synthetic demo a 1024-key queue without momentum made the embeddings collapse (uniformity
    # -2.3 -> -0.2 in 100 steps, loss rising with the queue's fill) where 0 did not.
    queue_size: int = 0
    # MoCo momentum encoder (He et al. 2020): the keys (view b's positives and what the queue stores) come
    # from an EMA copy of encoder + projector with this decay (MoCo: 0.999; speechssl.modules.ema), and
    # the loss is each view-a query against the batch's keys and the queue. None: no momentum encoder.
    momentum: float | None = None
    # How the momentum encoder's keys enter the loss. "moco": each view-a query against the batch's
    # momentum keys of view b (its own is the positive) and the queue (He et al. 2020, one direction).
    # "simclr": SimCLR's symmetric NT-Xent of the two online views with the in-batch negatives, plus the
    # queue (filled with the momentum encoder's keys of view b) as extra negatives of every view: the
    # gradient of both views and of the 2N-2 batch negatives is kept, the queue only adds negatives.
    momentum_loss: Literal["moco", "simclr"] = "moco"
    # False negatives, the anchor's own class (speaker) among the negatives, the more the larger the queue
    # (the demo corpus has 16 speakers: about 1 negative in 16). "none"; "debias": debiased contrastive
    # loss (Chuang et al. 2020) with class prior `tau_plus`; "eliminate" / "attract": false-negative
    # cancellation (Huynh et al. 2022): the `false_negative_k` negatives (batch and queue) most similar to
    # each anchor leave its denominator / become its extra positives (siamese_losses.contrast_loss).
    false_negatives: Literal["none", "debias", "eliminate", "attract"] = "none"
    tau_plus: float = 0.0625
    false_negative_k: int = 0
    barlow_lambda: float = 5.0e-3  # weight of the off-diagonal terms
    triplet_margin: float = 0.5  # on squared distances of L2-normalised embeddings (range [0, 4])
    # Views: two crops of crop_seconds, at least min_gap_seconds apart when the input is long enough
    # (COLA: 0.96 s segments of one clip); null: both views are the whole (augmented) input.
    crop_seconds: float | None = 0.96
    min_gap_seconds: float = 0.0
    # Augmentations of each view (speechssl.augment YAML: waveform / spectrogram sections), checked here.
    augment: dict = dataclasses.field(default_factory=lambda: view_augment())
    # Warn (log) when the embeddings' effective rank over a batch falls below this.
    collapse_rank: float = 1.5

    def __post_init__(self) -> None:
        for key in ("channels", "embed_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if not self.projector or any(d < 1 for d in self.projector):
            raise ValueError(f"model.projector must list positive sizes, got {self.projector}")
        if self.temperature <= 0:
            raise ValueError(f"model.temperature must be > 0, got {self.temperature}")
        if self.queue_size < 0:
            raise ValueError(f"model.queue_size must be >= 0, got {self.queue_size}")
        if self.momentum is not None and not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"model.momentum must be in [0, 1) or null, got {self.momentum}")
        if self.momentum_loss not in ("moco", "simclr"):
            raise ValueError(f"model.momentum_loss must be moco or simclr, got {self.momentum_loss!r}")
        if self.false_negatives not in L.FALSE_NEGATIVES:
            raise ValueError(f"model.false_negatives must be one of {L.FALSE_NEGATIVES}, got {self.false_negatives!r}")
        if self.false_negatives != "none" and self.objective != "ntxent":
            raise ValueError(f"model.false_negatives needs objective ntxent, got {self.objective!r}")
        if not 0.0 <= self.tau_plus < 1.0 or self.false_negative_k < 0:
            raise ValueError(f"model.tau_plus must be in [0, 1) and model.false_negative_k >= 0, got "
                             f"{self.tau_plus} and {self.false_negative_k}")
        if self.momentum is not None and self.objective != "ntxent":
            raise ValueError(f"model.momentum: the momentum encoder needs objective ntxent, got {self.objective!r}")
        if self.queue_size and self.objective not in ("ntxent", "cola"):
            raise ValueError(f"model.queue_size: a queue needs objective ntxent or cola, got {self.objective!r}")
        if self.barlow_lambda < 0 or self.triplet_margin < 0:
            raise ValueError(f"model.barlow_lambda and model.triplet_margin must be >= 0, got {self.barlow_lambda} "
                             f"and {self.triplet_margin}")
        if self.crop_seconds is not None and self.crop_seconds <= 0:
            raise ValueError(f"model.crop_seconds must be > 0 or null, got {self.crop_seconds}")
        if self.min_gap_seconds < 0:
            raise ValueError(f"model.min_gap_seconds must be >= 0, got {self.min_gap_seconds}")
        augment_config(self.augment, where="model.augment")

    def augment_config(self) -> AugmentConfig:
        return augment_config(self.augment, where="model.augment")


def view_augment() -> dict:
    """The views' default augmentations: strong channel augmentation (noise at 5-20 dB, a random EQ of
    +-10 dB, band-limiting, gain) and BYOL-A mixup + SpecAugment on the log-Mel.

    Two crops of one recording share its channel and background, the easiest cue to tell them from
    other recordings; without strong channel augmentation the encoder learns that cue (on the
    synthetic corpus, whose every utterance has its own EQ, band limit and noise, the live probe's
    speaker accuracy fell below the random-init encoder's) instead of the speaker (Huh et al. 2020,
    "Augmentation adversarial training for self-supervised speaker recognition").
    """
    return {"waveform": {"noise": {"p": 1.0, "min_snr_db": 5.0, "max_snr_db": 20.0,
                                   "colours": ["white", "pink", "brown"]},
                         "eq": {"p": 1.0, "max_db": 10.0, "num_knots": 6},
                         "band_limit": {"p": 0.5, "min_cutoff_hz": 3000.0, "max_cutoff_hz": 8000.0},
                         "gain": {"p": 0.5, "min_db": -6.0, "max_db": 6.0}},
            "spectrogram": {"mixup": {"p": 1.0, "max_ratio": 0.4, "memory_size": 512, "memory_frames": 96},
                            "freq_mask": {"p": 0.8, "num_masks": 2, "max_fraction": 0.1},
                            "time_mask": {"p": 0.8, "num_masks": 2, "max_fraction": 0.1}}}


def simclr_tiny() -> SimCLRConfig:
    """A 0.33 M-parameter SimCLR for 2 CPU cores: 80-dim log-Mel (utterance CMVN), 4 x 128 TDNN, NT-Xent."""
    return SimCLRConfig()


class SiameseModel(SSLModel):
    """Two views, one encoder (see the module docstring). Build with :func:`build_siamese`."""

    name = "simclr"

    def __init__(self, config: SimCLRConfig, frontend: nn.Module, encoder: TDNNEncoder, projector: ProjectionMLP,
                 wave_augment: WaveformAugment, spec_augment: SpectrogramAugment,
                 bilinear: nn.Parameter | None, queue: L.NegativeQueue | None):
        super().__init__(config)
        self.frontend = frontend
        self.encoder = encoder
        self.projector = projector
        self.wave_augment = wave_augment
        self.spec_augment = spec_augment
        self.bilinear = bilinear
        self.queue = queue
        self.teacher = None
        if config.momentum is not None:
            self.teacher = EMATeacher(self._ema_source(), config.momentum, config.momentum, 0, train_mode=True)
        self._calls_since_warning = 10**9

    def _ema_source(self) -> nn.Module:
        return nn.ModuleDict({"encoder": self.encoder, "projector": self.projector})

    def step_update(self, step: int) -> None:
        if self.teacher is not None:
            self.teacher.update(self._ema_source(), step)

    def released_state_dict(self) -> dict[str, torch.Tensor]:
        return released_state(self, "teacher.", "", "student") if self.teacher is not None else self.state_dict()

    def complete_state(self, missing: list[str]) -> list[str]:
        if self.teacher is None:
            return list(missing)
        return self.teacher.reset_if_missing(self._ema_source(), missing, "teacher.")

    @property
    def min_samples(self) -> int:
        return int(self.frontend.frame_length)

    @property
    def frame_shift(self) -> int:
        return int(self.frontend.frame_shift)

    @property
    def layer_names(self) -> list[str]:
        return ["latent", *(f"layer_{i}" for i in range(1, len(self.encoder.convs))), "context"]

    def encode(self, wavs: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        """wavs [B, L] -> EncoderOutput: ``latent``, ``layer_1..layer_{K-1}`` [B, T, C], ``context`` [B, T, E]."""
        lengths = self.check_lengths(wavs, lengths)
        feats, frames = self.frontend(wavs, lengths)
        layers, emb = self.encoder(feats, frames)
        emb_frames = emb[:, None, :].expand(-1, feats.shape[1], -1) \
            * (torch.arange(feats.shape[1], device=wavs.device)[None, :] < frames[:, None])[:, :, None]
        return EncoderOutput(hidden_states=[*layers, emb_frames], lengths=frames, layer_names=self.layer_names,
                             frame_shift=self.frame_shift)

    def views(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two augmented views of every utterance, frontend and spectrogram augmentations applied.

        Returns (feats [2N, T, F]: view a of all N utterances, then view b; valid frames [2N])."""
        cfg = self.config
        if cfg.crop_seconds is not None:
            crop = max(self.min_samples, round(cfg.crop_seconds * 16000))
            a, la, b, lb = two_crops(wavs, lengths, crop, round(cfg.min_gap_seconds * 16000))
        else:
            a, la, b, lb = wavs, lengths, wavs, lengths
        a, la = self.wave_augment(a, la)
        b, lb = self.wave_augment(b, lb)
        width = max(a.shape[1], b.shape[1])
        both = torch.cat([nn.functional.pad(a, (0, width - a.shape[1])), nn.functional.pad(b, (0, width - b.shape[1]))])
        lens = torch.cat([la, lb]).clamp(min=self.min_samples)
        feats, frames = self.frontend(both, lens)
        feats = self.spec_augment(feats, frames)
        return feats, frames

    def loss(self, batch: Mapping[str, Any]) -> LossOutput:
        """Agreement of two views of each of ``batch["wavs"]`` [N, L] (``batch["lengths"]`` [N])."""
        from speechssl.train.diagnostics import embedding_health

        cfg = self.config
        wavs = batch["wavs"]
        lengths = self.check_lengths(wavs, batch.get("lengths"))
        n = wavs.shape[0]
        feats, frames = self.views(wavs, lengths)
        _, h = self.encoder(feats, frames)
        z_a, z_b = self.projector(h[:n]), self.projector(h[n:])
        queue = self.queue.negatives() if self.queue is not None else None
        keys = z_b
        if self.teacher is not None:
            with torch.no_grad():
                keys = self.teacher.module["projector"](self.teacher.module["encoder"](feats[n:], frames[n:])[1])
        fn = {"false_negatives": cfg.false_negatives, "tau_plus": cfg.tau_plus, "k": cfg.false_negative_k}
        if self.teacher is not None and cfg.momentum_loss == "moco":
            z_b = keys
            out = L.key_contrast(z_a, z_b, cfg.temperature, queue, **fn)
        elif cfg.objective == "ntxent":
            out = L.nt_xent(z_a, z_b, cfg.temperature, queue, **fn)
        elif cfg.objective == "cola":
            out = L.bilinear_contrast(z_a, z_b, self.bilinear, queue)
        elif cfg.objective == "barlow":
            out = L.barlow_twins(z_a, z_b, cfg.barlow_lambda)
        else:
            out = L.triplet_semi_hard(z_a, z_b, cfg.triplet_margin)
        if self.queue is not None and self.training:
            self.queue.push(keys.detach())
        align, uniform = L.alignment_uniformity(z_a.detach(), z_b.detach())
        metrics = {"loss": float(out.loss.detach()), "num_negatives": float(out.num_negatives),
                   "align": align, "uniform": uniform, **embedding_health(h.detach())}
        if out.accuracy == out.accuracy:  # not NaN
            metrics["acc"] = out.accuracy
        if self.queue is not None:
            metrics["queue_fill"] = float(self.queue.filled) / self.queue.size
        self._warn_on_collapse(metrics)
        return LossOutput(loss=out.loss, metrics=metrics)

    def _warn_on_collapse(self, metrics: dict[str, float]) -> None:
        import logging

        self._calls_since_warning += 1
        if metrics["embed_eff_rank"] < self.config.collapse_rank and self._calls_since_warning >= 100:
            logging.getLogger(__name__).warning(
                "%s: the batch's embeddings have effective rank %.2f (std %.2g): collapsing; lower optim.lr, raise "
                "the batch or queue_size, or strengthen the augmentations", self.name, metrics["embed_eff_rank"],
                metrics["embed_std_mean"])
            self._calls_since_warning = 0


def build_simclr(cfg: SimCLRConfig, model_cls: type[SiameseModel] = SiameseModel) -> SiameseModel:
    """Build every submodule from ``cfg`` and assemble a ``model_cls``."""
    frontend = build_frontend(cfg.frontend)
    if not hasattr(frontend, "out_dim") or frontend.frame_shift == 1:
        raise ValueError(f"model.frontend: the siamese encoder needs a frame frontend (logmel, fbank, mfcc), "
                         f"got {cfg.frontend.get('name')!r}")
    encoder = TDNNEncoder(frontend.out_dim, cfg.channels, cfg.kernels, cfg.dilations, cfg.embed_dim)
    projector = ProjectionMLP([cfg.embed_dim, *cfg.projector])
    bilinear = None
    if cfg.objective == "cola":
        bilinear = nn.Parameter(torch.eye(cfg.projector[-1]) + 0.01 * torch.randn(cfg.projector[-1], cfg.projector[-1]))
    queue = L.NegativeQueue(cfg.queue_size, cfg.projector[-1]) if cfg.queue_size else None
    augment = cfg.augment_config()
    return model_cls(cfg, frontend, encoder, projector, WaveformAugment(augment.waveform),
                     SpectrogramAugment(augment.spectrogram, frontend.out_dim), bilinear, queue)


MODELS.register("simclr", ModelSpec(SimCLRConfig, build_simclr))
