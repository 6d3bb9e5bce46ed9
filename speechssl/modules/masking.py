"""Span masking (wav2vec 2.0, Baevski et al. 2020, section 3.1; fairseq ``compute_mask_indices``).

Every valid frame of an utterance of ``n`` frames starts a span of ``span`` frames with
probability ``mask_prob``: ``floor(mask_prob * n + u)`` (``u ~ U[0, 1)``) distinct starts are drawn
uniformly from ``[0, n - span]`` (at least ``min_masks``, at most ``n - span + 1``), and spans may
overlap. With ``mask_prob = 0.065`` and ``span = 10`` about ``1 - (1 - 0.065) ** 10 = 49 %`` of the
frames are masked. fairseq's ``mask_prob 0.65`` is ``mask_prob * span`` here. Padding is never masked.

Vectorised over the batch: no Python loop over frames or utterances.
"""

from __future__ import annotations

import torch


def span_mask(
    lengths: torch.Tensor,
    max_frames: int,
    mask_prob: float,
    span: int,
    min_masks: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random span mask.

    Args:
        lengths: [batch] valid frames per utterance.
        max_frames: T, frames of the padded batch.
        mask_prob: probability that a frame starts a span.
        span: span length M in frames (spans are cut at the utterance end if it is shorter than M).
        min_masks: minimum number of spans per utterance (if the utterance has any frame).
        generator: optional RNG (on the device of ``lengths``).

    Returns:
        [batch, max_frames] bool, True = masked.
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if span < 1:
        raise ValueError(f"span must be >= 1, got {span}")
    device = lengths.device
    batch = lengths.shape[0]
    lengths = lengths.clamp(max=max_frames)
    positions = torch.arange(max_frames, device=device)
    num_starts_possible = (lengths - span + 1).clamp(min=1)  # start range [0, n - M] (or [0] if n < M)
    u = torch.rand(batch, device=device, generator=generator)
    num_spans = torch.floor(mask_prob * lengths.float() + u).long().clamp(min=min_masks)
    num_spans = torch.minimum(num_spans, num_starts_possible)
    num_spans = torch.where(lengths > 0, num_spans, torch.zeros_like(num_spans))
    # Distinct random starts: rank random scores among the allowed start positions.
    scores = torch.rand(batch, max_frames, device=device, generator=generator)
    scores = scores.masked_fill(positions[None, :] >= num_starts_possible[:, None], 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    starts = (rank < num_spans[:, None]).to(torch.int32)
    # Frame t is masked if a span starts in (t - M, t]: difference of cumulative sums.
    total = starts.cumsum(1)
    covered = total - torch.nn.functional.pad(total, (span, 0))[:, :max_frames]
    return (covered > 0) & (positions[None, :] < lengths[:, None])
