"""The grouped conv whose gradients run as forward convs (speechssl.modules.grouped_conv) equals F.conv1d in
values and gradients, and the positional conv takes it exactly where speechssl.accel's ``conv_grad`` rule says."""

import dataclasses

import pytest
import torch
from torch.nn import functional as F

import speechssl.accel as accel
import speechssl.modules.transformer as transformer
from speechssl.modules.grouped_conv import grouped_conv1d
from speechssl.modules.transformer import PositionalConv, TransformerEncoder


@pytest.mark.parametrize("kernel,padding,groups", [(16, 8, 4), (9, 4, 3), (8, 0, 1), (5, 4, 5), (128, 64, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_grouped_conv_equals_conv1d_values_and_gradients(kernel, padding, groups, bias):
    gen = torch.Generator().manual_seed(kernel + groups)
    channels = 2 * groups * (3 if kernel < 128 else 1)
    frames = 37 if kernel < 128 else 150
    x = torch.randn(3, channels, frames, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(channels, channels // groups, kernel, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(channels, generator=gen, dtype=torch.float64, requires_grad=True) if bias else None
    ours = grouped_conv1d(x, w, b, padding, groups)
    ref = F.conv1d(x, w, b, padding=padding, groups=groups)
    assert torch.equal(ours, ref)  # the forward is F.conv1d itself
    g = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    inputs = [x, w] + ([b] if bias else [])
    for a, r in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10)
    # only the weight needs a gradient
    x32, w32 = x.detach().float(), w.detach().float().requires_grad_()
    (gw,) = torch.autograd.grad(grouped_conv1d(x32, w32, None, padding, groups), [w32], g.float())
    (rw,) = torch.autograd.grad(F.conv1d(x32, w32, None, padding=padding, groups=groups), [w32], g.float())
    torch.testing.assert_close(gw, rw, atol=1e-4 * float(rw.abs().max()), rtol=1e-4)
    with pytest.raises(ValueError, match="grouped_conv1d"):
        grouped_conv1d(x, w, b, kernel, groups)


@pytest.mark.parametrize("kernel,groups", [(128, 16), (9, 4)])
def test_positional_conv_takes_the_rule_and_matches_the_reference(kernel, groups, monkeypatch):
    torch.manual_seed(0)
    pos = PositionalConv(64, kernel, groups)
    calls = []
    monkeypatch.setattr(transformer, "grouped_conv1d", lambda *a: calls.append(1) or grouped_conv1d(*a))
    x = torch.randn(2, 140, 64, requires_grad=True)
    params = [x] + list(pos.parameters())  # x and weight norm's g, v and the bias
    with accel.use(conv_grad=True):
        out = pos(x)
        with torch.no_grad():
            pos(x)  # no gradient: the plain conv
    assert len(calls) == 1
    grads = torch.autograd.grad(out.square().sum(), params)
    with accel.use(conv_grad=False):
        ref = pos(x)
    assert len(calls) == 1 and torch.equal(out, ref)
    for a, r in zip(grads, torch.autograd.grad(ref.square().sum(), params)):
        torch.testing.assert_close(a, r, atol=1e-5 * float(r.abs().max()), rtol=1e-4)


def test_the_conv_grad_rule(monkeypatch):
    monkeypatch.delenv("SPEECHSSL_CONV_GRAD", raising=False)
    monkeypatch.setattr(accel.platform, "machine", lambda: "x86_64")
    base = 768 * 48 * 128  # wav2vec 2.0 / HuBERT Base's positional conv
    demo = TransformerEncoder(192, 1, 4, 384, pos_conv_kernel=64, pos_conv_groups=8).pos_conv.conv.weight.numel()
    monkeypatch.setattr(accel, "cpu_identity", lambda: ("AuthenticAMD", "an AMD CPU"))
    # AVX2-only, AVX-512 on 256-bit units (AMD family 25: Zen 4), AVX-512 of family 26 (Zen 5)
    for isa, family, rule in (("AVX2", 25, accel.MKL_MIN_WEIGHT), ("AVX512", 25, accel.MKL_MIN_WEIGHT),
                              ("AVX512", 26, None)):
        monkeypatch.setattr(accel, "_isa", lambda i=isa: i)
        monkeypatch.setattr(accel, "cpu_family", lambda f=family: f)
        decided = accel.decide()
        assert decided.conv_grad_min_weight == rule and "conv_grad" in decided.reasons, isa
        monkeypatch.setattr(accel, "decision", lambda d=decided: d)
        assert accel.conv_grad_as_conv(base) is (rule is not None)
        assert not accel.conv_grad_as_conv(demo)  # the demo's positional convs keep PyTorch's backward
        with accel.use(conv_grad=True):
            assert accel.conv_grad_as_conv(demo)
    monkeypatch.setattr(accel, "_isa", lambda: "AVX2")
    monkeypatch.setenv("SPEECHSSL_CONV_GRAD", "0")
    assert accel.decide().conv_grad_min_weight is None
    monkeypatch.setenv("SPEECHSSL_CONV_GRAD", "1")
    assert accel.decide().conv_grad_min_weight == 0
    monkeypatch.setattr(accel, "decision", lambda: dataclasses.replace(accel.decide(), conv_grad_min_weight=None))
    assert not accel.conv_grad_as_conv(base)
