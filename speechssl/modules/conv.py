"""Strided 1-D convolution stack: the wav2vec 2.0 feature encoder (and conv subsamplers).

Baevski et al. 2020, section 2; fairseq ``ConvFeatureExtractionModel``; torchaudio
``components.FeatureExtractor``; Hugging Face ``Wav2Vec2FeatureEncoder``.

Each layer is ``conv(kernel, stride, no padding) -> norm -> GELU`` where norm is

* ``group_norm``: a per-channel GroupNorm over time in the *first* layer only (wav2vec 2.0 Base),
* ``layer_norm``: a LayerNorm over channels in *every* layer (Large / "stable layer norm"),
* ``none``: no normalisation.

Frame arithmetic (exact, no padding)::

    frames_out = 0 if frames_in < kernel else (frames_in - kernel) // stride + 1

A valid output frame only reads valid input frames, so padding can only leak through the
GroupNorm statistics; those are computed over each utterance's valid frames, which makes
batched output equal to one-at-a-time output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

ConvNorm = Literal["group_norm", "layer_norm", "none"]


def conv_out_lengths(lengths: torch.Tensor, layers: Sequence[tuple[int, int, int]]) -> torch.Tensor:
    """Valid frames after the stack for ``lengths`` [batch] input frames (see module docstring)."""
    for _, kernel, stride in layers:
        lengths = torch.clamp(torch.div(lengths - kernel, stride, rounding_mode="floor") + 1, min=0)
    return lengths


def receptive_field(layers: Sequence[tuple[int, int, int]]) -> tuple[int, int]:
    """``(receptive_field, total_stride)`` of the stack, in input frames (wav2vec 2.0: 400, 320)."""
    field, jump = 1, 1
    for _, kernel, stride in layers:
        field += (kernel - 1) * jump
        jump *= stride
    return field, jump


def masked_group_norm(x: torch.Tensor, lengths: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm of ``x`` [batch, channels, frames] with statistics over valid frames only."""
    batch, channels, frames = x.shape
    groups = norm.num_groups
    valid = (torch.arange(frames, device=x.device) < lengths[:, None]).to(x.dtype)  # [B, T]
    xg = x.view(batch, groups, channels // groups, frames)
    w = valid[:, None, None, :]
    count = (lengths.to(x.dtype) * (channels // groups)).clamp(min=1)[:, None, None, None]
    mean = (xg * w).sum((2, 3), keepdim=True) / count
    var = (((xg - mean) * w) ** 2).sum((2, 3), keepdim=True) / count
    y = ((xg - mean) * torch.rsqrt(var + norm.eps)).view(batch, channels, frames)
    if norm.affine:
        y = y * norm.weight[:, None] + norm.bias[:, None]
    return y


class ConvBlock(nn.Module):
    """``conv -> norm -> GELU``. ``norm`` is a GroupNorm, a LayerNorm over channels, or None."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, bias: bool, norm: str | None):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        self.norm: nn.Module | None
        if norm == "group_norm":
            self.norm = nn.GroupNorm(out_channels, out_channels, affine=True)
        elif norm == "layer_norm":
            self.norm = nn.LayerNorm(out_channels)
        else:
            self.norm = None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [batch, in_channels, frames] -> [batch, out_channels, frames_out]; lengths [batch] or None."""
        conv = self.conv
        if conv.in_channels == 1 and x.shape[-1] >= self.kernel:
            # One input channel (waveform): a [C, k] x [k, T] batched matmul over strided windows
            # is ~1.5x faster on CPU than the oneDNN convolution and gives the same numbers.
            weight = conv.weight.view(1, conv.out_channels, self.kernel).expand(x.shape[0], -1, -1)
            x = torch.bmm(weight, x[:, 0].unfold(-1, self.kernel, self.stride).transpose(1, 2))
            if conv.bias is not None:
                x = x + conv.bias[:, None]
        else:
            x = conv(x)
        if lengths is not None:
            lengths = torch.clamp(torch.div(lengths - self.kernel, self.stride, rounding_mode="floor") + 1, min=0)
        if isinstance(self.norm, nn.GroupNorm):
            if lengths is not None and bool((lengths < x.shape[-1]).any()):
                x = masked_group_norm(x, lengths, self.norm)
            else:
                x = self.norm(x)
        elif isinstance(self.norm, nn.LayerNorm):
            x = F.layer_norm(x.transpose(1, 2), self.norm.normalized_shape, self.norm.weight, self.norm.bias,
                             self.norm.eps).transpose(1, 2)
        return F.gelu(x), lengths


class ConvFeatureEncoder(nn.Module):
    """Stack of :class:`ConvBlock` s.

    Args:
        in_channels: input channels (1 for waveform, n_mels for a log-Mel subsampler).
        layers: ``[(out_channels, kernel, stride), ...]``; wav2vec 2.0:
            ``[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2``.
        norm: ``group_norm`` (first layer only) | ``layer_norm`` (every layer) | ``none``.
        bias: convolution biases (False for wav2vec 2.0 Base, True for Large-LV60).
    """

    def __init__(self, in_channels: int, layers: Sequence[tuple[int, int, int]], norm: ConvNorm = "group_norm",
                 bias: bool = False):
        super().__init__()
        if not layers:
            raise ValueError("the conv feature encoder needs at least one layer")
        if norm not in ("group_norm", "layer_norm", "none"):
            raise ValueError(f"conv norm must be group_norm, layer_norm or none, got {norm!r}")
        self.spec = [tuple(int(v) for v in layer) for layer in layers]
        blocks = []
        for i, (channels, kernel, stride) in enumerate(self.spec):
            block_norm = "layer_norm" if norm == "layer_norm" else ("group_norm" if norm == "group_norm" and i == 0 else None)
            blocks.append(ConvBlock(in_channels, channels, kernel, stride, bias, block_norm))
            in_channels = channels
        self.layers = nn.ModuleList(blocks)
        self.out_dim = in_channels
        self.receptive_field, self.stride = receptive_field(self.spec)

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return conv_out_lengths(lengths, self.spec)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [batch, in_channels, frames] -> ([batch, frames_out, out_dim], lengths_out [batch] or None)."""
        for layer in self.layers:
            x, lengths = layer(x, lengths)
        return x.transpose(1, 2), lengths
