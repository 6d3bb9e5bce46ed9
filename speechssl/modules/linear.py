"""Dense layers through oneDNN on x86 CPUs: same numbers as ``nn.Linear``, about 2x the speed.

Why: PyTorch's fp32 ``F.linear`` on CPU calls MKL's sgemm. On AMD CPUs MKL takes its AVX2 code
path even where the CPU has AVX-512, while oneDNN (also inside every PyTorch x86 build, and
already used for convolutions) takes the AVX-512 one. Measured on this project's 2-core AMD EPYC
machine (``tools/bench``): 190-210 GFLOP/s for MKL and 420-480 GFLOP/s for oneDNN on the
transformer shapes of wav2vec 2.0 Base (M=500 frames, 768x3072), the outputs equal to 1e-5.
On Intel CPUs MKL takes its AVX-512 path too, so the gain there should be
smaller (not measured: this project's machines are AMD).

:func:`linear` sends fp32 CPU matmuls to ``torch.ops.mkldnn._linear_pointwise`` (the operator
``torch.compile``'s CPU backend uses) and everything else (CUDA, bf16/fp16, autocast, other
architectures) to ``F.linear``. With autograd it runs forward and both backward matmuls through
oneDNN as well (:class:`_OneDNNLinear`): a wav2vec 2.0 Base training step went from 2.07 s to
1.62 s (its convolutions and attention are unchanged).

:class:`Linear` is an ``nn.Linear`` (same parameters, state-dict keys, init and ``isinstance``)
whose forward is :func:`linear`; ``activation="gelu"`` fuses the exact GELU into the matmul.

Whether the path is used is decided once per process by :mod:`speechssl.accel` (CPU, operator
availability, a forward and backward self-check; ``SPEECHSSL_ONEDNN=0`` in the environment turns it
off), and per weight size where ``accel`` says so (on AVX2-only CPUs weights of >= 768 x 768 take
``F.linear``: MKL was the faster kernel there); ``accel.use(onednn_linear=False)`` or
``linear(..., onednn=False)`` forces ``F.linear``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import speechssl.accel as accel


def _usable(x: torch.Tensor, weight: torch.Tensor, onednn: bool | None) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() >= 2
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()  # inductor lowers F.linear itself (see accel.onednn_linear)
        and (accel.onednn_linear(weight.numel()) if onednn is None else onednn and accel.decision().onednn_available)
    )


def _mm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: str = "none") -> torch.Tensor:
    """x [..., in] @ weight[out, in]^T + bias, then ``act`` (none | gelu), in oneDNN.

    Both operands are made contiguous: oneDNN ran a [47999, 10] x [10, 512] product 100x slower (4 s instead of
    40 ms, AVX-512 AMD EPYC, 2026-11-29) on a weight with row stride 20 (a per-utterance slice of the conv
    encoder's folded GroupNorm weights of a two-utterance batch)."""
    x, weight = x.contiguous(), weight.contiguous()  # no copy where they already are
    if act == "gelu":
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """y = act(x W^T + b) with the forward and both backward matmuls in oneDNN."""

    @staticmethod
    def forward(ctx, x, weight, bias, act):  # noqa: D102
        pre = _mm(x, weight, bias)
        ctx.act = act
        ctx.has_bias = bias is not None
        if act == "gelu":
            ctx.save_for_backward(x, weight, pre)
            return F.gelu(pre)
        ctx.save_for_backward(x, weight)
        return pre

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        if ctx.act == "gelu":
            x, weight, pre = ctx.saved_tensors
            grad = torch.ops.aten.gelu_backward(grad, pre, approximate="none")
        else:
            x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        g2 = grad.view(-1, grad.shape[-1])
        op = torch.ops.mkldnn._linear_pointwise
        gx = gw = gb = None
        # oneDNN reads the transposed operands through their strides (no copies; measured faster).
        if ctx.needs_input_grad[0]:
            gx = op(grad, weight.t(), None, "none", [], "")  # [..., out] @ W -> [..., in]
        if ctx.needs_input_grad[1]:
            # dW[out, in] = g^T [out, M] @ x [M, in]: a linear of g^T with x^T as the "weight".
            gw = op(g2.t(), x.reshape(-1, x.shape[-1]).t(), None, "none", [], "")
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           activation: str | None = None, onednn: bool | None = None) -> torch.Tensor:
    """``F.linear`` (then exact GELU if ``activation == "gelu"``), through oneDNN where that is faster.

    ``x`` [..., in], ``weight`` [out, in], ``bias`` [out] -> [..., out]. ``onednn``: None asks
    :func:`speechssl.accel.onednn_linear` (with the weight's size); False forces ``F.linear``; True takes oneDNN wherever the
    operands (fp32, CPU) and the process decision allow it.
    """
    if activation not in (None, "gelu"):
        raise ValueError(f"activation must be None or 'gelu', got {activation!r}")
    act = activation or "none"
    if _usable(x, weight, onednn):
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
        if not needs_grad:
            return _mm(x, weight, bias, act)
        return _OneDNNLinear.apply(x, weight, bias, act)
    y = F.linear(x, weight, bias)
    return F.gelu(y) if act == "gelu" else y


class Linear(nn.Linear):
    """``nn.Linear`` computed by :func:`linear`; ``activation="gelu"`` fuses an exact GELU."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str | None = None,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if activation not in (None, "gelu"):
            raise ValueError(f"activation must be None or 'gelu', got {activation!r}")
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.activation)

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        return extra + (f", activation={self.activation}" if self.activation else "")


class FrameMLP(nn.Module):
    """A per-frame nonlinear input block: ``Linear(in_dim, dim) -> LayerNorm -> GELU -> Linear(dim, dim)``.

    The input block of TERA / MAE with ``input_block: mlp`` (instead of one linear projection): mean-pooled
    over an utterance, a linear map of CMVN frames is a constant (the mean of normalised frames is 0),
    while the GELU's output keeps second-order statistics of the spectrum (its shape, what a voice sounds
    like), as the conv subsampler of the wav2vec 2.0 / HuBERT demo models does. x [..., in_dim] -> [..., dim].
    """

    def __init__(self, in_dim: int, dim: int, eps: float = 1.0e-5):
        super().__init__()
        self.dense = Linear(in_dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.output = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(F.gelu(self.norm(self.dense(x))))
