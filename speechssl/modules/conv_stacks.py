"""Stacks of "same"-padded grouped 1-D convolutions: data2vec's positional encoder and 2.0's decoder.

Both are stacks of the same block (fairseq ``data2vec/models/modalities/audio.py`` and
``modules.py`` ``Decoder1d``; Hugging Face ``Data2VecAudioPositionalConvLayer``)::

    x [batch, frames, C] -> Conv1d(kernel k, padding k // 2, groups g) (trim 1 frame if k is even)
                         -> LayerNorm over channels without affine parameters -> GELU

* :class:`PositionalConvStack`: data2vec's relative positional encoder (``conv_pos_depth`` 5 layers of
  kernel ``max(3, conv_pos_width // depth)`` = 19, 16 groups); its output is added to the input.
* :class:`ConvDecoder1d`: data2vec 2.0's light decoder that fills in masked frames from the student's
  output at the unmasked ones (4 layers of 384 channels, kernel 7, 16 groups; a residual around every
  block whose input and output sizes agree; a final Linear back to the model dimension).

Padding: frames past an utterance's length are zeroed before every convolution, so a valid frame
never reads another utterance's padding and batched output equals single-utterance output (the
reference implementations zero the padding once, before the first layer; without padding the two
agree exactly).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from speechssl.modules.linear import Linear


class SameConvBlock(nn.Module):
    """``GELU(LayerNorm_noaffine(Conv1d_same(x)))`` on [batch, channels, frames]."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, groups: int):
        super().__init__()
        if in_dim % groups or out_dim % groups:
            raise ValueError(f"conv channels {in_dim} -> {out_dim} are not divisible by groups {groups}")
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, padding=kernel // 2, groups=groups)
        self.trim = 1 if kernel % 2 == 0 else 0
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.trim:
            y = y[..., : -self.trim]
        y = F.layer_norm(y.transpose(1, 2), (self.out_dim,)).transpose(1, 2)
        return F.gelu(y)


def _zero_padding(x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """x [batch, channels, frames]; padding_mask [batch, frames] True = padding."""
    return x if padding_mask is None else x.masked_fill(padding_mask[:, None, :], 0.0)


class PositionalConvStack(nn.Module):
    """data2vec's convolutional positional encoder: [batch, frames, dim] -> [batch, frames, dim].

    Args:
        dim: model dimension.
        depth: number of blocks (data2vec: 5).
        kernel: kernel of each block (data2vec: ``max(3, 95 // 5)`` = 19).
        groups: convolution groups (16).
    """

    def __init__(self, dim: int, depth: int, kernel: int, groups: int):
        super().__init__()
        if depth < 1:
            raise ValueError(f"positional conv depth must be >= 1, got {depth}")
        self.layers = nn.ModuleList(SameConvBlock(dim, dim, kernel, groups) for _ in range(depth))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = x.transpose(1, 2)
        for layer in self.layers:
            y = layer(_zero_padding(y, padding_mask))
        return y.transpose(1, 2)


class ConvDecoder1d(nn.Module):
    """data2vec 2.0's decoder: [batch, frames, in_dim] -> [batch, frames, in_dim].

    Args:
        in_dim: model dimension (input and output).
        dim: decoder channels (384).
        layers: blocks (4).
        kernel: kernel (7).
        groups: convolution groups (16).
    """

    def __init__(self, in_dim: int, dim: int, layers: int, kernel: int, groups: int):
        super().__init__()
        if layers < 1:
            raise ValueError(f"decoder layers must be >= 1, got {layers}")
        self.blocks = nn.ModuleList(SameConvBlock(in_dim if i == 0 else dim, dim, kernel, groups) for i in range(layers))
        self.proj = Linear(dim, in_dim)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = x.transpose(1, 2)
        for block in self.blocks:
            out = block(_zero_padding(y, padding_mask))
            y = out + y if out.shape == y.shape else out
        return self.proj(y.transpose(1, 2))
