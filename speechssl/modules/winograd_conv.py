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

(Winograd 1980; Lavin and Gray 2016 for convolution layers). The ``u_i`` and the odd rows are strided
views of the channels-last input [B, T, C] (row stride ``6C`` / ``2C``), read in place by the matmuls and
the transforms. Per block of at most :data:`TIME_BLOCK` groups of three output frames the input transform
is two elementwise passes (``(u0, u1) - (u2, u3)`` over pairs of strided rows gives ``v0`` and ``-v3``;
one ``addcmul`` gives ``v1`` and ``-v2``), the output transform one pass writing the whole contiguous
output block (``M1 + (-1, 1, -1) * (-M2)``, the bias inside ``M1``), then ``M0``, ``M3`` and the odd tap
(one matmul over the block's ``3n`` odd rows) accumulate into it. Frames past the last full group
(``frames_out % 3``) run per tap (:func:`speechssl.modules.tap_conv.forward_taps`).

The backward is the same transform transposed, 7 matmuls per group for the input gradient and 7 for the
weight gradient, in one loop that shares ``gM1 = gy0 + gy1 + gy2`` and ``gM2 = gy0 - gy1 + gy2``
(``gM0 = gy0``, ``gM3 = gy2``): ``gv_i = gM_i W_i`` land on the input gradient's rows ``6q+2`` (``gv1 - gv2
- gv3``), ``6q+4`` (``gv1 + gv2 - gv0``) and ``6q`` (``gv0`` plus ``gv3`` of the group before), the odd
tap's on rows ``6q+1, 6q+3, 6q+5`` (one matmul per block); ``dA = sum gM0^T v0 + (dHp + dHm) / 2``,
``dB = sum gM3^T v3 + (dHp - dHm) / 2`` with ``dHp = sum gM1^T v1``, ``dHm = sum gM2^T v2``,
``dW1 = grad^T x[1::2]`` (one matmul per utterance), ``db = sum grad``. Only the input and the weight are
saved, as for ``F.conv1d``: the ``v_i`` (2/3 of the input's size) are recomputed, two elementwise passes
per block.

Outputs and gradients equal ``F.conv1d``'s to float rounding (tests/test_winograd_conv.py; float64 to
1e-12). The transformed weights ``Hp``, ``Hm`` round once more: the HuBERT Base encoder's hidden states
moved by at most 7.6e-6 against the per-tap path, and the HuBERT Base loss check of
``tools/bench/peers_hubert.py`` stays at float tolerance (relative loss difference to torchaudio 3.8e-9,
gradients within 4.6e-6; 8.9e-8 and 4.8e-6 per tap).

Measured on this project's 2-core AMD EPYC (AVX2, no AVX-512), 2026-11-28 10:36-10:42 UTC, ratios of
interleaved repetitions in one process (the load average includes the measuring process; another helper
shared the machine before and after):

* Base's layer 1 (512 -> 512, kernel 3, stride 2) vs ``tap_conv1d``, load 1.1-1.3: forward on a 10 s clip
  (31,999 input frames, no graph) 0.171 s vs 0.202 s at two threads (1.18x; paired 1.16x), 0.298 s vs
  0.356 s at one (1.20x); forward + backward on 2 x 4 s (12,799 frames) 0.436 s vs 0.505 s at two threads
  (1.16x), 0.744 s vs 0.878 s at one (1.18x). The 9/7 = 1.29x of the matmuls is not reached: the transforms
  are memory-bound passes. Blocks of 1,024 / 2,048 / 4,096 groups: 1.19x / 1.23x / 1.11x on that forward
  at two threads (2,048 kept); forward + backward alike within noise.
* HuBERT Base, Winograd on vs off (``accel.use(winograd=False)``) alternating, two threads, load 0.2-1.9
  (10:37-10:56 UTC): training step (``tools/bench/peers_hubert.py``'s, 2 x 4 s) 3.46 s vs 3.56 s and
  3.26 s vs 3.36 s in two runs (1.03x both; torchaudio 4.23 / 3.98 s: 1.22x vs 1.19x / 1.18x); extraction
  of 4 + 10 + 15 s clips (``tools/bench/extraction.py`` ``compare_hubert``'s setup) 4.13 vs 4.36 s,
  4.29 vs 4.37 s (blocks of 4,096 groups) and 4.19 vs 4.22 s in three runs (1.06x, 1.02x, 1.01x: at most a
  few per cent, within the noise). One thread, load 2.0-2.5: step 5.88 s vs 6.04 s (1.03x).
* On a loaded machine (load 3-4, other jobs on both cores; blocks of 2,048 and 4,096 groups) two threads
  lost: layer forward + backward 0.73-0.92x, training step 0.91x. Each block's transforms add parallel regions between the matmuls, and a
  region waits for its slowest thread.
"""

from __future__ import annotations

import torch

from speechssl.modules.tap_conv import check_activation, forward_taps

TIME_BLOCK = 2048  # at most this many groups of three output frames per block (6,144 output frames)


def _weights(weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """weight [out, in, 3] -> (A, Hp, Hm, B, W1), each contiguous [out, in]."""
    a, w1, b = (weight[:, :, j].contiguous() for j in range(3))
    return a, (a + b).mul_(0.5), (a - b).mul_(0.5), b, w1


def _block_size(groups: int) -> int:
    """Groups per block: the fewest blocks of at most :data:`TIME_BLOCK` groups, of equal size (no short
    last block: 2,133 groups are two blocks of 1,067)."""
    blocks = max(1, -(-groups // TIME_BLOCK))
    return max(1, -(-groups // blocks))


def _rows(x: torch.Tensor, first: int, n: int, gap: int) -> torch.Tensor:
    """Rows ``first + 6q`` and ``first + gap + 6q`` (q < n) of row-contiguous ``x`` [T, C] as a view [2, n, C]."""
    channels = x.shape[1]
    return x.as_strided((2, n, channels), (gap * channels, 6 * channels, 1),
                        x.storage_offset() + first * channels)


def _transform_input(x: torch.Tensor, first: int, n: int, v03: torch.Tensor, v12: torch.Tensor,
                     plus_minus: torch.Tensor) -> None:
    """The input transform of groups ``first / 6 ..`` of ``x`` [T, C] in two passes:
    ``v03 = (u0 - u2, u1 - u3)`` (the second is ``-v3``), ``v12 = (u1 + u2, u1 - u2)`` (``v1``, ``-v2``)."""
    torch.sub(_rows(x, first, n, 2), _rows(x, first + 4, n, 2), out=v03)
    u1, u2 = x[first + 2:first + 2 + 6 * (n - 1) + 1:6], x[first + 4:first + 4 + 6 * (n - 1) + 1:6]
    torch.addcmul(u1[None], plus_minus, u2[None], out=v12)


def _transform_grad(g: torch.Tensor, n: int, s: torch.Tensor, gm: torch.Tensor, plus_minus: torch.Tensor) -> None:
    """``gm = (gM1, gM2) = (gy0 + gy1 + gy2, gy0 - gy1 + gy2)`` of ``g`` [3n, out] (rows 3q + r = gy_r[q])."""
    torch.add(g[0::3], g[2::3], out=s[:n])
    torch.addcmul(s[None, :n], plus_minus, g[1::3][None], out=gm)


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
    """x [B, T, C] contiguous, weight [out, C, 3] -> y [B, frames_out, out] (stride 2); ``gelu``: the exact GELU
    of y, in place on each output block right after its last matmul (no graph: the inference path)."""
    batch, frames, channels = x.shape
    out_channels = weight.shape[0]
    frames_out = (frames - 3) // 2 + 1
    groups = frames_out // 3
    a, hp, hm, b_, w1 = _weights(weight)
    taps = weight.permute(2, 0, 1).contiguous() if frames_out % 3 else None  # the tail, per tap
    neg_b = b_.neg_()  # M3 = v3 B^T = (-v3) (-B)^T
    y = x.new_empty(batch, frames_out, out_channels)
    block = _block_size(groups)
    v = x.new_empty(4, block, channels)  # -> v0, -v3, v1, -v2
    m = x.new_empty(2, block, out_channels)
    plus_minus = x.new_tensor([1.0, -1.0])[:, None, None]
    # y[3q + r] = M1 + sign_r (-M2) with sign = (-1, 1, -1): one pass writes the whole output block
    sign = x.new_tensor([-1.0, 1.0, -1.0])[None, :, None]
    for b in range(batch):
        xb, yb = x[b], y[b]
        for start in range(0, groups, block):
            n = min(block, groups - start)
            v03, v12 = v[0:2, :n], v[2:4, :n]
            _transform_input(xb, 6 * start, n, v03, v12, plus_minus)
            m1, m2 = m[0, :n], m[1, :n]
            if bias is not None:
                torch.addmm(bias, v12[0], hp.t(), out=m1)
            else:
                torch.mm(v12[0], hp.t(), out=m1)
            torch.mm(v12[1], hm.t(), out=m2)  # -M2
            out = yb[3 * start:3 * (start + n)]  # [3n, out] contiguous
            torch.addcmul(m1[:, None], m2[:, None], sign, out=out.view(n, 3, out_channels))
            out[0::3].addmm_(v03[0], a.t())
            out[2::3].addmm_(v03[1], neg_b.t())
            out.addmm_(xb[6 * start + 1:6 * (start + n):2], w1.t())  # the odd tap, 3n rows
            if gelu:
                torch.ops.aten.gelu_(out)
        if taps is not None:  # frames past the last full group
            yb[3 * groups:] = forward_taps(xb[None, 6 * groups:], taps, bias, 2, gelu)[0]
    return y


def _backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, need_input: bool,
              need_weight: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dL/dx [B, T, C] or None, dL/dweight [out, C, 3] or None) for ``grad`` [B, frames_out, out] and ``x``
    [B, T, C], both contiguous; one pass over the blocks shares the gradient transform ``gM1``, ``gM2``."""
    if not (need_input or need_weight):
        return None, None
    batch, frames, channels = x.shape
    frames_out, out_channels = grad.shape[1], grad.shape[2]
    groups = frames_out // 3
    a, hp, hm, b_, w1 = _weights(weight)
    block = _block_size(groups)
    s = grad.new_empty(block, out_channels)
    gm = grad.new_empty(2, block, out_channels)
    plus_minus = grad.new_tensor([1.0, -1.0])[:, None, None]
    gx = d = None
    if need_input:
        gx = grad.new_empty(batch, frames, channels)
        gx[:, 6 * groups:].zero_()  # the tail's rows and those no output reads; the tail adds into them
        gv = grad.new_empty(2, block, channels)  # gv1, gv2
        g30 = grad.new_empty(block, 2, channels)  # gv3, gv0
        minus_plus = -plus_minus
    if need_weight:
        d = grad.new_zeros(5, out_channels, channels)  # dA, dHp, dHm, dB, dW1
        v = x.new_empty(4, block, channels)
    for b in range(batch):
        gb, xb = grad[b], x[b]
        if d is not None:
            d[4].addmm_(gb.t(), xb[1:2 * frames_out:2])  # dW1: the odd tap over every output frame
        carry = None  # gv3 of the previous block's last group: it lands on this block's first row
        for start in range(0, groups, block):
            n = min(block, groups - start)
            first = 6 * start
            g = gb[3 * start:3 * (start + n)]
            _transform_grad(g, n, s, gm[:, :n], plus_minus)
            if gx is not None:
                gxb = gx[b]
                torch.mm(gm[0, :n], hp, out=gv[0, :n])
                torch.mm(gm[1, :n], hm, out=gv[1, :n])
                gv3, gv0 = g30[:n, 0], g30[:n, 1]
                torch.mm(g[2::3], b_, out=gv3)
                torch.mm(g[0::3], a, out=gv0)
                # rows 6q+2, 6q+4: (gv1 - gv2 - gv3, gv1 + gv2 - gv0)
                r24 = _rows(gxb, first + 2, n, 2)
                torch.addcmul(gv[0, None, :n], minus_plus, gv[1, None, :n], out=r24)
                r24.sub_(g30[:n].transpose(0, 1))
                # rows 6q: gv0 + gv3 of the group before
                r0 = gxb[first:first + 6 * (n - 1) + 1:6]
                torch.add(gv0[1:], gv3[:n - 1], out=r0[1:])
                if carry is None:
                    r0[0].copy_(gv0[0])
                else:
                    torch.add(gv0[0], carry, out=r0[0])
                carry = gv3[n - 1].clone()
                # the odd rows 6q+1, 6q+3, 6q+5: one matmul over the block's 3n output frames
                torch.mm(g, w1, out=gxb[first + 1:6 * (start + n):2])
            if d is not None:
                v03, v12 = v[0:2, :n], v[2:4, :n]  # v0, -v3, v1, -v2
                _transform_input(xb, first, n, v03, v12, plus_minus)
                d[0].addmm_(g[0::3].t(), v03[0])
                d[3].addmm_(g[2::3].t(), v03[1], alpha=-1)
                d[1].addmm_(gm[0, :n].t(), v12[0])
                d[2].addmm_(gm[1, :n].t(), v12[1], alpha=-1)
        tail = frames_out - 3 * groups
        first, gt = 6 * groups, gb[3 * groups:]
        if gx is not None:
            if carry is not None:
                gx[b, first].add_(carry)
            for j in range(3 if tail else 0):
                gx[b, first + j:first + j + 2 * (tail - 1) + 1:2].addmm_(gt, weight[:, :, j])
        if d is not None and tail:
            d[0].addmm_(gt.t(), xb[first:first + 2 * (tail - 1) + 1:2])
            d[3].addmm_(gt.t(), xb[first + 2:first + 2 + 2 * (tail - 1) + 1:2])
    gw = None
    if d is not None:
        da, dhp, dhm, db_, dw1 = d
        da.add_(dhp, alpha=0.5).add_(dhm, alpha=0.5)
        db_.add_(dhp, alpha=0.5).sub_(dhm, alpha=0.5)
        gw = torch.stack([da, dw1, db_], 2)
    return gx, gw


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
        gx, gw = _backward(grad, x, weight, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        gb = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 1))
        return gx, gw, gb


def winograd_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    stride: int = 2, activation: str | None = None) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, stride=2)`` (kernel 3, no padding, one group) on channels-last ``x``
    [B, T, C] as Winograd F(3,2) (see the module docstring).

    ``weight`` [out, C, 3], ``bias`` [out] or None -> [B, (T - 3) // 2 + 1, out] (channels-last).
    CPU float32; ``T >= 3`` and ``B >= 1``. Differentiable in ``x``, ``weight`` and ``bias``.
    ``activation="gelu"`` returns ``F.gelu`` of that output; without a graph it is applied in place to each
    output block while the block is still in cache (a 10 s clip's first 512 x 512 layer: 77 -> 73 ms, a 15 s
    clip's 215 -> 192 ms, two threads, AMD EPYC family 25) instead of in a pass over the whole output.
    """
    check_activation("winograd_conv1d", activation)
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
        return _forward(x, weight, bias, gelu=activation == "gelu")
    y = _WinogradConv1d.apply(x, weight, bias)
    return torch.nn.functional.gelu(y) if activation == "gelu" else y
