"""TERA's input alterations (Liu et al. 2021, "TERA: Self-Supervised Learning of Transformer Encoder
Representation for Speech", IEEE/ACM TASLP; s3prl ``pretrain/mockingjay/task.py``
``generate_masked_acoustic_model_data``).

Three alterations of a batch of frames ``x [B, T, D]``, each switchable; every random draw comes from
the torch RNG (or ``generator``), so a seeded run and a resumed run alter the same way:

* time: about ``ratio`` of the valid frames, in spans of ``span`` frames (:func:`span_mask` with
  ``mask_prob = ratio / span``, the number of spans s3prl draws: ``round(n * ratio / span)``);
  per utterance, the chosen frames are zeroed (probability ``1 - random_prob - keep_prob``),
  replaced by random valid frames of the same utterance (``random_prob``) or left as they are
  (``keep_prob``): 80 / 10 / 10 as in BERT, drawn once per utterance as s3prl does;
* frequency: per utterance a band of ``w ~ U{0..floor(channels * max_ratio)}`` consecutive channels
  is zeroed on every frame (with stacked frames, the same channels of every stacked sub-frame);
* magnitude: each valid frame gets Gaussian noise ``N(0, std^2)`` with probability ``ratio``
  (s3prl adds it to every frame of 15 % of the batches; per frame keeps every batch useful).

The returned ``altered [B, T, D]`` bool marks the elements the L1 loss is computed on: the chosen
frames (all of their channels, including the kept 10 %), the zeroed band on valid frames, and the
noisy frames.
"""

from __future__ import annotations

import dataclasses

import torch

from speechssl.modules.masking import span_mask


@dataclasses.dataclass
class Alterations:
    """The result of :func:`alter`: every tensor [B, T, ...] on the input's device."""

    x: torch.Tensor  # [B, T, D] altered input
    altered: torch.Tensor  # [B, T, D] bool: elements the reconstruction loss is computed on
    time: torch.Tensor  # [B, T] bool: frames chosen by the time alteration
    noise: torch.Tensor  # [B, T] bool: frames that got noise


def time_alteration(x: torch.Tensor, lengths: torch.Tensor, ratio: float, span: int, random_prob: float,
                    keep_prob: float, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Span-mask about ``ratio`` of the valid frames; zero / random frame / keep per utterance.

    Args:
        x: [B, T, D]; lengths: [B] valid frames.
    Returns:
        (altered x [B, T, D], chosen frames [B, T] bool).
    """
    batch, frames, _ = x.shape
    chosen = span_mask(lengths, frames, ratio / span, span, min_masks=1, generator=generator)
    dice = torch.rand(batch, device=x.device, generator=generator)
    zero = dice < 1.0 - random_prob - keep_prob
    rand = (~zero) & (dice < 1.0 - keep_prob)
    source = (torch.rand(batch, frames, device=x.device, generator=generator)
              * lengths.clamp(min=1)[:, None]).long().clamp(max=frames - 1)  # a random valid frame
    replaced = torch.gather(x, 1, source.unsqueeze(-1).expand_as(x))
    out = torch.where((chosen & rand[:, None]).unsqueeze(-1), replaced, x)
    out = out.masked_fill((chosen & zero[:, None]).unsqueeze(-1), 0.0)
    return out, chosen


def frequency_alteration(x: torch.Tensor, channels: int, max_ratio: float,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero a random band of up to ``floor(channels * max_ratio)`` channels per utterance.

    Args:
        x: [B, T, k * channels] (``k`` stacked frames of ``channels`` channels each).
    Returns:
        (altered x, band [B, k * channels] bool).
    """
    batch, _, dim = x.shape
    if dim % channels:
        raise ValueError(f"frequency alteration: feature dim {dim} is not a multiple of {channels} channels")
    max_width = int(channels * max_ratio)
    width = (torch.rand(batch, device=x.device, generator=generator) * (max_width + 1)).long()
    start = (torch.rand(batch, device=x.device, generator=generator) * (channels - width + 1)).long()
    c = torch.arange(channels, device=x.device)[None, :]
    band = (c >= start[:, None]) & (c < (start + width)[:, None])  # [B, channels]
    band = band.repeat(1, dim // channels)
    return x.masked_fill(band[:, None, :], 0.0), band


def magnitude_alteration(x: torch.Tensor, valid: torch.Tensor, ratio: float, std: float,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Add ``N(0, std^2)`` noise to each valid frame with probability ``ratio``.

    Returns:
        (altered x, noisy frames [B, T] bool).
    """
    noisy = (torch.rand(x.shape[:2], device=x.device, generator=generator) < ratio) & valid
    noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator) * std
    return x + noise * noisy.unsqueeze(-1), noisy


def alter(x: torch.Tensor, lengths: torch.Tensor, *, channels: int, time: bool = True, time_ratio: float = 0.15,
          time_span: int = 7, random_prob: float = 0.1, keep_prob: float = 0.1, frequency: bool = True,
          frequency_max_ratio: float = 0.2, magnitude: bool = True, magnitude_ratio: float = 0.15,
          magnitude_std: float = 0.2, generator: torch.Generator | None = None) -> Alterations:
    """Apply the switched-on alterations in TERA's order (time, frequency, magnitude).

    Args:
        x: [B, T, D] normalised frames (zero padding); lengths: [B] valid frames;
        channels: channels per (unstacked) frame, for the frequency band.
    """
    batch, frames, dim = x.shape
    valid = torch.arange(frames, device=x.device)[None, :] < lengths[:, None]
    none = torch.zeros(batch, frames, dtype=torch.bool, device=x.device)
    chosen, noisy = none, none
    altered = torch.zeros(batch, frames, dim, dtype=torch.bool, device=x.device)
    if time:
        x, chosen = time_alteration(x, lengths, time_ratio, time_span, random_prob, keep_prob, generator)
        altered |= chosen.unsqueeze(-1)
    if frequency:
        x, band = frequency_alteration(x, channels, frequency_max_ratio, generator)
        altered |= band[:, None, :] & valid.unsqueeze(-1)
    if magnitude:
        x, noisy = magnitude_alteration(x, valid, magnitude_ratio, magnitude_std, generator)
        altered |= noisy.unsqueeze(-1)
    return Alterations(x=x, altered=altered, time=chosen, noise=noisy)
