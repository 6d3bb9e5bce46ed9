"""A kernel-3, stride-2 1-D convolution as polyphase Winograd F(3,2), channels-last: 7 MKL matmuls per 3
output frames instead of the 9 of :func:`speechssl.modules.tap_conv.tap_conv1d`.

The conv feature encoder's four 512 -> 512 layers with kernel 3, stride 2 (wav2vec 2.0 / HuBERT Base and
Large) where :mod:`speechssl.accel`'s ``winograd_conv`` rule says so. With ``W_j = weight[:, :, j]``
([out, in]) ``y[t] = W0 x[2t] + W1 x[2t+1] + W2 x[2t+2]``. The even taps are a 2-tap filter (``A = W0``,
``B = W2``) on the even phase; three outputs ``t = 3q, 3q+1, 3q+2`` read ``u_i = x[6q + 2i]`` (i = 0..3)
and, with ``Hp = (A + B) / 2``, ``Hm = (A - B) / 2`` (once per call)::

    v0 = u0 - u2;  v1 = u1 + u2;  v2 = u2 - u1;  v3 = u3 - u1
    M0 = v0 A^T;   M1 = v1 Hp^T;  M2 = v2 Hm^T;  M3 = v3 B^T
    y[3q] = M0 + M1 + M2 + W1 x[6q+1];  y[3q+1] = M1 - M2 + W1 x[6q+3];  y[3q+2] = M1 + M2 + M3 + W1 x[6q+5]

(Winograd 1980; Lavin and Gray 2016 for convolution layers). The odd tap stays one matmul per output (one
call over the block's ``3n`` odd rows, a strided view). The ``u_i`` and odd rows are strided views of the
channels-last input [B, T, C] (row stride ``6C`` / ``2C``), the outputs are written in blocks of
:data:`TIME_BLOCK` groups of three frames; frames past the last full group (``frames_out % 3``) run per
tap. The backward is the same transform transposed, 7 matmuls per group for the input gradient and 7 for
the weight gradient: ``gM0 = gy0``, ``gM1 = gy0 + gy1 + gy2``, ``gM2 = gy0 - gy1 + gy2``, ``gM3 = gy2``;
``gv_i = gM_i W_i`` scattered into the input gradient's rows (``x[6q+2] <- gv1 - gv2 - gv3``,
``x[6q+4] <- gv1 + gv2 - gv0``, ``x[6q] <- gv0 + gv3`` of the group before); ``dA = sum gM0^T v0 +
(dHp + dHm) / 2``, ``dB = sum gM3^T v3 + (dHp - dHm) / 2`` with ``dHp = sum gM1^T v1``,
``dHm = sum gM2^T v2``, ``dW1 = grad^T x[1::2]`` (one matmul per utterance), ``db = sum grad``. Only
the input and the weight are saved (the ``v_i`` are recomputed from ``x``, as cheap as reading them).

Outputs and gradients equal ``F.conv1d``'s to float rounding (tests/test_winograd_conv.py; the
transformed weights ``Hp``, ``Hm`` round once more: about 1e-6 relative on Base's layers).

Measured on this project's 2-core AMD EPYC (AVX2, no AVX-512), 2026-11-28, ratios of interleaved
medians in one process, load average noted (another helper shared the machine):

* Base's second layer (512 -> 512), vs ``tap_conv1d`` (block sizes 512 / 1024 / 2048 groups measured,
  :data:`TIME_BLOCK` the fastest): FILLED IN BELOW.
"""

from __future__ import annotations

import torch

TIME_BLOCK = 1024  # groups of three output frames per block


def _weights(weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """weight [out, in, 3] -> (A, Hp, Hm, B, W1), each contiguous [out, in]."""
    a, w1, b = (weight[:, :, j].contiguous() for j in range(3))
    return a, (a + b).mul_(0.5), (a - b).mul_(0.5), b, w1


def _even(x: torch.Tensor, first: int, n: int) -> list[torch.Tensor]:
    """``u_i = x[first + 6q + 2i]`` for q < n, i = 0..3: strided views [n, C] of ``x`` [T, C]."""
    return [x[first + 2 * i:first + 2 * i + 6 * (n - 1) + 1:6] for i in range(4)]


def _tail_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
                  start: int) -> None:
    """Output frames ``start ..`` of ``y`` [frames_out, out] per kernel tap (``x`` [T, C])."""
    n = y.shape[0] - start
    if n <= 0:
        return
    out = y[start:]
    for j in range(3):
        rows = x[2 * start + j:2 * start + j + 2 * (n - 1) + 1:2]
        if j == 0:
            if bias is not None:
                torch.addmm(bias, rows, weight[:, :, 0].t(), out=out)
            else:
                torch.mm(rows, weight[:, :, 0].t(), out=out)
        else:
            out.addmm_(rows, weight[:, :, j].t())


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [B, T, C] contiguous, weight [out, C, 3] -> y [B, frames_out, out] (stride 2)."""
    batch, frames, channels = x.shape
    out_channels = weight.shape[0]
    frames_out = (frames - 3) // 2 + 1
    groups = frames_out // 3
    a, hp, hm, b_, w1 = _weights(weight)
    y = x.new_empty(batch, frames_out, out_channels)
    block = min(TIME_BLOCK, max(groups, 1))
    v = x.new_empty(4, block, channels)
    m2 = x.new_empty(block, out_channels)
    for b in range(batch):
        xb, yb = x[b], y[b]
        for start in range(0, groups, TIME_BLOCK):
            n = min(TIME_BLOCK, groups - start)
            u0, u1, u2, u3 = _even(xb, 6 * start, n)
            v0, v1, v2, v3 = v[0, :n], v[1, :n], v[2, :n], v[3, :n]
            torch.sub(u0, u2, out=v0)
            torch.add(u1, u2, out=v1)
            torch.sub(u2, u1, out=v2)
            torch.sub(u3, u1, out=v3)
            out = yb[3 * start:3 * (start + n)]  # [3n, out] contiguous
            y0, y1, y2 = out[0::3], out[1::3], out[2::3]
            # M1 (with the bias) into y1, M2 aside; y0 = y2 = M1 + M2 and y1 = M1 - M2, then the other matmuls
            if bias is not None:
                torch.addmm(bias, v1, hp.t(), out=y1)
            else:
                torch.mm(v1, hp.t(), out=y1)
            torch.mm(v2, hm.t(), out=m2[:n])
            torch.add(y1, m2[:n], out=y0)
            y1.sub_(m2[:n])
            y2.copy_(y0)
            y0.addmm_(v0, a.t())
            y2.addmm_(v3, b_.t())
            out.addmm_(xb[6 * start + 1:6 * (start + n):2], w1.t())  # the odd tap, 3n rows
        _tail_forward(xb, weight, bias, yb, 3 * groups)
    return y


def _grad_input(grad: torch.Tensor, x_shape: torch.Size, weight: torch.Tensor) -> torch.Tensor:
    """dL/dx [B, T, C] for ``grad`` [B, frames_out, out] contiguous."""
    batch, frames, channels = x_shape
    frames_out = grad.shape[1]
    groups = frames_out // 3
    a, hp, hm, b_, w1 = _weights(weight)
    gx = grad.new_empty(batch, frames, channels)
    gx[:, 6 * groups:].zero_()  # the tail's rows and those no output reads; the tail adds into them
    block = min(TIME_BLOCK, max(groups, 1))
    buf = grad.new_empty(4, block, channels)
    gm = grad.new_empty(2, block, grad.shape[2])
    for b in range(batch):
        gb, gxb = grad[b], gx[b]
        carry = None  # gv3 of the previous group's last row: it lands on the next group's first row
        for start in range(0, groups, TIME_BLOCK):
            n = min(TIME_BLOCK, groups - start)
            g = gb[3 * start:3 * (start + n)]
            g0, g1, g2 = g[0::3], g[1::3], g[2::3]
            gm1, gm2 = gm[0, :n], gm[1, :n]
            torch.add(g0, g2, out=gm1)
            torch.sub(gm1, g1, out=gm2)
            gm1.add_(g1)
            r0, r2, r4, _ = _even(gxb, 6 * start, n)
            gv1, gv2, gv3 = buf[1, :n], buf[2, :n], buf[3, :n]
            torch.mm(g0, a, out=r0)  # gv0
            torch.mm(gm1, hp, out=gv1)
            torch.mm(gm2, hm, out=gv2)
            torch.mm(g2, b_, out=gv3)
            torch.sub(gv1, gv2, out=r2)
            r2.sub_(gv3)
            torch.add(gv1, gv2, out=r4)
            r4.sub_(r0)
            if carry is not None:
                r0[0].add_(carry)
            if n > 1:
                r0[1:].add_(gv3[:n - 1])
            carry = gv3[n - 1].clone()
            # the odd rows 6q+1, 6q+3, 6q+5: one matmul over the block's 3n output frames
            torch.mm(g, w1, out=gxb[6 * start + 1:6 * (start + n):2])
        if carry is not None:
            gxb[6 * groups].add_(carry)
        tail = frames_out - 3 * groups
        if tail:
            first = 6 * groups
            gt = gb[3 * groups:]
            for j in range(3):
                gxb[first + j:first + j + 2 * (tail - 1) + 1:2].addmm_(gt, weight[:, :, j])
    return gx


def _grad_weight(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dL/dweight [out, C, 3] for ``grad`` [B, frames_out, out] and ``x`` [B, T, C], both contiguous."""
    batch, _, channels = x.shape
    frames_out, out_channels = grad.shape[1], grad.shape[2]
    groups = frames_out // 3
    d = grad.new_zeros(5, out_channels, channels)  # dA, dHp, dHm, dB, dW1
    da, dhp, dhm, db_, dw1 = d
    block = min(TIME_BLOCK, max(groups, 1))
    v = x.new_empty(4, block, channels)
    gm = grad.new_empty(2, block, out_channels)
    for b in range(batch):
        gb, xb = grad[b], x[b]
        dw1.addmm_(gb.t(), xb[1:2 * frames_out:2])  # the odd tap over every output frame
        for start in range(0, groups, TIME_BLOCK):
            n = min(TIME_BLOCK, groups - start)
            g = gb[3 * start:3 * (start + n)]
            g0, g1, g2 = g[0::3], g[1::3], g[2::3]
            gm1, gm2 = gm[0, :n], gm[1, :n]
            torch.add(g0, g2, out=gm1)
            torch.sub(gm1, g1, out=gm2)
            gm1.add_(g1)
            u0, u1, u2, u3 = _even(xb, 6 * start, n)
            v0, v1, v2, v3 = v[0, :n], v[1, :n], v[2, :n], v[3, :n]
            torch.sub(u0, u2, out=v0)
            torch.add(u1, u2, out=v1)
            torch.sub(u2, u1, out=v2)
            torch.sub(u3, u1, out=v3)
            da.addmm_(g0.t(), v0)
            dhp.addmm_(gm1.t(), v1)
            dhm.addmm_(gm2.t(), v2)
            db_.addmm_(g2.t(), v3)
        tail = frames_out - 3 * groups
        if tail:
            first, gt = 6 * groups, gb[3 * groups:]
            da.addmm_(gt.t(), xb[first:first + 2 * (tail - 1) + 1:2])
            db_.addmm_(gt.t(), xb[first + 2:first + 2 + 2 * (tail - 1) + 1:2])
    da.add_(dhp, alpha=0.5).add_(dhm, alpha=0.5)
    db_.add_(dhp, alpha=0.5).sub_(dhm, alpha=0.5)
    return torch.stack([da, dw1, db_], 2)


class _WinogradConv1d(torch.autograd.Function):
    """y = conv1d(x, weight, bias, stride=2), kernel 3, channels-last; see the module docstring."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # noqa: D102
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _forward(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _grad_input(grad, x.shape, weight)
        if ctx.needs_input_grad[1]:
            gw = _grad_weight(grad, x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 1))
        return gx, gw, gb


def winograd_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    stride: int = 2) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, stride=2)`` (kernel 3, no padding, one group) on channels-last ``x``
    [B, T, C] as Winograd F(3,2) (see the module docstring).

    ``weight`` [out, C, 3], ``bias`` [out] or None -> [B, (T - 3) // 2 + 1, out] (channels-last).
    CPU float32; ``T >= 3`` and ``B >= 1``. Differentiable in ``x``, ``weight`` and ``bias``.
    """
    batch, frames, channels = x.shape
    if weight.dim() != 3 or weight.shape[1] != channels or weight.shape[2] != 3 or frames < 3 or batch < 1:
        raise ValueError(f"winograd_conv1d: input {tuple(x.shape)} (channels-last) does not fit weight "
                         f"{tuple(weight.shape)} (kernel 3)")
    if int(stride) != 2:
        raise ValueError(f"winograd_conv1d: stride 2 only, got {stride}")
    x = x.contiguous()
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
    if not needs_grad:
        return _forward(x, weight, bias)
    return _WinogradConv1d.apply(x, weight, bias)
