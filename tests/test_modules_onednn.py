"""The oneDNN paths (speechssl.modules.linear and the conv encoder's channels-last path) equal the
reference, and speechssl.accel decides, records and forces them."""

import platform

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import speechssl.accel as accel
from speechssl.modules.conv import ConvFeatureEncoder
from speechssl.modules.linear import Linear, linear
from speechssl.modules.transformer import TransformerEncoder

BASE_SHAPE = [(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2
X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.fixture
def reference_path():
    """Run the block with oneDNN forced off (a context variable: no module global changes)."""
    def run(fn):
        with accel.use(onednn_linear=False):
            return fn()
    return run


def test_onednn_is_used_on_x86_and_only_there():
    # On x86-64 PyTorch builds with AVX2 the operator exists; if this fails, the fast path silently fell back.
    fast_isa = accel.decision().isa in ("AVX2", "AVX512")
    available = X86 and torch.backends.mkldnn.is_available() and fast_isa
    assert accel.decision().onednn_available == available
    # chosen per vendor: Intel keeps MKL (its AVX-512 sgemm is the fastest there), others take oneDNN
    assert accel.onednn_linear() == (available and accel.decision().cpu_vendor != "GenuineIntel")


def test_environment_switch(monkeypatch):
    monkeypatch.setenv("SPEECHSSL_ONEDNN", "0")
    monkeypatch.setenv("SPEECHSSL_FAST_GRU", "off")
    decided = accel.decide()
    assert not decided.onednn_linear and not decided.fast_gru
    assert "SPEECHSSL_ONEDNN" in decided.reasons["onednn_linear"]
    monkeypatch.delenv("SPEECHSSL_ONEDNN")
    monkeypatch.delenv("SPEECHSSL_FAST_GRU")
    assert accel.decide().onednn_linear == accel.decision().onednn_linear


def test_the_matmul_kernel_is_chosen_per_vendor(monkeypatch):
    if not accel.decision().onednn_available:
        pytest.skip("oneDNN is not available on this machine: nothing to choose")
    monkeypatch.delenv("SPEECHSSL_ONEDNN", raising=False)
    for vendor, onednn in (("GenuineIntel", False), ("AuthenticAMD", True)):
        monkeypatch.setattr(accel, "cpu_identity", lambda v=vendor: (v, f"a {v} CPU"))
        decided = accel.decide()
        assert decided.onednn_linear is onednn and decided.onednn_available, vendor
        assert decided.cpu_vendor == vendor and vendor in decided.reasons["onednn_linear"]
        assert ("windows" in decided.reasons["conv_layout"]) is onednn
    monkeypatch.setattr(accel, "cpu_identity", lambda: ("GenuineIntel", "an Intel CPU"))
    monkeypatch.setenv("SPEECHSSL_ONEDNN", "1")  # forced on where the rule says MKL
    assert accel.decide().onednn_linear
    monkeypatch.setenv("SPEECHSSL_ONEDNN", "auto")
    intel = accel.decide()
    monkeypatch.setattr(accel, "decision", lambda: intel)
    assert not accel.onednn_linear()
    with accel.use(onednn_linear=True):  # the Intel rule chose MKL, but oneDNN may still be forced
        assert accel.onednn_linear()


def test_decision_is_recorded_with_the_cpu():
    record = accel.decision().as_dict()
    assert set(record) >= {"onednn_linear", "fast_gru", "reasons", "cpu_vendor", "cpu_model", "isa", "machine"}
    assert record["cpu_vendor"] and record["cpu_model"] and record["isa"]
    assert accel.decision() is accel.decision()  # decided once per process


@pytest.mark.skipif(not accel.decision().onednn_linear, reason="oneDNN is off on this machine")
def test_forcing_a_path_is_scoped_and_counts_the_kernel(monkeypatch):
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(1) or real(*a))
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with accel.use(onednn_linear=False):
        assert not accel.onednn_linear()
        linear(x, w)
        assert calls == []
        with accel.use(onednn_linear=True):
            linear(x, w)
        assert calls == [1]
        linear(x, w, onednn=True)  # the function argument overrides the context
        assert calls == [1, 1]
    assert accel.onednn_linear()
    linear(x, w, onednn=False)
    assert calls == [1, 1]


def test_the_self_check_rejects_a_wrong_backward_kernel(monkeypatch):
    real = torch.ops.mkldnn._linear_pointwise

    def wrong_on_transposed(x, w, *rest):
        out = real(x, w, *rest)
        return out + 1.0 if not w.is_contiguous() else out  # a kernel that misreads transposed strides

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", wrong_on_transposed)
    decided = accel.decide()
    if X86 and torch.backends.mkldnn.is_available() and decided.isa in ("AVX2", "AVX512"):
        assert not decided.onednn_linear
        assert "disagrees" in decided.reasons["onednn_linear"]


@pytest.mark.parametrize("shape", [(48,), (7, 48), (3, 11, 48), (2, 3, 5, 48), (2, 0, 48)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", [None, "gelu"])
def test_linear_equals_f_linear(shape, bias, activation):
    torch.manual_seed(0)
    x, w = torch.randn(shape), torch.randn(20, 48)
    b = torch.randn(20) if bias else None
    expected = F.linear(x, w, b)
    if activation:
        expected = F.gelu(expected)
    with torch.no_grad():
        got = linear(x, w, b, activation)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # a non-contiguous input (a transposed view) gives the same numbers
    if x.dim() >= 2:
        xt = x.transpose(-1, -2).contiguous().transpose(-1, -2)
        torch.testing.assert_close(linear(xt, w, b, activation).detach(), expected, atol=1e-5, rtol=1e-5)
    # so does a weight with a row stride (a slice, as the conv encoder's per-utterance folded weights)
    wide = torch.zeros(20, 96)
    wide[:, :48] = w
    assert not wide[:, :48].is_contiguous()
    torch.testing.assert_close(linear(x, wide[:, :48], b, activation).detach(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("activation", [None, "gelu"])
def test_linear_gradients_equal_f_linear(activation):
    torch.manual_seed(0)
    x = torch.randn(2, 9, 16, requires_grad=True)
    w = torch.randn(12, 16, requires_grad=True)
    b = torch.randn(12, requires_grad=True)
    g = torch.randn(2, 9, 12)

    def grads(fn):
        y = fn()
        return torch.autograd.grad(y, (x, w, b), g)

    ref = grads(lambda: F.gelu(F.linear(x, w, b)) if activation else F.linear(x, w, b))
    got = grads(lambda: linear(x, w, b, activation))
    for r, o in zip(ref, got):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5)


def test_linear_module_is_an_nn_linear_with_the_same_state_dict():
    torch.manual_seed(0)
    ref = nn.Linear(8, 5)
    mod = Linear(8, 5, activation="gelu")
    mod.load_state_dict(ref.state_dict())
    assert isinstance(mod, nn.Linear)
    assert list(mod.state_dict()) == ["weight", "bias"]
    x = torch.randn(4, 8)
    torch.testing.assert_close(mod(x), F.gelu(ref(x)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="activation"):
        Linear(8, 5, activation="relu")


def test_autocast_and_other_dtypes_use_f_linear():
    torch.manual_seed(0)
    x, w, b = torch.randn(5, 8), torch.randn(3, 8), torch.randn(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x, w, b).dtype == torch.bfloat16
    x64, w64 = x.double(), w.double()
    torch.testing.assert_close(linear(x64, w64), F.linear(x64, w64))


@pytest.mark.parametrize("norm,bias", [("group_norm", False), ("group_norm", True), ("layer_norm", True),
                                       ("none", False)])
def test_conv_encoder_fast_path_equals_reference(norm, bias, reference_path):
    torch.manual_seed(0)
    enc = ConvFeatureEncoder(1, BASE_SHAPE, norm=norm, bias=bias).eval()
    lengths = torch.tensor([16000, 9000, 400, 4321])
    wavs = torch.randn(len(lengths), 16000) * (torch.arange(16000)[None] < lengths[:, None])
    x = wavs.unsqueeze(1)
    with torch.inference_mode():
        if X86:
            assert enc._fast_path_ok(x, lengths)
        got, got_len = enc(x, lengths)
        ref, ref_len = reference_path(lambda: enc(x, lengths))
    assert torch.equal(got_len, ref_len)
    for i, n in enumerate(ref_len.tolist()):  # valid frames only (padding frames are unspecified)
        torch.testing.assert_close(got[i, :n], ref[i, :n], atol=1e-4, rtol=1e-4)
    # no lengths: statistics over every frame
    with torch.inference_mode():
        got, _ = enc(x[:2])
        ref, _ = reference_path(lambda: enc(x[:2]))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_conv_encoder_fast_path_on_multichannel_input_and_long_input(reference_path, monkeypatch):
    # a log-Mel subsampler (80 input channels) and more frames than one oneDNN block
    import speechssl.modules.conv as conv

    monkeypatch.setattr(conv, "TIME_BLOCK", 7)
    torch.manual_seed(0)
    enc = ConvFeatureEncoder(80, [(32, 3, 2), (32, 3, 2)], norm="group_norm").eval()
    feats = torch.randn(2, 80, 100)
    lengths = torch.tensor([100, 61])
    with torch.inference_mode():
        got, got_len = enc(feats, lengths)
        ref, _ = reference_path(lambda: enc(feats, lengths))
    for i, n in enumerate(got_len.tolist()):
        torch.testing.assert_close(got[i, :n], ref[i, :n], atol=1e-4, rtol=1e-4)


def test_training_keeps_the_reference_conv_path_and_gradients_match(reference_path, monkeypatch):
    torch.manual_seed(0)
    enc = ConvFeatureEncoder(1, BASE_SHAPE, norm="group_norm")
    x = torch.randn(2, 1, 4000)
    fast_calls = []
    real_fast = enc._forward_fast
    monkeypatch.setattr(enc, "_forward_fast", lambda *a: fast_calls.append(1) or real_fast(*a))
    assert not enc._fast_path_ok(x, None)  # parameters need gradients: training takes the reference path
    out, _ = enc(x)
    assert fast_calls == []
    out.square().mean().backward()
    ref_grads = [p.grad.clone() for p in enc.parameters()]
    enc.zero_grad()
    # the fast path's own graph (oneDNN matmuls with their backward, the folded GroupNorm)
    fast, _ = real_fast(x, None)
    if X86:
        assert fast.grad_fn is not None
    torch.testing.assert_close(fast, out, atol=1e-4, rtol=1e-4)
    fast.square().mean().backward()
    for ref, (name, p) in zip(ref_grads, enc.named_parameters()):
        # tolerance relative to the gradient's scale (these gradients are ~1e-5 in absolute terms)
        scale = float(ref.abs().max())
        torch.testing.assert_close(p.grad, ref, atol=1e-4 * scale, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")
    # and the inference call takes the fast path where oneDNN is on
    with torch.inference_mode():
        enc(x)
    assert fast_calls == ([1] if accel.onednn_linear() else [])


def test_transformer_encoder_equal_with_and_without_onednn(reference_path):
    torch.manual_seed(0)
    enc = TransformerEncoder(48, 2, 4, 96, dropout=0.0, attention_dropout=0.0).eval()
    x = torch.randn(2, 30, 48)
    pad = torch.arange(30)[None] >= torch.tensor([30, 17])[:, None]
    with torch.inference_mode():
        got, layers = enc(x, pad, return_layers=True)
        ref, ref_layers = reference_path(lambda: enc(x, pad, return_layers=True))
    valid = ~pad
    torch.testing.assert_close(got[valid], ref[valid], atol=1e-5, rtol=1e-5)
    for a, b in zip(layers, ref_layers):
        torch.testing.assert_close(a[valid], b[valid], atol=1e-5, rtol=1e-5)


def test_forcing_a_kernel_on_where_the_process_decided_off_is_refused(monkeypatch):
    import dataclasses

    off = dataclasses.replace(accel.decide(), onednn_linear=False, onednn_available=False,
                              reasons={"onednn_linear": "no oneDNN here", "fast_gru": "on"})
    monkeypatch.setattr(accel, "decision", lambda: off)
    assert not accel.onednn_linear()
    with pytest.raises(RuntimeError, match="cannot force onednn_linear on: no oneDNN here"):
        with accel.use(onednn_linear=True):
            pass
    def missing_kernel(*args):
        raise AssertionError("the oneDNN kernel ran although the process decided against it")

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", missing_kernel)
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    torch.testing.assert_close(linear(x, w, onednn=True), F.linear(x, w))  # the argument cannot force it either
