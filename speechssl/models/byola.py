"""BYOL-A: BYOL for audio (Niizumi et al. 2021, IJCNN; nttcslab/byol-a v1).

``byol_a/models.py`` (``AudioNTT2020``), ``byol_a/augmentations.py`` (``MixupBYOLA``, ``RandomResizeCrop``),
``config.yaml``. No negatives: an online network predicts a slowly moving (EMA) target network's
projection of another augmented view of the same segment.

Pipeline (one training batch)::

    wavs --frontend: 64-band log-Mel (60-7800 Hz, 10 ms hop)--> per-utterance scalar standardisation
         --random segments of segment_frames (96 ~ 1 s) frames, segments_per_utterance per utterance--> x [N, 96, 64]
    view_v = RandomResizeCrop(Mixup(x))   for v = 1, 2 (speechssl.augment; each view re-drawn), then the
             views are standardised over the batch (BYOL-A's post-normalisation)
    online:  y = encoder(view) -> z = projector(y) -> p = predictor(z)
    target:  z' = EMA(encoder + projector)(other view)      (speechssl.modules.ema, decay 0.99)
    loss     = mean over segments of (2 - 2 cos(p_1, z'_2)) + (2 - 2 cos(p_2, z'_1))   (symmetric)

Encoder (``AudioNTT2020``): three blocks ``Conv2d(3x3, 64) -> BatchNorm -> ReLU -> MaxPool(2x2)`` over
(mel, time), then per frame (64 channels x F/8 bins flattened) ``Linear(d) -> ReLU -> Dropout(0.3) ->
Linear(d) -> ReLU``, then the utterance embedding max_t + mean_t. Projector and predictor: ``Linear(4096)
-> BatchNorm1d -> ReLU -> Linear(256)``. Base: d = 2048 (the published 6.3 M-parameter encoder size is
with its BN and bias terms; speechssl counts 5.3 M in the encoder).

Input normalisation: BYOL-A standardises the log-Mel with one mean and std of the whole training set (a
pre-pass). ``input_norm: utterance`` (the default) standardises each utterance by one scalar mean and std
over all of its bins and frames instead: it keeps the spectral shape, needs no pre-pass, but removes the
utterance's level and dynamic range. ``input_norm: none`` with the frontend's ``cmvn: global`` is the
published dataset-level normalisation (per mel bin rather than one scalar; ``speechssl pretrain``
estimates it on the training manifest). The demo recipe removes each utterance's mean per bin first
(frontend ``cmvn: utterance, cmvn_norm_vars: false``: a channel's EQ, which both views would share).

Frames and layers (``encode``): frame_shift = 8 x 160 = 1280 samples (80 ms, the three 2x time
poolings); ``latent`` / ``conv_2`` / ``conv_3`` = conv block 1 / 2 / 3 (channels x bins flattened; blocks
1 and 2 max-pooled in time to the 80 ms frames), ``fc_1`` / ``fc_2`` = the frame MLP, ``context`` =
the pooled utterance embedding (max + mean over the valid frames) repeated at every frame. Padding
frames are zeroed before every convolution, so batched output equals single-utterance output.

Metrics: ``loss``, ``cos`` (mean online/target cosine), ``mixup_ratio``, ``ema_decay`` and the view-based
families' collapse watch ``embed_std_mean`` / ``embed_std_min`` / ``embed_eff_rank`` / ``embed_dim`` of the
online embeddings (:func:`speechssl.train.diagnostics.embedding_health`; the Trainer's health watch warns).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from speechssl.augment.config import MixupConfig, ResizeCropConfig
from speechssl.augment.spectrogram import MixupMemory, random_resize_crop
from speechssl.features.base import build_frontend
from speechssl.models.base import MODELS, EncoderOutput, LossOutput, ModelSpec, SSLModel
from speechssl.modules.ema import EMATeacher, check_ema_config, released_state
from speechssl.modules.padding import lengths_to_mask


@dataclasses.dataclass
class BYOLAConfig:
    """BYOL-A config. Defaults = the published BYOL-A (nttcslab/byol-a v1 ``config.yaml``)."""

    frontend: dict = dataclasses.field(default_factory=lambda: {
        "name": "logmel", "n_mels": 64, "n_fft": 1024, "win_length": 1024, "hop_length": 160, "f_min": 60.0,
        "f_max": 7800.0, "cmvn": "none"})
    # "utterance": each utterance's log-Mel standardised by one scalar mean/std (no pre-pass); "none": the
    # frontend's output as it is, e.g. with ``cmvn: global`` (dataset statistics, as published)
    input_norm: Literal["utterance", "none"] = "utterance"
    segment_frames: int = 96  # ~0.95 s training segments
    segments_per_utterance: int = 1  # random segments drawn from each utterance of a batch
    conv_channels: int = 64
    feature_dim: int = 2048  # d
    fc_dropout: float = 0.3
    proj_hidden: int = 4096
    proj_dim: int = 256
    # Augmentations (speechssl.augment): mixup against a memory of past segments, random resize crop.
    mixup_ratio: float = 0.4  # mixing ratio ~ U(0, mixup_ratio), in the exp(log-Mel) domain
    mixup_memory: int = 2048  # past segments remembered
    crop_virtual_scale: float = 1.5  # canvas size / input size
    crop_scale: tuple[float, float] = (0.6, 1.5)  # crop size / input size, drawn per axis
    crop_freq: bool = True  # False: crop and resize along time only (keeps pitch and spectral envelope)
    # EMA target network.
    ema_start: float = 0.99
    ema_end: float = 0.99
    ema_anneal_steps: int = 0
    release: Literal["student", "teacher"] = "student"

    def __post_init__(self) -> None:
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        for key in ("segment_frames", "segments_per_utterance", "conv_channels", "feature_dim", "proj_hidden",
                    "proj_dim", "mixup_memory"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if self.segment_frames < 8:
            raise ValueError(f"model.segment_frames must be >= 8 (three 2x poolings), got {self.segment_frames}")
        if not 0.0 <= self.fc_dropout < 1.0 or not 0.0 <= self.mixup_ratio <= 1.0:
            raise ValueError(f"model.fc_dropout must be in [0, 1) and model.mixup_ratio in [0, 1], got "
                             f"{self.fc_dropout} and {self.mixup_ratio}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1]:
            raise ValueError(f"model.crop_scale must be [min, max] with 0 < min <= max, got {list(self.crop_scale)}")
        if self.crop_virtual_scale < 1.0:
            raise ValueError(f"model.crop_virtual_scale must be >= 1, got {self.crop_virtual_scale}")
        check_ema_config(self.ema_start, self.ema_end, self.ema_anneal_steps)


def byola_base() -> BYOLAConfig:
    """The published BYOL-A: d = 2048, projector/predictor 4096 -> 256, EMA 0.99, memory 2048 (lr 3e-4,
    batch 256 segments, 100 epochs)."""
    return BYOLAConfig()


def byola_tiny() -> BYOLAConfig:
    """A CPU-sized BYOL-A: 32 conv channels, d = 512, projector/predictor 1024 -> 128, 2 segments per
    utterance, a memory of 256 segments (a small corpus: 2048 would hold most of it). On a CPU its cost
    is the memory traffic of the first conv block's [views, C, 64, 96] maps (batch norm, ReLU, pooling
    took 60 % of a step at 64 channels), hence half the channels."""
    return BYOLAConfig(conv_channels=32, feature_dim=512, proj_hidden=1024, proj_dim=128, segments_per_utterance=2,
                       mixup_memory=256)


class ConvBlock2d(nn.Module):
    """``MaxPool2x2(ReLU(BN(Conv3x3(x))))`` on [batch, channels, mel, time]."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.norm(self.conv(x))), 2)


class AudioNTT2020(nn.Module):
    """BYOL-A's encoder. ``forward(x [B, T, F], valid [B, T] | None)`` -> (conv block outputs, fc outputs)."""

    def __init__(self, n_mels: int, channels: int, dim: int, dropout: float):
        super().__init__()
        if n_mels % 8:
            raise ValueError(f"BYOL-A's encoder needs n_mels divisible by 8 (three 2x poolings), got {n_mels}")
        self.blocks = nn.ModuleList([ConvBlock2d(1, channels), ConvBlock2d(channels, channels),
                                     ConvBlock2d(channels, channels)])
        self.fc1 = nn.Linear(channels * (n_mels // 8), dim)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor | None]:
        """x [B, T, F] -> ([block_k as [B, T_k, C * F_k]], [fc1, fc2 as [B, T // 8, d]], frames [B] or None)."""
        h = x.transpose(1, 2).unsqueeze(1)  # [B, 1, F, T]
        convs = []
        for block in self.blocks:
            if lengths is not None:
                h = h * lengths_to_mask(lengths, h.shape[-1])[:, None, None, :].to(h.dtype)
            h = block(h)
            lengths = None if lengths is None else torch.div(lengths, 2, rounding_mode="floor")
            b, c, f, t = h.shape
            convs.append(h.permute(0, 3, 2, 1).reshape(b, t, f * c))  # BYOL-A: (time, mel, channel) flattened
        fc1 = F.relu(self.fc1(convs[-1]))
        fc2 = F.relu(self.fc2(self.dropout(fc1)))
        return convs, [fc1, fc2], lengths


def pooled_embedding(frames: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """BYOL-A's utterance embedding: max + mean over (valid) frames. frames [B, T, d] -> [B, d]."""
    if valid is None:
        return frames.max(1).values + frames.mean(1)
    w = valid.unsqueeze(-1)
    mx = frames.masked_fill(~w, float("-inf")).max(1).values
    mean = (frames * w).sum(1) / w.sum(1).clamp(min=1)
    return mx + mean


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """BYOL's projector / predictor: Linear -> BatchNorm1d -> ReLU -> Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class BYOLAModel(SSLModel):
    """BYOL-A (see the module docstring). Build with :func:`build_byola`."""

    name = "byola"

    def __init__(self, config: BYOLAConfig, frontend: nn.Module, encoder: AudioNTT2020, projector: nn.Module,
                 predictor: nn.Module):
        super().__init__(config)
        self.frontend = frontend
        self.encoder = encoder
        self.projector = projector
        self.predictor = predictor
        n_mels = frontend.out_dim
        self.mixup = MixupMemory(MixupConfig(max_ratio=config.mixup_ratio, memory_size=config.mixup_memory,
                                             memory_frames=config.segment_frames), n_mels)
        lo, hi = config.crop_scale
        self.crop = ResizeCropConfig(virtual_scale=config.crop_virtual_scale, min_time_scale=lo, max_time_scale=hi,
                                     min_freq_scale=lo, max_freq_scale=hi, freq=config.crop_freq)
        # the target network follows in train mode (batch statistics, dropout), as BYOL's does
        self.teacher = EMATeacher(self._ema_source(), config.ema_start, config.ema_end, config.ema_anneal_steps,
                                  train_mode=True)

    def _ema_source(self) -> nn.Module:
        return nn.ModuleDict({"encoder": self.encoder, "projector": self.projector})

    # ---- contract properties -------------------------------------------------------------
    @property
    def min_samples(self) -> int:
        return int(self.frontend.frame_length + 7 * self.frontend.frame_shift)  # 8 frames: one output frame

    @property
    def frame_shift(self) -> int:
        return int(8 * self.frontend.frame_shift)

    @property
    def layer_names(self) -> list[str]:
        return ["latent", "conv_2", "conv_3", "fc_1", "fc_2", "context"]

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        return torch.div(self.frontend.num_frames(num_samples), 8, rounding_mode="floor")

    def step_update(self, step: int) -> None:
        self.teacher.update(self._ema_source(), step)

    def released_state_dict(self) -> dict[str, torch.Tensor]:
        state = released_state(self, "teacher.", "", self.config.release)
        return {k: v for k, v in state.items() if not k.startswith("mixup.")}  # training memory: not features

    def complete_state(self, missing: list[str]) -> list[str]:
        missing = [k for k in missing if not k.startswith("mixup.")]  # an empty memory
        return self.teacher.reset_if_missing(self._ema_source(), missing, "teacher.")

    # ---- features --------------------------------------------------------------------------
    def log_mel(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wavs [B, L] -> (log-Mel, standardised per utterance by one scalar mean/std with ``input_norm:
        utterance``, 0 on padding [B, T, F], valid frames [B])."""
        feats, n = self.frontend(wavs, lengths)
        valid = lengths_to_mask(n, feats.shape[1]).unsqueeze(-1)
        if self.config.input_norm == "none":
            return feats * valid, n
        count = (n.clamp(min=1) * feats.shape[2]).to(feats.dtype)[:, None, None]
        mean = (feats * valid).sum((1, 2), keepdim=True) / count
        var = ((feats - mean).pow(2) * valid).sum((1, 2), keepdim=True) / count
        return (feats - mean) * torch.rsqrt(var + 1e-5) * valid, n

    def encode(self, wavs: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        lengths = self.check_lengths(wavs, lengths)
        x, n = self.log_mel(wavs, lengths)
        convs, fcs, frames = self.encoder(x, n)
        t = fcs[-1].shape[1]
        # conv blocks 1 and 2 max-pooled in time to the output frames
        pooled = [F.max_pool1d(c[:, : t * (2 ** (2 - k))].transpose(1, 2), 2 ** (2 - k)).transpose(1, 2)
                  if k < 2 else c for k, c in enumerate(convs)]
        valid = lengths_to_mask(frames, t)
        emb = pooled_embedding(fcs[-1], valid)
        context = emb.unsqueeze(1).expand(-1, t, -1) * valid.unsqueeze(-1)
        return EncoderOutput(hidden_states=[*pooled, *fcs, context], lengths=frames, layer_names=self.layer_names,
                             frame_shift=self.frame_shift)

    # ---- pretraining loss --------------------------------------------------------------------
    def segments(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """``segments_per_utterance`` random windows of ``segment_frames`` frames of each utterance
        (zero-padded when it is shorter). x [B, T, F], n [B] -> [B * S, segment_frames, F]."""
        seg, per = self.config.segment_frames, self.config.segments_per_utterance
        b, t, f = x.shape
        if t < seg:
            x = F.pad(x, (0, 0, 0, seg - t))
        starts = (torch.rand(b, per, device=x.device) * (n - seg + 1).clamp(min=1)[:, None].to(x.dtype)).long()
        idx = starts.reshape(-1, 1) + torch.arange(seg, device=x.device)[None, :]  # [B * S, seg]
        rows = torch.arange(b, device=x.device).repeat_interleave(per)
        return x[rows[:, None], idx]

    def _view(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, float]:
        mixed, ratios = self.mixup(x, lengths)
        view = random_resize_crop(mixed, lengths, self.crop)
        return (view - view.mean()) / view.std().clamp(min=1e-5), float(ratios.mean())

    def loss(self, batch: Mapping[str, Any]) -> LossOutput:
        """Symmetric BYOL loss on two augmented views of random segments of ``batch["wavs"]`` [B, L]."""
        wavs = batch["wavs"]
        lengths = self.check_lengths(wavs, batch.get("lengths"))
        x, n = self.log_mel(wavs, lengths)
        segs = self.segments(x, n)
        seg_lengths = torch.full((segs.shape[0],), segs.shape[1], dtype=torch.long, device=segs.device)
        (v1, r1), (v2, r2) = self._view(segs, seg_lengths), self._view(segs, seg_lengths)
        views = torch.cat([v1, v2])
        _, fcs, _ = self.encoder(views)
        emb = pooled_embedding(fcs[-1], None)
        pred = self.predictor(self.projector(emb))
        with torch.no_grad():
            _, tfcs, _ = self.teacher.module["encoder"](views)
            target = self.teacher.module["projector"](pooled_embedding(tfcs[-1], None))
        half = segs.shape[0]
        target = torch.cat([target[half:], target[:half]])  # view 1 predicts view 2's target and back
        cos = F.cosine_similarity(pred.float(), target.float(), dim=-1)
        loss = (2 - 2 * cos).view(2, half).sum(0).mean()
        from speechssl.train.diagnostics import embedding_health

        metrics = {"loss": float(loss.detach()), "cos": float(cos.detach().mean()), "mixup_ratio": (r1 + r2) / 2,
                   "ema_decay": float(self.teacher.decay), **embedding_health(emb.detach())}
        return LossOutput(loss=loss.float(), metrics=metrics)


def build_byola(cfg: BYOLAConfig) -> BYOLAModel:
    """Build every submodule from ``cfg`` and assemble the model."""
    frontend = build_frontend(cfg.frontend)
    if getattr(frontend, "name", None) not in ("logmel", "fbank"):
        raise ValueError(f"model.frontend: BYOL-A needs a log-Mel frontend (logmel or fbank), got {cfg.frontend.get('name')!r}")
    encoder = AudioNTT2020(frontend.out_dim, cfg.conv_channels, cfg.feature_dim, cfg.fc_dropout)
    projector = mlp(cfg.feature_dim, cfg.proj_hidden, cfg.proj_dim)
    predictor = mlp(cfg.proj_dim, cfg.proj_hidden, cfg.proj_dim)
    return BYOLAModel(cfg, frontend, encoder, projector, predictor)


MODELS.register("byola", ModelSpec(BYOLAConfig, build_byola))
