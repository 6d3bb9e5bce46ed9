"""The per-tap MKL convolution (speechssl.modules.tap_conv) equals F.conv1d in values and gradients, and
the conv feature encoder takes it exactly where speechssl.accel's per-shape rule says MKL."""

import dataclasses

import pytest
import torch
from helpers import check_encoder_against
from torch.nn import functional as F

import speechssl.accel as accel
import speechssl.modules.tap_conv as tap_conv
from speechssl.modules.conv import ConvFeatureEncoder
from speechssl.modules.tap_conv import tap_conv1d

BASE_SHAPE = [(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2


@pytest.mark.parametrize("kernel,stride", [(3, 2), (2, 2), (5, 1), (4, 3), (1, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_tap_conv_equals_conv1d_values_and_gradients(kernel, stride, bias, monkeypatch):
    monkeypatch.setattr(tap_conv, "TIME_BLOCK", 5)  # several blocks per utterance
    torch.manual_seed(0)
    x = torch.randn(3, 41, 12, requires_grad=True)  # channels-last
    w = torch.randn(7, 12, kernel, requires_grad=True)
    b = torch.randn(7, requires_grad=True) if bias else None
    got = tap_conv1d(x, w, b, stride)
    ref = F.conv1d(x.transpose(1, 2), w, b, stride=stride).transpose(1, 2)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref)
    params = [x, w] + ([b] if bias else [])
    got_grads = torch.autograd.grad(got, params, g)
    ref_grads = torch.autograd.grad(ref, params, g)
    for a, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)
    with torch.inference_mode():  # no graph: the plain forward, and its GELU applied block by block
        torch.testing.assert_close(tap_conv1d(x, w, b, stride), ref.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tap_conv1d(x, w, b, stride, "gelu"), F.gelu(ref.detach()), atol=1e-5, rtol=1e-5)
    (a,) = torch.autograd.grad(tap_conv1d(x, w, b, stride, "gelu"), [x], g)  # with a graph: F.gelu after the conv
    (r,) = torch.autograd.grad(F.gelu(F.conv1d(x.transpose(1, 2), w, b, stride=stride).transpose(1, 2)), [x], g)
    torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)


def test_tap_conv_only_the_weight_needs_a_gradient_and_shape_errors():
    torch.manual_seed(0)
    x, w = torch.randn(2, 9, 4), torch.randn(3, 4, 3, requires_grad=True)
    (gw,) = torch.autograd.grad(tap_conv1d(x, w, None, 2).sum(), [w])
    (ref,) = torch.autograd.grad(F.conv1d(x.transpose(1, 2), w, stride=2).sum(), [w])
    torch.testing.assert_close(gw, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        tap_conv1d(torch.randn(2, 2, 4), w)
    with pytest.raises(ValueError, match="does not fit"):
        tap_conv1d(torch.randn(2, 9, 5), w)
    with pytest.raises(ValueError, match="tap_conv1d: activation must be None or 'gelu', got 'relu'"):
        tap_conv1d(torch.randn(2, 9, 4), w, None, 2, "relu")


@pytest.fixture
def mkl_rule(monkeypatch):
    """A decision with the AVX2 per-shape rule and oneDNN on, whatever this machine is."""
    if not accel.decision().onednn_available:
        pytest.skip("oneDNN is not available here: no per-shape rule")
    decided = dataclasses.replace(accel.decision(), onednn_linear=True, mkl_min_weight=64 * 64 * 3,
                                  tap_conv_min_weight=64 * 64 * 3)
    monkeypatch.setattr(accel, "decision", lambda: decided)
    return decided


@pytest.mark.parametrize("norm", ["group_norm", "layer_norm"])
def test_encoder_training_takes_the_tap_layers_and_matches_the_reference(mkl_rule, norm, monkeypatch):
    torch.manual_seed(0)
    enc = ConvFeatureEncoder(1, BASE_SHAPE, norm=norm)
    calls = []
    real = tap_conv.tap_conv1d
    import speechssl.modules.conv as conv

    monkeypatch.setattr(conv, "tap_conv1d", lambda *a: calls.append(a[1].shape) or real(*a))
    x = torch.randn(2, 1, 4000)
    lengths = torch.tensor([4000, 3100])
    # 64 x 64 x 3 layers reach the rule's size, 64 x 64 x 2 ones and the 1-channel first layer do not
    assert enc._tap_layers(x) == [False, True, True, True, True, False, False]
    out, out_len = enc(x, lengths)
    assert len(calls) == 4
    loss = sum(out[i, :n].square().mean() for i, n in enumerate(out_len.tolist()))
    grads = torch.autograd.grad(loss, list(enc.parameters()))
    with accel.use(onednn_linear=False):  # forced kernels: no per-shape rule, the reference conv path
        assert enc._tap_layers(x) == [False] * 7
    check_encoder_against(enc, x, lengths, out, out_len, grads, accel.use(onednn_linear=False))
    assert len(calls) == 4


def test_encoder_inference_fast_path_with_tap_layers_matches_the_reference(mkl_rule):
    torch.manual_seed(0)
    enc = ConvFeatureEncoder(1, BASE_SHAPE, norm="group_norm").eval()
    lengths = torch.tensor([16000, 9000, 400])
    x = (torch.randn(3, 16000) * (torch.arange(16000)[None] < lengths[:, None])).unsqueeze(1)
    with torch.inference_mode():
        assert enc._fast_path_ok(x, lengths)
        got, got_len = enc(x, lengths)
        with accel.use(onednn_linear=False):
            ref, _ = enc(x, lengths)
    for i, n in enumerate(got_len.tolist()):
        torch.testing.assert_close(got[i, :n], ref[i, :n], atol=1e-4, rtol=1e-4)


def test_the_per_shape_rule(monkeypatch):
    if not accel.decision().onednn_available:
        pytest.skip("oneDNN is not available here")
    monkeypatch.delenv("SPEECHSSL_ONEDNN", raising=False)
    monkeypatch.setattr(accel, "cpu_identity", lambda: ("AuthenticAMD", "an AMD CPU"))
    # (ISA, CPU family, per-shape MKL rule for linears, per-tap conv layers): AVX2-only; AVX-512 on 256-bit
    # units (family 25, Zen 4): linears keep oneDNN, the conv encoder's large layers run per tap; AVX-512 of
    # another family (Zen 5): neither
    for isa, family, rule, taps in (("AVX2", 25, accel.MKL_MIN_WEIGHT, True), ("AVX512", 25, None, True),
                                    ("AVX512", 26, None, False)):
        monkeypatch.setattr(accel, "_isa", lambda i=isa: i)
        monkeypatch.setattr(accel, "cpu_family", lambda f=family: f)
        decided = accel.decide()
        assert decided.onednn_linear and decided.mkl_min_weight == rule, isa
        assert (decided.tap_conv_min_weight == accel.MKL_MIN_WEIGHT) is taps and decided.cpu_family == family
        monkeypatch.setattr(accel, "decision", lambda d=decided: d)
        big, small = 768 * 768, 512 * 1024  # Base's smallest transformer weight; the demo's largest
        base_conv, demo_conv = 512 * 512 * 3, 256 * 256 * 3
        assert accel.onednn_linear() and accel.onednn_linear(small)
        assert accel.onednn_linear(big) is (rule is None) and accel.mkl_large(big) is (rule is not None)
        assert accel.tap_conv(base_conv) is taps and not accel.tap_conv(demo_conv)
        with accel.use(onednn_linear=True):  # a forced kernel holds for every shape
            assert accel.onednn_linear(big) and not accel.mkl_large(big) and not accel.tap_conv(base_conv)
    monkeypatch.setattr(accel, "cpu_identity", lambda: ("GenuineIntel", "an Intel CPU"))
    monkeypatch.setattr(accel, "cpu_family", lambda: 6)  # Intel: MKL for linears, F.conv1d for the encoder
    assert accel.decide().tap_conv_min_weight is None
    monkeypatch.setattr(accel, "cpu_identity", lambda: ("AuthenticAMD", "an AMD CPU"))
    monkeypatch.setattr(accel, "_isa", lambda: "AVX2")
    monkeypatch.setenv("SPEECHSSL_ONEDNN", "1")  # oneDNN for every shape
    assert accel.decide().onednn_linear and accel.decide().mkl_min_weight is None
    monkeypatch.setenv("SPEECHSSL_ONEDNN", "0")
    assert not accel.decide().onednn_linear


def test_block_matmul_runs_a_narrow_window_in_one_call(monkeypatch):
    """The waveform layer's windows (10 samples -> 512 channels) go to one matmul, wide ones in blocks."""
    import speechssl.modules.conv as conv

    calls = []
    real = conv.onednn.linear
    monkeypatch.setattr(conv.onednn, "linear", lambda x, *a: calls.append(x.shape[1]) or real(x, *a))
    frames = conv.TIME_BLOCK + 700
    gen = torch.Generator().manual_seed(0)
    for width, out_dim, expected in ((10, 32, [frames]), (48, 16, [conv.TIME_BLOCK, 700])):
        calls.clear()
        win = torch.randn(1, frames, width, generator=gen)
        weight, bias = torch.randn(out_dim, width, generator=gen), torch.randn(out_dim, generator=gen)
        with torch.inference_mode():
            got = conv._block_matmul(win, weight, bias, "gelu")
        assert calls == expected
        torch.testing.assert_close(got, F.gelu(F.linear(win, weight, bias)), atol=1e-5, rtol=1e-5)
