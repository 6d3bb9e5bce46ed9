"""The Winograd F(3,2) convolution (speechssl.modules.winograd_conv) equals F.conv1d in values and gradients,
and the conv feature encoder takes it exactly where speechssl.accel's ``winograd_conv`` rule says so."""

import dataclasses

import pytest
import torch
from helpers import check_encoder_against
from torch.nn import functional as F

import speechssl.accel as accel
import speechssl.modules.conv as conv
import speechssl.modules.winograd_conv as winograd_conv
from speechssl.modules.conv import ConvFeatureEncoder
from speechssl.modules.tap_conv import tap_conv1d
from speechssl.modules.winograd_conv import winograd_conv1d

BASE_SHAPE = [(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2


def _check(x, w, b, atol=1e-5):
    got = winograd_conv1d(x, w, b, 2)
    ref = F.conv1d(x.transpose(1, 2), w, b, stride=2).transpose(1, 2)
    torch.testing.assert_close(got, ref, atol=atol, rtol=1e-5)
    g = torch.randn_like(ref)
    params = [p for p in (x, w, b) if p is not None and p.requires_grad]
    for a, r in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, r, atol=10 * atol * max(1.0, float(r.abs().max())), rtol=1e-4)
    with torch.inference_mode():  # no graph: the plain forward, and its GELU applied block by block
        torch.testing.assert_close(winograd_conv1d(x, w, b, 2), ref.detach(), atol=atol, rtol=1e-5)
        torch.testing.assert_close(winograd_conv1d(x, w, b, 2, "gelu"), F.gelu(ref.detach()), atol=atol, rtol=1e-5)
    got = winograd_conv1d(x, w, b, 2, "gelu")  # with a graph: F.gelu after the conv
    (a,) = torch.autograd.grad(got, [params[0]], g)
    (r,) = torch.autograd.grad(F.gelu(F.conv1d(x.transpose(1, 2), w, b, stride=2).transpose(1, 2)), [params[0]], g)
    torch.testing.assert_close(a, r, atol=10 * atol * max(1.0, float(r.abs().max())), rtol=1e-4)


# frames_out = (T - 3) // 2 + 1: 1 (the shortest input), 2, 3, 4, 5, 6, 7, 20, 21, 29
@pytest.mark.parametrize("frames", [3, 4, 5, 7, 9, 11, 13, 15, 41, 43, 60])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("block", [1, 2, 1024])
def test_winograd_conv_equals_conv1d_values_and_gradients(frames, bias, block, monkeypatch):
    monkeypatch.setattr(winograd_conv, "TIME_BLOCK", block)  # 1 and 2: several blocks per utterance
    torch.manual_seed(0)
    x = torch.randn(3, frames, 12, requires_grad=True)  # channels-last, batch 3
    w = torch.randn(7, 12, 3, requires_grad=True)
    b = torch.randn(7, requires_grad=True) if bias else None
    _check(x, w, b)


def test_winograd_conv_on_a_base_sized_layer_equals_the_tap_conv():
    torch.manual_seed(0)
    x = torch.randn(2, 1001, 64, requires_grad=True)  # frames_out 500: 166 groups of 3 and a tail of 2
    w = (torch.randn(64, 64, 3) * 0.1).requires_grad_()
    got, ref = winograd_conv1d(x, w), tap_conv1d(x, w, None, 2)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(got, [x, w], g), torch.autograd.grad(ref, [x, w], g)):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)


def test_winograd_conv_float64_is_exact_to_its_rounding():
    torch.manual_seed(0)
    x = torch.randn(2, 37, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    _check(x, w, b, atol=1e-12)


def test_winograd_conv_only_the_weight_or_only_the_input_needs_a_gradient():
    torch.manual_seed(0)
    x, w = torch.randn(2, 19, 4), torch.randn(3, 4, 3, requires_grad=True)
    (gw,) = torch.autograd.grad(winograd_conv1d(x, w).square().sum(), [w])
    (ref,) = torch.autograd.grad(F.conv1d(x.transpose(1, 2), w, stride=2).square().sum(), [w])
    torch.testing.assert_close(gw, ref, atol=1e-4, rtol=1e-4)
    x.requires_grad_()
    (gx,) = torch.autograd.grad(winograd_conv1d(x, w.detach()).square().sum(), [x])
    (ref,) = torch.autograd.grad(F.conv1d(x.transpose(1, 2), w.detach(), stride=2).square().sum(), [x])
    torch.testing.assert_close(gx, ref, atol=1e-4, rtol=1e-4)


def test_winograd_conv_shape_errors():
    w = torch.randn(3, 4, 3)
    with pytest.raises(ValueError, match=r"input \(2, 2, 4\).*does not fit weight \(3, 4, 3\)"):
        winograd_conv1d(torch.randn(2, 2, 4), w)
    with pytest.raises(ValueError, match="does not fit"):
        winograd_conv1d(torch.randn(2, 9, 5), w)
    with pytest.raises(ValueError, match=r"does not fit weight \(3, 4, 2\)"):
        winograd_conv1d(torch.randn(2, 9, 4), torch.randn(3, 4, 2))
    with pytest.raises(ValueError, match="stride 2 only, got 1"):
        winograd_conv1d(torch.randn(2, 9, 4), w, None, 1)
    with pytest.raises(ValueError, match="activation must be None or 'gelu', got 'relu'"):
        winograd_conv1d(torch.randn(2, 9, 4), w, None, 2, "relu")


@pytest.fixture
def winograd_rule(monkeypatch):
    """A decision with the AVX2 per-shape MKL rule, oneDNN on and the Winograd rule at 64 x 64 x 3 elements."""
    if not accel.decision().onednn_available:
        pytest.skip("oneDNN is not available here: no per-shape rule")
    decided = dataclasses.replace(accel.decision(), onednn_linear=True, mkl_min_weight=64 * 64 * 2,
                                  tap_conv_min_weight=64 * 64 * 2, winograd_min_weight=64 * 64 * 3)
    monkeypatch.setattr(accel, "decision", lambda: decided)
    return decided


def _count(monkeypatch):
    calls = {"tap": 0, "winograd": 0}

    def wrap(name, fn):
        def counted(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return counted

    monkeypatch.setattr(conv, "tap_conv1d", wrap("tap", tap_conv1d))
    monkeypatch.setattr(conv, "winograd_conv1d", wrap("winograd", winograd_conv1d))
    return calls


@pytest.mark.parametrize("norm", ["group_norm", "layer_norm"])
def test_encoder_training_takes_winograd_where_the_rule_says_and_matches_the_reference(winograd_rule, norm,
                                                                                       monkeypatch):
    torch.manual_seed(0)
    enc = ConvFeatureEncoder(1, BASE_SHAPE, norm=norm)
    calls = _count(monkeypatch)
    x = torch.randn(2, 1, 4000)
    lengths = torch.tensor([4000, 3100])
    # every 64-channel layer runs per tap; the kernel-3, stride-2 ones (64 x 64 x 3) as Winograd
    assert enc._tap_layers(x) == [False] + [True] * 6
    out, out_len = enc(x, lengths)
    assert calls == {"tap": 2, "winograd": 4}
    loss = sum(out[i, :n].square().mean() for i, n in enumerate(out_len.tolist()))
    grads = torch.autograd.grad(loss, list(enc.parameters()))
    check_encoder_against(enc, x, lengths, out, out_len, grads, accel.use(winograd=False))  # per tap, no Winograd
    assert calls == {"tap": 8, "winograd": 4}
    # forced kernels: no per-shape rule, no tap layers, no Winograd
    check_encoder_against(enc, x, lengths, out, out_len, grads, accel.use(onednn_linear=False))
    assert calls == {"tap": 8, "winograd": 4}


def test_encoder_inference_fast_path_with_winograd_matches_the_reference(winograd_rule, monkeypatch):
    torch.manual_seed(0)
    enc = ConvFeatureEncoder(1, BASE_SHAPE, norm="group_norm").eval()
    calls = _count(monkeypatch)
    lengths = torch.tensor([16000, 9000, 400])
    x = (torch.randn(3, 16000) * (torch.arange(16000)[None] < lengths[:, None])).unsqueeze(1)
    with torch.inference_mode():
        assert enc._fast_path_ok(x, lengths)
        got, got_len = enc(x, lengths)
        assert calls == {"tap": 2, "winograd": 4}
        with accel.use(onednn_linear=False):
            ref, _ = enc(x, lengths)
        assert calls == {"tap": 2, "winograd": 4}
    for i, n in enumerate(got_len.tolist()):
        torch.testing.assert_close(got[i, :n], ref[i, :n], atol=1e-4, rtol=1e-4)


def test_the_winograd_rule(monkeypatch):
    if not accel.decision().onednn_available:
        pytest.skip("oneDNN is not available here")
    for name in ("SPEECHSSL_ONEDNN", "SPEECHSSL_WINOGRAD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(accel, "cpu_identity", lambda: ("AuthenticAMD", "an AMD CPU"))
    # AVX2-only, AVX-512 on 256-bit units (family 25: Zen 4), AVX-512 of family 26 (Zen 5)
    for isa, family, rule in (("AVX2", 25, accel.MKL_MIN_WEIGHT), ("AVX512", 25, accel.MKL_MIN_WEIGHT),
                              ("AVX512", 26, None)):
        monkeypatch.setattr(accel, "_isa", lambda i=isa: i)
        monkeypatch.setattr(accel, "cpu_family", lambda f=family: f)
        decided = accel.decide()
        assert decided.winograd_min_weight == rule and "winograd_conv" in decided.as_dict()["reasons"], isa
        monkeypatch.setattr(accel, "decision", lambda d=decided: d)
        base, demo = 512 * 512 * 3, 256 * 256 * 3
        assert accel.winograd_conv(base) is (rule is not None) and not accel.winograd_conv(demo)
        with accel.use(winograd=True):
            assert accel.winograd_conv(demo)
        with accel.use(winograd=False):
            assert not accel.winograd_conv(base)
    monkeypatch.setattr(accel, "_isa", lambda: "AVX2")
    monkeypatch.setenv("SPEECHSSL_WINOGRAD", "0")
    assert accel.decide().winograd_min_weight is None
    monkeypatch.setenv("SPEECHSSL_WINOGRAD", "1")
    assert accel.decide().winograd_min_weight == 0


def test_the_demo_encoders_never_take_winograd(monkeypatch):
    """The demo's conv subsamplers (wav2vec2_tiny / data2vec2_demo: 80 Mel bins -> 192, kernel 3, stride 2;
    bestrq_demo's tried two-layer variant) and wav2vec2_hf_tiny's 128-channel encoder stay off the tap and
    Winograd paths under this machine's rules."""
    decided = accel.decide()
    monkeypatch.setattr(accel, "decision", lambda: decided)
    hf_tiny = [(128, 10, 5)] + [(128, 3, 2)] * 4 + [(128, 2, 2)] * 2
    for channels, spec in ((80, [(192, 3, 2)]), (80, [(192, 3, 2)] * 2), (1, hf_tiny)):
        enc = ConvFeatureEncoder(channels, spec, norm="layer_norm")
        x = torch.randn(1, channels, 2000)
        assert not any(enc._tap_layers(x))
        assert not any(accel.winograd_conv(layer.conv.weight.numel()) for layer in enc.layers)
