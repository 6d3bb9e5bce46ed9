"""Batched log-Mel augmentations: SpecAugment masks, BYOL-A mixup against a memory of past
examples, and BYOL-A random resize crop.

Inputs are ``feats`` [batch, frames, bins] (log-Mel, possibly normalised) with ``lengths`` [batch]
valid frames; padding frames stay untouched. Random draws are on the CPU with an optional
``torch.Generator`` (None: the global RNG, checkpointed by the Trainer).

References: Park et al. 2019 (SpecAugment); Niizumi et al. 2021, nttcslab/byol-a
``byol_a/augmentations.py`` (``MixupBYOLA``, ``RandomResizeCrop``), whose defaults the configs
follow (mixup ratio 0.4, memory 2048; canvas 1.5x, scales 0.6-1.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speechssl.augment.config import MaskConfig, MixupConfig, ResizeCropConfig
from speechssl.augment.waveform import valid_mask


def mask_along_axis(feats: torch.Tensor, lengths: torch.Tensor, axis: str, num_masks: int, max_fraction: float,
                    fill: str = "mean", apply: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SpecAugment: ``num_masks`` masks per utterance along ``axis`` ("time" or "freq"), each of width
    U{0 .. floor(max_fraction x size)} (size = valid frames, or bins) at a uniform start.

    Args:
        feats: [B, T, F]; lengths: [B] valid frames; apply: [B] bool, rows to mask (None: all).
    Returns:
        (masked feats, mask [B, T, F] bool True where a value was replaced).
    """
    b, t, f = feats.shape
    lens = lengths.cpu().clamp(min=1)
    size = lens if axis == "time" else torch.full((b,), f, dtype=torch.long)
    if axis not in ("time", "freq"):
        raise ValueError(f"mask axis must be 'time' or 'freq', got {axis!r}")
    positions = torch.arange(t if axis == "time" else f)
    hit = torch.zeros(b, positions.numel(), dtype=torch.bool)
    for _ in range(num_masks):
        u = torch.rand(b, 2, generator=generator)
        width = (u[:, 0] * (torch.floor(size * max_fraction) + 1)).long()
        start = (u[:, 1] * (size - width + 1)).long()
        hit |= (positions[None, :] >= start[:, None]) & (positions[None, :] < (start + width)[:, None])
    if apply is not None:
        hit &= apply.cpu()[:, None]
    hit = hit.to(feats.device)
    valid = valid_mask(lengths.to(feats.device), t)
    mask = hit[:, :, None].expand(b, t, f) if axis == "time" else hit[:, None, :].expand(b, t, f)
    mask = mask & valid[:, :, None]
    if fill == "zero":
        value = torch.zeros(b, 1, 1, dtype=feats.dtype, device=feats.device)
    else:
        denom = (lengths.to(feats.device).clamp(min=1) * f).to(feats.dtype)
        value = ((feats * valid[:, :, None]).sum((1, 2)) / denom)[:, None, None]
    return torch.where(mask, value.expand_as(feats), feats), mask


class MixupMemory(nn.Module):
    """BYOL-A mixup: ``x <- log((1 - r) exp(x) + r exp(m))``, r ~ U(0, max_ratio), m a segment of a past
    example drawn from a FIFO memory (tiled / cut to the utterance's frames at a random offset).

    The memory is a buffer, so checkpoints carry it (bit-exact resume). It holds
    ``memory_size`` x ``memory_frames`` x ``num_bins`` floats; only filled slots are drawn from, and
    an empty memory leaves the first batch unmixed (BYOL-A does the same).
    """

    def __init__(self, cfg: MixupConfig, num_bins: int):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("memory", torch.zeros(cfg.memory_size, cfg.memory_frames, num_bins))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, apply: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """feats [B, T, F], lengths [B] -> (mixed feats, ratios [B] (0 where not mixed)); then stores
        one segment of every (unmixed) input in the memory."""
        b, t, f = feats.shape
        if f != self.memory.shape[2]:
            raise ValueError(f"mixup: features have {f} bins, the memory {self.memory.shape[2]}")
        lens = lengths.cpu().clamp(min=1)
        u = torch.rand(b, 5, generator=generator)
        filled = int(self.filled)
        ratios = u[:, 0] * self.cfg.max_ratio
        if apply is not None:
            ratios = ratios * apply.cpu()
        out = feats
        if filled > 0:
            which = (u[:, 1] * filled).long()
            mem_frames = self.cfg.memory_frames
            offset = (u[:, 2] * mem_frames).long()
            idx = (offset[:, None] + torch.arange(t)[None, :]) % mem_frames  # tile the memory segment
            partner = self.memory[which.to(self.memory.device)]  # [B, mem_frames, F]
            partner = partner.gather(1, idx.to(partner.device)[:, :, None].expand(b, t, f)).to(feats)
            r = ratios.to(feats)[:, None, None]
            mixed = torch.log((1 - r) * feats.exp() + r * partner.exp() + torch.finfo(feats.dtype).tiny)
            keep = valid_mask(lengths.to(feats.device), t)[:, :, None] & (r > 0)
            out = torch.where(keep, mixed, feats)
        else:
            ratios = torch.zeros_like(ratios)
        self._store(feats.detach(), lens, u[:, 3])
        return out, ratios

    @torch.no_grad()
    def _store(self, feats: torch.Tensor, lens: torch.Tensor, u: torch.Tensor) -> None:
        mem_frames = self.cfg.memory_frames
        for i in range(feats.shape[0]):
            n = int(lens[i])
            start = int(u[i] * max(1, n - mem_frames + 1)) if n > mem_frames else 0
            seg = feats[i, start: start + min(n, mem_frames)]
            reps = -(-mem_frames // seg.shape[0])
            self.memory[int(self.pointer)] = seg.repeat(reps, 1)[:mem_frames].to(self.memory)
            self.pointer.fill_((int(self.pointer) + 1) % self.cfg.memory_size)
            self.filled.fill_(min(int(self.filled) + 1, self.cfg.memory_size))


def random_resize_crop(feats: torch.Tensor, lengths: torch.Tensor, cfg: ResizeCropConfig,
                       apply: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """BYOL-A RandomResizeCrop on each utterance's valid frames: place the [T_b, F] spectrogram in the
    centre of a zero canvas ``virtual_scale`` times larger, crop a random window of (time, freq) size
    (scale_t x T_b, scale_f x F), resize it back to [T_b, F] (bicubic); with ``cfg.freq`` False only the
    time axis is padded, cropped and resized. Rows with apply False are kept."""
    b, _, f = feats.shape
    lens = lengths.cpu()
    u = torch.rand(b, 4, generator=generator)
    out = feats.clone()
    for i in range(b):
        n = int(lens[i])
        if n < 2 or (apply is not None and not bool(apply[i])):
            continue
        canvas_t, canvas_f = int(n * cfg.virtual_scale), int(f * cfg.virtual_scale) if cfg.freq else f
        canvas = feats.new_zeros(canvas_t, canvas_f)
        ot, of = (canvas_t - n) // 2, (canvas_f - f) // 2
        canvas[ot: ot + n, of: of + f] = feats[i, :n]
        st = cfg.min_time_scale + (cfg.max_time_scale - cfg.min_time_scale) * float(u[i, 0])
        sf = cfg.min_freq_scale + (cfg.max_freq_scale - cfg.min_freq_scale) * float(u[i, 1]) if cfg.freq else 1.0
        ct, cf = max(1, min(canvas_t, round(n * st))), max(1, min(canvas_f, round(f * sf)))
        t0 = int(float(u[i, 2]) * (canvas_t - ct + 1))
        f0 = int(float(u[i, 3]) * (canvas_f - cf + 1))
        crop = canvas[t0: t0 + ct, f0: f0 + cf]
        out[i, :n] = F.interpolate(crop[None, None], size=(n, f), mode="bicubic", align_corners=True)[0, 0]
    return out


def mask_fraction(mask: torch.Tensor, lengths: torch.Tensor) -> float:
    """Share of valid values a mask [B, T, F] covers (for tests and logs)."""
    valid = valid_mask(lengths.to(mask.device), mask.shape[1])[:, :, None].expand_as(mask)
    return float(mask[valid].float().mean()) if bool(valid.any()) else 0.0


__all__ = ["MaskConfig", "MixupMemory", "mask_along_axis", "mask_fraction", "random_resize_crop"]
