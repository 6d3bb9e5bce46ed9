"""A strided 1-D convolution as one MKL matmul per kernel tap, channels-last (no im2col copy).

The conv feature encoder's large layers (wav2vec 2.0 / HuBERT Base: 512 -> 512, kernel 3 or 2, stride
2) on CPUs where :mod:`speechssl.accel`'s per-shape rule sends large matmuls to MKL (AVX2 without
AVX-512). With ``W_j = weight[:, :, j]`` ([out, in]) and stride ``s``::

    y[b, t] = bias + sum_j W_j x[b, s t + j]

For utterance ``b`` and tap ``j`` the rows ``x[b, j], x[b, j + s], ...`` of the channels-last input
[B, T, C] are a strided view [frames_out, C] whose row stride ``s C`` is at least ``C``: a valid
BLAS operand, so each tap is one ``addmm`` reading the input in place. The forward runs in blocks of
:data:`TIME_BLOCK` output frames (the output block stays in cache across the taps); the backward is
``dx[b, j::s] += g[b] W_j`` (``addmm_`` into the strided view of ``dx``), ``dW_j = sum_b g[b]^T
x[b, j::s]``, ``db = sum g``; only the input is saved, as ``F.conv1d`` does.

Measured on this project's 2-core AMD EPYC (AVX2, no AVX-512), one thread, Base's second layer on
2 x 4 s of audio: forward 0.84 s vs 1.06 s for ``F.conv1d`` (oneDNN) and 1.13 s for im2col + one
matmul; forward + backward 2.77 s vs 4.23 s. Outputs and gradients equal ``F.conv1d``'s to float
rounding (the sums run in another order; tests/test_tap_conv.py).
"""

from __future__ import annotations

import torch

TIME_BLOCK = 2048  # output frames per block of the forward


def forward_taps(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None, stride: int,
                 gelu: bool = False) -> torch.Tensor:
    """The forward without a graph: x [B, T, C] (rows contiguous), taps [k, out, C] (``weight.permute(2, 0, 1)``)
    -> [B, frames_out, out]; ``gelu``: the exact GELU of that, in place on each output block after its last tap
    (while the block is in cache). Also the tail of :mod:`speechssl.modules.winograd_conv` (frames past its groups)."""
    batch, frames, _ = x.shape
    kernel, out_channels, _ = taps.shape
    frames_out = (frames - kernel) // stride + 1
    y = x.new_empty(batch, frames_out, out_channels)
    for b in range(batch):
        for start in range(0, frames_out, TIME_BLOCK):
            n = min(TIME_BLOCK, frames_out - start)
            out = y[b, start:start + n]
            first = stride * start
            for j in range(kernel):
                rows = x[b, first + j:first + j + stride * (n - 1) + 1:stride]  # [n, C], row stride s * C
                if j == 0 and bias is not None:
                    torch.addmm(bias, rows, taps[0].t(), out=out)
                elif j == 0:
                    torch.mm(rows, taps[0].t(), out=out)
                else:
                    out.addmm_(rows, taps[j].t())
            if gelu:
                torch.ops.aten.gelu_(out)
    return y


class _TapConv1d(torch.autograd.Function):
    """y = conv1d(x, weight, bias, stride) channels-last; see the module docstring."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride):  # noqa: D102
        taps = weight.permute(2, 0, 1).contiguous()  # [k, out, in]
        ctx.save_for_backward(x, taps)
        ctx.stride, ctx.has_bias = stride, bias is not None
        return forward_taps(x, taps, bias, stride)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, taps = ctx.saved_tensors
        stride, kernel = ctx.stride, taps.shape[0]
        grad = grad.contiguous()
        batch, frames_out, _ = grad.shape
        span = stride * (frames_out - 1) + 1
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            # with kernel >= stride, taps 0 .. stride-1 cover rows 0 .. stride * frames_out - 1 once each:
            # they write, the later taps add, and only the rows after them are zeroed first
            writes = stride if kernel >= stride else 0
            gx = torch.empty_like(x)
            gx[:, writes * frames_out:].zero_()
            for b in range(batch):
                for j in range(kernel):
                    rows = gx[b, j:j + span:stride]
                    if j < writes:
                        torch.mm(grad[b], taps[j], out=rows)
                    else:
                        rows.addmm_(grad[b], taps[j])
        if ctx.needs_input_grad[1]:
            gt = torch.empty_like(taps)
            for j in range(kernel):
                torch.mm(grad[0].t(), x[0, j:j + span:stride], out=gt[j])
                for b in range(1, batch):
                    gt[j].addmm_(grad[b].t(), x[b, j:j + span:stride])
            gw = gt.permute(1, 2, 0).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 1))
        return gx, gw, gb, None


def check_activation(kernel: str, activation: str | None) -> None:
    """The per-tap kernels' ``activation``: None or ``"gelu"`` (a ValueError naming ``kernel`` otherwise)."""
    if activation not in (None, "gelu"):
        raise ValueError(f"{kernel}: activation must be None or 'gelu', got {activation!r}")


def tap_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               stride: int = 1, activation: str | None = None) -> torch.Tensor:
    """``F.conv1d`` (no padding, no dilation, one group) on channels-last ``x`` [B, T, C], per kernel tap.

    ``weight`` [out, C, k], ``bias`` [out] or None -> [B, (T - k) // stride + 1, out] (channels-last).
    CPU float32; ``T >= k`` and ``B >= 1``. Differentiable in ``x``, ``weight`` and ``bias``.
    ``activation="gelu"`` returns ``F.gelu`` of that output; without a graph it is applied in place per output
    block (:func:`forward_taps`).
    """
    check_activation("tap_conv1d", activation)
    batch, frames, channels = x.shape
    kernel = weight.shape[-1]
    if weight.shape[1] != channels or frames < kernel or batch < 1:
        raise ValueError(f"tap_conv1d: input {tuple(x.shape)} (channels-last) does not fit weight {tuple(weight.shape)}")
    x = x.contiguous()
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
    if not needs_grad:
        return forward_taps(x, weight.permute(2, 0, 1).contiguous(), bias, int(stride), gelu=activation == "gelu")
    y = _TapConv1d.apply(x, weight, bias, int(stride))
    return torch.nn.functional.gelu(y) if activation == "gelu" else y
