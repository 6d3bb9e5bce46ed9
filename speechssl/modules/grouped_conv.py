"""A stride-1 grouped 1-D convolution whose backward runs as two *forward* convolutions.

For the positional conv of wav2vec 2.0 / HuBERT Base (768 channels, 16 groups, kernel 128) PyTorch's
CPU ``convolution_backward`` (oneDNN) takes about twice the forward's time for the input gradient and
1.2-1.6x for the weight gradient, although each is a convolution of the same size. Both are written
here as ``F.conv1d`` calls, with ``P`` the padding, ``k`` the kernel and ``G`` the groups:

* input gradient: ``dx = conv1d(dy, W', padding=k - 1 - P, groups=G)`` with ``W'`` the weight flipped
  along the kernel and transposed within each group ([out, in/G, k] -> [in, out/G, k]);
* weight gradient: ``dW[o, c, j] = sum_b sum_t dy[b, o, t] x_pad[b, c, t + j]``: a grouped conv whose
  "batch" is the group's input channels, whose channels are the utterances and whose kernel is ``dy``
  (input [in/G, G B, T + 2P], weight [out, B, T_out], groups G -> [in/G, out, k]);
* bias gradient: ``dy.sum((0, 2))``.

The forward is ``F.conv1d`` itself (bit-identical); the gradients equal PyTorch's to float rounding
(tests/test_grouped_conv.py). Measured on this project's 2-core AMD EPYC (AVX2, no AVX-512), Base's
positional conv on 2 x 4 s (199 frames): input gradient 1.6x (one thread) / 1.4x (two threads) faster,
weight gradient 1.25x / 1.0x; on 749 frames 1.7x / 1.4x at one thread. Used where
:func:`speechssl.accel.conv_grad_as_conv` says so (per CPU and weight size).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


class _GroupedConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, padding, groups):  # noqa: D102
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.groups, ctx.has_bias = padding, groups, bias is not None
        return F.conv1d(x, weight, bias, padding=padding, groups=groups)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, weight = ctx.saved_tensors
        pad, groups = ctx.padding, ctx.groups
        batch, in_channels, frames = x.shape
        out_channels, in_per_group, kernel = weight.shape
        out_per_group = out_channels // groups
        grad = grad.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            flipped = (weight.view(groups, out_per_group, in_per_group, kernel).transpose(1, 2).flip(3)
                       .reshape(in_channels, out_per_group, kernel))
            gx = F.conv1d(grad, flipped, None, padding=kernel - 1 - pad, groups=groups)
        if ctx.needs_input_grad[1]:
            padded = F.pad(x, (pad, pad)) if pad else x
            frames_in = frames + 2 * pad
            inp = padded.reshape(batch, groups, in_per_group, frames_in).permute(2, 1, 0, 3)
            inp = inp.reshape(in_per_group, groups * batch, frames_in)
            ker = grad.view(batch, groups, out_per_group, -1).permute(1, 2, 0, 3).reshape(out_channels, batch, -1)
            gw = F.conv1d(inp, ker, None, groups=groups).permute(1, 0, 2).contiguous()  # [out, in/G, k]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2))
        return gx, gw, gb, None, None


def grouped_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding: int = 0,
                   groups: int = 1) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, padding=padding, groups=groups)`` (stride 1, no dilation) with the
    backward of the module docstring. x [B, C_in, T], weight [C_out, C_in / groups, k] -> [B, C_out, T + 2P - k + 1]."""
    if x.dim() != 3 or weight.dim() != 3 or not 0 <= padding <= weight.shape[-1] - 1:
        raise ValueError(f"grouped_conv1d: input {tuple(x.shape)}, weight {tuple(weight.shape)}, padding {padding}")
    return _GroupedConv1d.apply(x, weight, bias, int(padding), int(groups))
