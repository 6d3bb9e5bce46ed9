"""Pooling over frames that ignores padding.

Every function takes ``x`` [batch, frames, dim] and ``lengths`` [batch] (valid frames); frames at
index >= length never influence the result, so adding padding leaves the output unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from speechssl.modules.padding import lengths_to_mask

#: [batch] lengths -> [batch, max_frames] bool, True on valid frames (the shared helper).
valid_mask = lengths_to_mask


def _check_lengths(x: torch.Tensor, lengths: torch.Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"expected [batch, frames, dim] features, got shape {tuple(x.shape)}")
    if lengths.shape != (x.shape[0],):
        raise ValueError(f"lengths shape {tuple(lengths.shape)} does not match batch {x.shape[0]}")
    if bool((lengths < 1).any()):
        raise ValueError(f"every utterance needs at least one valid frame, got lengths {lengths.tolist()}")


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over valid frames. x [B, T, D], lengths [B] -> [B, D]."""
    _check_lengths(x, lengths)
    mask = valid_mask(lengths, x.shape[1]).unsqueeze(-1)
    return x.masked_fill(~mask, 0.0).sum(1) / lengths.to(x.dtype).unsqueeze(1)


def masked_mean_std(x: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Concatenated mean and standard deviation over valid frames. [B, T, D] -> [B, 2D]."""
    _check_lengths(x, lengths)
    mask = valid_mask(lengths, x.shape[1]).unsqueeze(-1)
    n = lengths.to(x.dtype).unsqueeze(1)
    mean = x.masked_fill(~mask, 0.0).sum(1) / n
    var = ((x - mean.unsqueeze(1)) ** 2).masked_fill(~mask, 0.0).sum(1) / n
    return torch.cat([mean, torch.sqrt(var.clamp_min(0) + eps)], dim=-1)


class AttentiveStatsPool(nn.Module):
    """Attentive statistics pooling (Okabe et al. 2018), as in x-vector speaker models.

    ``e_t = v^T tanh(W h_t + b)``; ``alpha = softmax_t(e)`` over valid frames only; output the
    attention-weighted mean and standard deviation: [B, T, D] -> [B, 2D].
    (SpeechBrain ``AttentiveStatisticsPooling`` without the global-context input.)
    """

    def __init__(self, dim: int, attention_dim: int = 128, eps: float = 1e-5):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(dim, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        _check_lengths(x, lengths)
        mask = valid_mask(lengths, x.shape[1])
        scores = self.attention(x).squeeze(-1).float()  # [B, T]
        scores = scores.masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(scores, dim=1).to(x.dtype).unsqueeze(-1)  # [B, T, 1], 0 on padding
        x = x.masked_fill(~mask.unsqueeze(-1), 0.0)  # padding may hold anything (even NaN)
        mean = (alpha * x).sum(1)
        var = (alpha * x * x).sum(1) - mean * mean
        return torch.cat([mean, torch.sqrt(var.clamp_min(0) + self.eps)], dim=-1)
