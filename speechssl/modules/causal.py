"""Causal context networks: frame ``t`` of every output depends only on input frames ``<= t``.

Used as the context network of APC (Chung et al. 2019 list RNN, Transformer or CNN context
models) and optionally of CPC. Both networks return the output of every layer, zero on padding.

* :class:`CausalTransformer`: pre-LayerNorm Transformer layers whose self-attention uses
  ``F.scaled_dot_product_attention`` with a causal mask AND a key-padding mask, plus sinusoidal
  absolute positions (counted from each utterance's first frame, so batched == single).
* :class:`CausalConvNet`: 1-D convolutions padded on the left only (optionally dilated), with
  residual connections; receptive field ``1 + num_layers * (kernel_size - 1) * dilation``
  (or the dilated sum, see :attr:`CausalConvNet.receptive_field`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from speechssl.modules.linear import Linear
from speechssl.modules.padding import lengths_to_mask


def sinusoidal_positions(num_frames: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[frames, dim] sinusoidal position table (Vaswani et al. 2017), position 0 first."""
    pos = torch.arange(num_frames, device=device, dtype=torch.float32)[:, None]
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / max(half, 1))
    table = torch.zeros(num_frames, dim, device=device, dtype=torch.float32)
    table[:, 0 : 2 * half : 2] = torch.sin(pos * freq)
    table[:, 1 : 2 * half : 2] = torch.cos(pos * freq)
    return table.to(dtype)


class CausalSelfAttentionLayer(nn.Module):
    """Pre-LN Transformer layer: ``x + MHA(LN(x))`` then ``x + FFN(LN(x))``, causal attention.

    Args:
        dim: model width; ``num_heads`` must divide it.
        num_heads: attention heads.
        ffn_dim: hidden width of the feed-forward block (GELU).
        dropout: dropout on attention weights and residual branches (training only).
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"transformer dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = Linear(dim, 3 * dim)
        self.proj = Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), Linear(ffn_dim, dim))
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """x: [batch, frames, dim]; attn_mask: [batch, 1, frames, frames] bool (True = may attend)."""
        batch, frames, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, frames, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        x = x + self.dropout(self.proj(att.transpose(1, 2).reshape(batch, frames, dim)))
        return x + self.dropout(self.ffn(self.norm2(x)))


def causal_padding_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """[batch, 1, frames, frames] bool: query t may attend key s iff s <= t and s is valid.

    Key 0 is always allowed so padding queries of an empty utterance never form an all-masked
    row (which would give NaN); their outputs are zeroed by the caller anyway.
    """
    idx = torch.arange(frames, device=lengths.device)
    causal = idx[None, :] <= idx[:, None]  # [query, key]
    key_valid = lengths_to_mask(lengths, frames)
    key_valid[:, 0] = True
    return (causal[None] & key_valid[:, None, :])[:, None]


class CausalTransformer(nn.Module):
    """Input projection + sinusoidal positions + ``num_layers`` causal pre-LN layers.

    Args:
        input_dim: feature size of the input frames.
        dim, num_layers, num_heads, ffn_dim, dropout: layer hyper-parameters.

    The output of layer ``i`` is passed through a final LayerNorm only for the last layer
    (pre-LN convention), so every returned layer has a comparable scale.
    """

    def __init__(self, input_dim: int, dim: int, num_layers: int, num_heads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"CausalTransformer needs num_layers >= 1, got {num_layers}")
        self.input_proj = nn.Linear(input_dim, dim)
        self.layers = nn.ModuleList(
            CausalSelfAttentionLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dim = dim

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """x: [batch, frames, input_dim], lengths: [batch] -> list of [batch, frames, dim] per layer."""
        batch, frames, _ = x.shape
        mask = lengths_to_mask(lengths, frames).to(x.dtype)[..., None]
        h = self.input_proj(x) + sinusoidal_positions(frames, self.dim, x.device, x.dtype)[None]
        h = self.dropout(h) * mask
        attn_mask = causal_padding_mask(lengths, frames)
        outputs = []
        for i, layer in enumerate(self.layers):
            h = layer(h, attn_mask) * mask
            outputs.append(self.final_norm(h) * mask if i + 1 == len(self.layers) else h)
        return outputs


class CausalConvNet(nn.Module):
    """Stack of left-padded 1-D convolutions with ReLU, LayerNorm and residual connections.

    Layer ``i``: ``h_i = h_{i-1} + Dropout(ReLU(Conv_i(LeftPad(LN(h_{i-1})))))`` after an input
    projection to ``channels``. Dilation of layer ``i`` is ``dilation_growth ** i``.

    Args:
        input_dim: feature size of the input frames.
        channels: width of every layer.
        num_layers: number of convolution layers.
        kernel_size: taps per convolution (>= 1).
        dilation_growth: 1 for plain convolutions, 2 for a WaveNet-like doubling.
        dropout: dropout on residual branches (training only).
    """

    def __init__(
        self,
        input_dim: int,
        channels: int,
        num_layers: int,
        kernel_size: int = 3,
        dilation_growth: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        if num_layers < 1 or kernel_size < 1 or dilation_growth < 1:
            raise ValueError(
                f"CausalConvNet needs num_layers, kernel_size, dilation_growth >= 1, got "
                f"{num_layers}, {kernel_size}, {dilation_growth}"
            )
        self.input_proj = nn.Linear(input_dim, channels)
        self.dilations = [dilation_growth**i for i in range(num_layers)]
        self.norms = nn.ModuleList(nn.LayerNorm(channels) for _ in range(num_layers))
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d) for d in self.dilations
        )
        self.kernel_size = kernel_size
        self.dropout = nn.Dropout(dropout)

    @property
    def receptive_field(self) -> int:
        """Input frames seen by one output frame (the current one and earlier ones)."""
        return 1 + sum((self.kernel_size - 1) * d for d in self.dilations)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """x: [batch, frames, input_dim], lengths: [batch] -> list of [batch, frames, channels] per layer."""
        mask = lengths_to_mask(lengths, x.shape[1]).to(x.dtype)[..., None]
        h = self.input_proj(x) * mask
        outputs = []
        for norm, conv, d in zip(self.norms, self.convs, self.dilations):
            y = F.pad(norm(h).transpose(1, 2), ((self.kernel_size - 1) * d, 0))
            h = (h + self.dropout(F.relu(conv(y).transpose(1, 2)))) * mask
            outputs.append(h)
        return outputs
