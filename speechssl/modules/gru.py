"""A one-layer GRU for CPU training: the same numbers as ``nn.GRU``, about twice as fast.

Why: APC's context network is a stack of 512-unit GRUs, and PyTorch's CPU GRU spends most of a
training step in its backward pass, which autograd records one time step at a time: per step two
small matmuls, one of them the ``[3H, H]`` weight gradient written and accumulated again at every
step (measured on this project's 2-core AMD EPYC, batch 4 x 400 frames x 512 units: forward 76 ms,
backward 200 ms per layer).

How (:class:`_GRULayer`, a custom autograd Function over the batch-first padded input):

* forward: ``nn.GRU``'s own kernel (its C++ loop; outputs only, no autograd graph);
* backward: the gates are recomputed for all frames at once from the saved outputs (two large
  matmuls), the per-frame factors of the recurrence are precomputed, and the only sequential work
  left is ``dh_{t-1} = dh_t * z_t + (dh_t * K_t) W_hh`` (one small matmul a frame). The weight
  and input gradients are then three large matmuls over all frames.

PyTorch's GRU equations (``torch.nn.GRU``): ``r = σ(W_ir x + b_ir + W_hr h + b_hr)``,
``z = σ(W_iz x + b_iz + W_hz h + b_hz)``, ``n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))``,
``h' = (1 - z) ⊙ n + z ⊙ h``.

:class:`GRU` is an ``nn.GRU`` (same parameters, state-dict keys, init and ``isinstance``) that
takes this path for one-layer, unidirectional, batch-first fp32 CPU input given as a padded
tensor (a unidirectional RNN reads every valid frame before any padding, so the valid outputs are
those of a packed run), and ``nn.GRU``'s own code for everything else (packed sequences, CUDA,
bf16, autocast) and for forward-only runs (no gradient: the fast path's gain is its backward).
Whether the path is used is :func:`speechssl.accel.fast_gru` (``SPEECHSSL_FAST_GRU=0`` in the
environment turns it off; ``accel.use(fast_gru=False)`` forces ``nn.GRU`` in a block of code).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import speechssl.accel as accel


def _kernel(weight_numel: int):
    """``f(a [M, K], w [N, K], b [N] | None) -> a w^T + b`` for weights of ``weight_numel`` elements:
    oneDNN where :func:`speechssl.accel.onednn_linear` takes that shape, else ``F.linear``.

    Asked again by the backward, which may run outside an ``accel.use`` block that held during the
    forward: harmless, both kernels give the same numbers.
    """
    if accel.onednn_linear(weight_numel):
        op = torch.ops.mkldnn._linear_pointwise
        return lambda a, w, b: op(a, w, b, "none", [], "")
    return F.linear


def _mm(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``a w^T + b`` by the kernel :func:`_kernel` picks for ``w``'s size (one-off matmuls)."""
    return _kernel(w.numel())(a, w, b)


def _run(x: torch.Tensor, h0: torch.Tensor, w_ih, w_hh, b_ih, b_hh) -> torch.Tensor:
    """The recurrence (no autograd) by ``nn.GRU``'s own kernel: x [B, T, I], h0 [B, H] -> outputs
    [B, T, H]. Its C++ loop beats a Python loop over oneDNN calls by 1.3-1.5x here."""
    out, _ = torch._VF.gru(x, h0[None], (w_ih, w_hh, b_ih, b_hh), True, 1, 0.0, False, False, True)
    return out


class _GRULayer(torch.autograd.Function):
    """Outputs [B, T, H] of one GRU layer over x [B, T, I] from h0 [B, H]; backward as in the module doc."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh):  # noqa: D102
        out = _run(x, h0, w_ih, w_hh, b_ih, b_hh)
        ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, out)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, h0, w_ih, w_hh, b_ih, b_hh, out = ctx.saved_tensors
        out = out.transpose(0, 1)  # time-major [T, B, H]
        mm = _mm
        frames, batch, hidden = out.shape
        rows = frames * batch
        xt = x.transpose(0, 1).reshape(rows, -1)  # time-major rows, [T*B, I]
        h_prev = torch.cat([h0[None], out[:-1]]).view(rows, hidden)
        # the gates of every frame, recomputed at once
        gx = mm(xt, w_ih, b_ih).view(frames, batch, 3, hidden)
        gh = mm(h_prev, w_hh, b_hh).view(frames, batch, 3, hidden)
        rz = torch.sigmoid(gx[:, :, :2] + gh[:, :, :2])
        r, z = rz[:, :, 0], rz[:, :, 1]
        gh_n = gh[:, :, 2]
        n = torch.tanh(gx[:, :, 2] + r * gh_n)
        # per unit of dh: d(pre-tanh n) = a, d(pre-sigmoid z) = bz, d(pre-sigmoid r) = c, d(W_hn h + b_hn) = d
        a = (1 - z) * (1 - n * n)
        bz = (h_prev.view(frames, batch, hidden) - n) * z * (1 - z)
        c = a * gh_n * r * (1 - r)
        d = a * r
        k = torch.stack([c, bz, d], 2)  # [T, B, 3, H]: dgh = dh * k
        del gx, gh, rz, n
        # the sequential part: dh_{t-1} = g_{t-1} + dh_t z_t + (dh_t k_t) W_hh
        g = grad.transpose(0, 1).contiguous()
        dh_all = torch.empty_like(g)
        w_hh_t = w_hh.t().contiguous()  # [H, 3H]: (dh k) W_hh as a linear with this weight
        carry = torch.zeros_like(g[0])
        step_mm = _kernel(w_hh_t.numel())  # the same shape every frame: decided once
        for t in range(frames - 1, -1, -1):
            dh = torch.add(g[t], carry, out=dh_all[t])
            carry = step_mm((dh[:, None, :] * k[t]).view(batch, 3 * hidden), w_hh_t, None)
            carry.addcmul_(dh, z[t])
        # everything else over all frames at once
        dgh = (dh_all[:, :, None, :] * k).view(rows, 3 * hidden)
        k[:, :, 2] = a  # the input side of n is a, where the hidden side is a r
        dgx = k.mul_(dh_all[:, :, None, :]).view(rows, 3 * hidden)
        dx = dw_ih = dw_hh = db_ih = db_hh = None
        if ctx.needs_input_grad[0]:
            dx = mm(dgx, w_ih.t(), None).view(frames, batch, -1).transpose(0, 1)
        if ctx.needs_input_grad[2]:
            dw_ih = mm(dgx.t(), xt.t(), None)
        if ctx.needs_input_grad[3]:
            dw_hh = mm(dgh.t(), h_prev.t(), None)
        if ctx.needs_input_grad[4]:
            db_ih = dgx.sum(0)
        if ctx.needs_input_grad[5]:
            db_hh = dgh.sum(0)
        return dx, (carry if ctx.needs_input_grad[1] else None), dw_ih, dw_hh, db_ih, db_hh


def gru_layer(x: torch.Tensor, h0: torch.Tensor | None, w_ih: torch.Tensor, w_hh: torch.Tensor,
              b_ih: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """One GRU layer over a batch-first padded input: x [B, T, I] -> outputs [B, T, H]."""
    if h0 is None:
        h0 = x.new_zeros(x.shape[0], w_hh.shape[1])
    if x.shape[1] == 0:
        return x.new_zeros(x.shape[0], 0, w_hh.shape[1])
    params = (x, h0, w_ih, w_hh, b_ih, b_hh)
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return _GRULayer.apply(*params)
    with torch.no_grad():
        return _run(*params)


class GRU(nn.GRU):
    """``nn.GRU`` with the fast CPU path of :func:`gru_layer` where it applies (see the module doc)."""

    def takes_fast_path(self, x) -> bool:
        """Whether ``forward(x)`` runs the fast path (see the module doc); else ``nn.GRU``'s code.

        Only when a gradient will be taken: the fast path's gain is its backward. Forward-only
        (extraction, validation, the live probe) ``nn.GRU``'s C++ loop is faster: 1.2-1.8x at APC's
        3 x 512 shapes on the 2-core AMD EPYC, with oneDNN or MKL matmuls (2026-11-27, interleaved)."""
        return (
            accel.fast_gru()
            and torch.is_grad_enabled()
            and (self.weight_hh_l0.requires_grad or (isinstance(x, torch.Tensor) and x.requires_grad))
            and isinstance(x, torch.Tensor)
            and x.dim() == 3
            and self.batch_first
            and self.num_layers == 1
            and not self.bidirectional
            and self.bias
            and self.proj_size == 0
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight_hh_l0.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
        )

    def forward(self, input, hx=None):  # noqa: A002 - nn.GRU's signature
        if not self.takes_fast_path(input):
            return super().forward(input, hx)
        h0 = None if hx is None else hx[0]
        out = gru_layer(input, h0, self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0)
        last = out[:, -1] if out.shape[1] else (h0 if h0 is not None else out.new_zeros(out.shape[0], self.hidden_size))
        return out, last[None]
