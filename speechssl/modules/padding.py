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
                 device: torch.device | str | None = None, time_dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad tensors of different lengths into one batch.

    Args:
        seqs: ``B`` tensors whose dimension ``time_dim`` has length ``L_i`` and whose other
            dimensions are equal, e.g. waveforms [samples_i], frames [T_i, D], or a layer
            stack [layers, T_i, D] with ``time_dim=1``.
        dtype: dtype of the batch (values are cast on copy).
        device: device of the batch (default: CPU).
        time_dim: the dimension of each tensor that is padded (0: the first).

    Returns:
        (Tensor [B, *shape with L_i -> max L_i], zero beyond each length; LongTensor [B] lengths ``L_i`` on CPU).
        With ``time_dim=0`` that is [B, max L_i, *rest].
    """
    if len(seqs) == 0:
        raise ValueError("pad_to_batch: no tensors to batch")
    time_dim = range(seqs[0].dim())[time_dim]  # -1 means the last dimension, as in torch
    lengths = torch.tensor([int(s.shape[time_dim]) for s in seqs], dtype=torch.long)
    shape = list(seqs[0].shape)
    for i, s in enumerate(seqs):
        if s.dim() != len(shape) or any(a != b for d, (a, b) in enumerate(zip(s.shape, shape)) if d != time_dim):
            expected = ["L" if d == time_dim else n for d, n in enumerate(shape)]
            raise ValueError(f"pad_to_batch: tensor {i} has shape {tuple(s.shape)}, expected "
                             f"[{', '.join(map(str, expected))}] like tensor 0")
    shape[time_dim] = int(lengths.max())
    out = torch.zeros(len(seqs), *shape, dtype=dtype, device=device)
    for i, s in enumerate(seqs):
        out[i].narrow(time_dim, 0, s.shape[time_dim]).copy_(s)
    return out, lengths
