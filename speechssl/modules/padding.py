"""Padding helpers shared by every package: lengths -> mask, and variable-length tensors -> a batch.

One place for two one-liners that were written in six files (recurrent and causal blocks, the
frontends' CMVN, downstream pooling, wav2vec 2.0, the collate functions), so that "valid frame"
means the same thing everywhere: index ``t`` of utterance ``b`` is valid iff ``t < lengths[b]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Valid positions of a padded batch.

    Args:
        lengths (Tensor): [batch] valid frames (or samples) of each row.
        max_len: padded length T.

    Returns:
        BoolTensor: [batch, T], True on valid positions (``t < lengths[b]``), on ``lengths.device``.
    """
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def pad_to_batch(seqs: Sequence[torch.Tensor], dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad tensors of different lengths into one batch.

    Args:
        seqs: ``B`` tensors [L_i, *rest] (e.g. waveforms [samples_i]); ``rest`` equal for all.
        dtype: dtype of the batch (values are cast on copy).
        device: device of the batch (default: CPU).

    Returns:
        (Tensor [B, max L_i, *rest], zero beyond each length; LongTensor [B] lengths ``L_i`` on CPU).
    """
    if len(seqs) == 0:
        raise ValueError("pad_to_batch: no tensors to batch")
    lengths = torch.tensor([int(s.shape[0]) for s in seqs], dtype=torch.long)
    rest = tuple(seqs[0].shape[1:])
    for i, s in enumerate(seqs):
        if tuple(s.shape[1:]) != rest:
            raise ValueError(f"pad_to_batch: tensor {i} has shape {tuple(s.shape)}, expected [L, {rest}] like tensor 0")
    out = torch.zeros(len(seqs), int(lengths.max()), *rest, dtype=dtype, device=device)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
    return out, lengths
