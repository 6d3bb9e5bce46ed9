"""Transformer context network of wav2vec 2.0 / HuBERT (Baevski et al. 2020, section 2).

fairseq ``TransformerEncoder``; torchaudio ``components.Transformer``; Hugging Face
``Wav2Vec2Encoder`` (post-LN, Base) and ``Wav2Vec2EncoderStableLayerNorm`` (pre-LN, Large-LV60).

* Convolutional relative positional embedding: grouped conv (kernel 128, 16 groups) with weight
  normalisation over the kernel axis (``torch.nn.utils.parametrizations.weight_norm(dim=2)``, so
  the state dict holds ``parametrizations.weight.original0`` = g and ``original1`` = v exactly as
  torchaudio and transformers do), "same" padding, GELU; added to the input. Where
  ``speechssl.accel.conv_grad_as_conv`` says so (Base's weight on AVX2-only CPUs) its gradients run as
  forward convolutions (:mod:`speechssl.modules.grouped_conv`); the forward is the same conv.
* Post-LN (``layer_norm_first=False``): ``x = LN(x + pos)``, then layers
  ``x = LN(x + Attn(x)); x = LN(x + FFN(x))``.
* Pre-LN (``layer_norm_first=True``): ``x = x + pos``, layers ``x = x + Attn(LN(x)); x = x + FFN(LN(x))``,
  then a final LN.
* Attention is ``torch.nn.functional.scaled_dot_product_attention`` with a key padding mask, from
  one fused q/k/v projection. Where ``speechssl.accel.fast_dropout`` says so (CPU layers of Base width),
  dropout masks are drawn from integers and attention with dropout runs
  :func:`speechssl.modules.dropout.dropout_attention` (the same maths; a different random stream), under
  bf16 / fp16 autocast in float32 as SDPA's math path does (it upcasts reduced precision on CPU).
* LayerDrop (Fan et al. 2019) skips whole layers in training with probability ``layer_drop``.
* ``pos_conv_kernel=0`` builds no positional conv: the caller adds absolute positions itself, e.g.
  :func:`sinusoidal_positions` (BERT / Mockingjay / TERA, and MAE, whose encoder sees only the
  visible frames and so needs positions attached before the masked ones are dropped), or passes
  ``positions`` (each frame's time index) to :meth:`TransformerEncoder.run_layers`: rotary position
  embedding (RoPE, Su et al. 2021, "RoFormer") of every layer's queries and keys, so attention depends
  on relative positions and no position vector enters the residual stream (the frozen features).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

import speechssl.accel as accel
from speechssl.modules.dropout import Dropout, dropout_attention, takes_fast_path
from speechssl.modules.grouped_conv import grouped_conv1d
from speechssl.modules.linear import Linear


def rotary_tables(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE (Su et al. 2021) cos / sin tables for ``positions`` [batch or 1, frames] (time indices).

    Channel pairs ``(i, i + head_dim / 2)`` (GPT-NeoX layout) turn by ``positions * 10000^(-2i / head_dim)``.
    Returns (cos, sin), each [batch or 1, 1, frames, head_dim] float32.
    """
    if head_dim % 2:
        raise ValueError(f"rotary positions need an even head dim, got {head_dim}")
    inv_freq = torch.pow(10000.0, -torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angle = positions.float()[..., None] * inv_freq  # [B, N, hd / 2]
    angle = torch.cat([angle, angle], -1)[:, None]
    return angle.cos(), angle.sin()


def apply_rotary(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate x [batch, heads, frames, head_dim] by :func:`rotary_tables`."""
    cos, sin = tables
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection ([q; k; v] rows)."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.dropout = dim, num_heads, dropout
        self.qkv = Linear(dim, 3 * dim)
        self.out_proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x: [batch, frames, dim]; attn_mask: [batch, 1, 1, frames] bool (True = attend) or None;
        rotary: :func:`rotary_tables` of the frames' positions (RoPE on q and k) or None."""
        batch, frames, dim = x.shape
        q, k, v = self.qkv(x).view(batch, frames, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        if (takes_fast_path(x, self.dropout, dim, self.training)
                and (torch.is_autocast_enabled("cpu") or q.dtype in (torch.float32, torch.float64))
                and (attn_mask is None or attn_mask.shape == (batch, 1, 1, frames))):
            pad = None if attn_mask is None else ~attn_mask[:, 0, 0, :]
            out = dropout_attention(q, k, v, self.dropout, pad)  # under autocast: in float32, as SDPA's math path
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
            )
        return self.out_proj(out.transpose(1, 2).reshape(batch, frames, dim))


class FeedForward(nn.Module):
    """``fc2(dropout(GELU(fc1(x))))`` followed by dropout (the GELU is fused into ``fc1``)."""

    def __init__(self, dim: int, ffn_dim: int, activation_dropout: float = 0.0, dropout: float = 0.0):
        super().__init__()
        self.fc1 = Linear(dim, ffn_dim, activation="gelu")
        self.fc2 = Linear(ffn_dim, dim)
        self.activation_dropout = Dropout(activation_dropout, dim)
        self.dropout = Dropout(dropout, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.activation_dropout(self.fc1(x))))


class TransformerLayer(nn.Module):
    """One post-LN or pre-LN layer (see the module docstring). x: [batch, frames, dim]."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.1, attention_dropout: float = 0.1,
                 activation_dropout: float = 0.0, layer_norm_first: bool = False, eps: float = 1e-5):
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.attention = SelfAttention(dim, num_heads, attention_dropout)
        self.dropout = Dropout(dropout, dim)
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn = FeedForward(dim, ffn_dim, activation_dropout, dropout)
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.dropout(self.attention(self.attn_norm(x), attn_mask, rotary))
            return x + self.ffn(self.ffn_norm(x))
        x = self.attn_norm(x + self.dropout(self.attention(x, attn_mask, rotary)))
        return self.ffn_norm(x + self.ffn(x))


class PositionalConv(nn.Module):
    """Convolutional relative positional embedding: [batch, frames, dim] -> same shape."""

    def __init__(self, dim: int, kernel: int = 128, groups: int = 16):
        super().__init__()
        if dim % groups:
            raise ValueError(f"embed dim {dim} is not divisible by pos_conv_groups {groups}")
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        # fairseq init: normal(0, sqrt(4 / (kernel * dim))), then weight norm over the kernel axis.
        nn.init.normal_(conv.weight, mean=0.0, std=(4.0 / (kernel * dim)) ** 0.5)
        nn.init.zeros_(conv.bias)
        self.conv = weight_norm(conv, name="weight", dim=2)
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, x = self.conv, x.transpose(1, 2)
        weight = conv.weight  # weight-normed (a parametrization)
        if (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
                and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
                and accel.conv_grad_as_conv(weight.numel())):
            # the same forward conv; its gradients as forward convs (speechssl.modules.grouped_conv)
            y = grouped_conv1d(x, weight, conv.bias, conv.padding[0], conv.groups)
        else:  # the weight above, not conv(x): that would compute the weight norm a second time
            y = F.conv1d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        if self.trim:
            y = y[..., : -self.trim]
        return F.gelu(y).transpose(1, 2)


def sinusoidal_positions(frames: int, dim: int, device: torch.device | None = None,
                         offset: int = 0) -> torch.Tensor:
    """Sinusoidal absolute positions (Vaswani et al. 2017), s3prl Mockingjay's ``get_sinusoid_table``.

    ``table[t, 2i] = sin(t / 10000^(2i / dim))``, ``table[t, 2i + 1] = cos(t / 10000^(2i / dim))``.
    Computed in float64 and rounded to float32 (as s3prl's numpy table), so the numbers match s3prl's.

    Returns:
        [frames, dim] float32, rows ``offset .. offset + frames - 1``.
    """
    t = torch.arange(offset, offset + frames, dtype=torch.float64, device=device)[:, None]
    i = torch.arange(dim, device=device)
    angle = t / torch.pow(10000.0, (2 * torch.div(i, 2, rounding_mode="floor")).double() / dim)
    table = torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


class TransformerEncoder(nn.Module):
    """Positional conv + layers (+ final LN for pre-LN).

    Args:
        dim, num_layers, num_heads, ffn_dim: sizes (Base: 768, 12, 12, 3072).
        layer_norm_first: pre-LN if True, post-LN (Base) if False.
        pos_conv_kernel, pos_conv_groups: positional conv (128, 16); kernel 0: none (the caller adds
            positions, see :func:`sinusoidal_positions`).
        dropout, attention_dropout, activation_dropout: dropout probabilities.
        layer_drop: LayerDrop probability in training.
    """

    def __init__(self, dim: int, num_layers: int, num_heads: int, ffn_dim: int, layer_norm_first: bool = False,
                 pos_conv_kernel: int = 128, pos_conv_groups: int = 16, dropout: float = 0.1,
                 attention_dropout: float = 0.1, activation_dropout: float = 0.0, layer_drop: float = 0.0,
                 eps: float = 1e-5):
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.layer_drop = layer_drop
        self.pos_conv = PositionalConv(dim, pos_conv_kernel, pos_conv_groups) if pos_conv_kernel > 0 else None
        self.layer_norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = Dropout(dropout, dim)
        self.layers = nn.ModuleList(
            TransformerLayer(dim, num_heads, ffn_dim, dropout, attention_dropout, activation_dropout,
                             layer_norm_first, eps)
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                return_layers: bool = False, positions: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the context network.

        Args:
            x: [batch, frames, dim] projected (and possibly masked) features.
            padding_mask: [batch, frames] bool, True = padding (None: no padding).
            return_layers: also return every layer's output.
            positions: [batch or 1, frames] time index of each frame: rotary positions in every layer
                (None: none; see the module docstring).

        Returns:
            (context [batch, frames, dim], [layer_1, ..., layer_N] outputs or [] ). For pre-LN,
            ``context`` is the final LayerNorm of ``layer_N``; for post-LN it is ``layer_N``.
        """
        x, attn_mask = self.embed(x, padding_mask)
        return self.run_layers(x, attn_mask, return_layers, positions)

    def embed(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The input of layer 1: zero the padding, add the positional conv, LN (post-LN), dropout.

        Returns:
            (x [batch, frames, dim], attention mask [batch, 1, 1, frames] bool or None) for :meth:`run_layers`.
        """
        attn_mask = None
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
            attn_mask = ~padding_mask[:, None, None, :]
        if self.pos_conv is not None:
            x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        return self.dropout(x), attn_mask

    def run_layers(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                   return_layers: bool = False, positions: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The layers (and the final LN of pre-LN) on :meth:`embed`'s output; see :meth:`forward`."""
        hidden: list[torch.Tensor] = []
        rotary = None
        if positions is not None and len(self.layers):
            attention = self.layers[0].attention
            rotary = rotary_tables(positions, attention.dim // attention.num_heads)
        for layer in self.layers:
            if self.training and self.layer_drop > 0 and float(torch.rand(())) < self.layer_drop:
                if return_layers:
                    hidden.append(x)
                continue
            x = layer(x, attn_mask, rotary)
            if return_layers:
                hidden.append(x)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x, hidden
