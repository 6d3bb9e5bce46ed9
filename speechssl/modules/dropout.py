"""Dropout and attention-with-dropout for wide transformers, with masks drawn from 31-bit integers.

PyTorch's CPU dropout draws its mask with ``bernoulli_`` (about 20 ns per element at one thread on the
project's AMD EPYC: 3 % of a HuBERT Base step), then runs ``mask / (1 - p)`` and ``x * noise`` as two
more passes and saves a float noise tensor for the backward. Here a mask costs one ``random_`` on int32
(the generator's 31-bit integers, about 7 ns per element) and one comparison: an element is kept when
its integer is below ``round((1 - p) * 2^31)`` (so the keep probability is exact to 2^-31). The output
is ``x * noise`` with ``noise = mask / (1 - p)``, PyTorch's formula, and autograd saves that noise for
the gradient ``grad * noise``.

:func:`dropout_attention` is softmax attention with dropout on the attention weights written for that
case (PyTorch's ``scaled_dot_product_attention`` takes its math path whenever ``dropout_p > 0`` on CPU):
the scores in one ``baddbmm`` with the 1 / sqrt(head_dim) scale folded in, the padding mask filled in
place, softmax in place, and a backward that keeps only q, k, v, the softmax output and the noise
(``probs * noise`` is recomputed there rather than saved: one more product, one less [frames x frames]
tensor per head kept for the backward).

Both are taken where ``speechssl.accel.fast_dropout(width)`` says so: CPU layers whose model width
reaches ``Decision.dropout_min_dim`` (768, the Base models); the demo's narrower models keep
``nn.Dropout`` and ``scaled_dot_product_attention`` and with them their random streams and numbers.
"""

from __future__ import annotations

import torch
from torch import nn

import speechssl.accel as accel


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool mask of ``shape``, each element True (kept) with probability ``1 - p`` (to 2^-31).

    One ``random_`` of int32 (uniform integers in [0, 2^31 - 1]) and one comparison.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    draws = torch.empty(shape, dtype=torch.int32, device=device).random_(generator=generator)
    return draws <= round((1.0 - p) * 2.0 ** 31) - 1  # ``< 2^31`` would overflow int32 at p = 0


def dropout_noise(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """PyTorch's dropout noise, ``mask / (1 - p)`` (``mask`` from :func:`keep_mask`) in ``dtype``."""
    return keep_mask(shape, p, generator, device).to(dtype).div_(1.0 - p)


def fast_dropout(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training-mode dropout of ``x`` (any shape): ``x * noise``, PyTorch's formula, with
    :func:`dropout_noise` (autograd's product rule gives ``grad * noise``); ``p == 0`` returns ``x``."""
    if p == 0.0:
        return x
    return x * dropout_noise(x.shape, p, x.dtype, x.device, generator)


def takes_fast_path(x: torch.Tensor, p: float, width: int, training: bool) -> bool:
    """Whether dropout ``p`` on ``x`` in a layer of model width ``width`` runs here instead of PyTorch's:
    training, ``p > 0``, a floating-point CPU tensor, and ``accel.fast_dropout(width)``."""
    return (training and p > 0 and x.device.type == "cpu" and x.is_floating_point()
            and accel.fast_dropout(width))


class Dropout(nn.Dropout):
    """``nn.Dropout`` that takes :func:`fast_dropout` in training where ``accel.fast_dropout(width)`` says so.

    Args:
        p: drop probability.
        width: the model width of the layer it sits in (the per-shape rule's key).
    """

    def __init__(self, p: float = 0.5, width: int = 0):
        super().__init__(p)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if takes_fast_path(x, self.p, self.width, self.training):
            return fast_dropout(x, self.p)
        return super().forward(x)


class _DropoutAttention(torch.autograd.Function):
    """softmax(q k^T * scale + mask) with dropout, times v; q, k, v [batch * heads, frames, head_dim]."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)  # under autocast: float32, as SDPA's math path
    def forward(ctx, q, k, v, pad, noise, heads: int, scale: float):
        bh, n, _ = q.shape
        scores = torch.baddbmm(q.new_empty(bh, n, n), q, k.transpose(1, 2), beta=0.0, alpha=scale)
        if pad is not None:  # [batch, frames] True = padding, the same for every head and query
            scores.view(-1, heads, n, n).masked_fill_(pad[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, -1, out=scores)  # in place: the scores are not needed again
        out = torch.bmm(probs * noise, v)
        ctx.save_for_backward(q, k, v, probs, noise)
        ctx.scale = scale
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")  # the forward's autocast state (off)
    def backward(ctx, grad):
        q, k, v, probs, noise = ctx.saved_tensors
        grad = grad.contiguous()
        grad_v = torch.bmm((probs * noise).transpose(1, 2), grad)
        grad_probs = torch.bmm(grad, v.transpose(1, 2)).mul_(noise)
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        grad_q = torch.baddbmm(q.new_empty(q.shape), grad_scores, k, beta=0.0, alpha=ctx.scale)
        grad_k = torch.baddbmm(k.new_empty(k.shape), grad_scores.transpose(1, 2), q, beta=0.0, alpha=ctx.scale)
        return grad_q, grad_k, grad_v, None, None, None, None


def dropout_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float,
                      padding_mask: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention with dropout ``p`` on the attention weights.

    Args:
        q, k, v: [batch, heads, frames, head_dim]; bf16 / fp16 ones run in float32 (SDPA's math path upcasts them
            on CPU too) and the result comes back in their dtype.
        p: dropout probability of the attention weights, in [0, 1).
        padding_mask: [batch, frames] bool, True = padding key (never attended), or None.
        noise: [batch * heads, frames, frames] dropout noise of the weights, ``mask / (1 - p)`` in q's
            dtype, float32 for bf16 / fp16 q (None: a fresh :func:`dropout_noise`).

    Returns:
        [batch, heads, frames, head_dim], ``dropout(softmax(q k^T / sqrt(head_dim))) v``: the maths of
        ``F.scaled_dot_product_attention(q, k, v, attn_mask=~padding_mask, dropout_p=p)``.
    """
    dtype = q.dtype
    if dtype in (torch.bfloat16, torch.float16):  # as SDPA's math path on CPU: reduced precision runs in float32
        q, k, v = q.float(), k.float(), v.float()
    batch, heads, n, d = q.shape
    if noise is None:
        noise = dropout_noise((batch * heads, n, n), p, q.dtype, q.device)
    elif noise.shape != (batch * heads, n, n) or noise.dtype != q.dtype:
        raise ValueError(f"noise must be {q.dtype} [{batch * heads}, {n}, {n}], got {noise.dtype} {tuple(noise.shape)}")
    flat = [t.reshape(batch * heads, n, d) for t in (q, k, v)]
    out = _DropoutAttention.apply(*flat, padding_mask, noise, heads, d ** -0.5)
    return out.view(batch, heads, n, d).to(dtype)


