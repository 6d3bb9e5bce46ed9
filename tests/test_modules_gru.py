"""speechssl.modules.gru: the fast CPU GRU equals nn.GRU (outputs and every gradient), falls back
where it does not apply, and RNNStack's valid frames are those of a packed nn.GRU run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import speechssl.accel as accel
from speechssl.modules import gru as fast_gru
from speechssl.modules.recurrent import RNNStack


@pytest.fixture
def aten_matmuls():
    """F.linear instead of oneDNN (which has no float64 kernel) for exact float64 checks."""
    with accel.use(onednn_linear=False):
        yield


def _grads(module, x, h0, out_weight):
    for t in (x, h0):
        t.grad = None
    module.zero_grad()
    out, last = module(x, h0[None])
    ((out * out_weight).sum() + (last * 0.5).sum()).backward()
    return out.detach(), last.detach(), [x.grad.clone(), h0.grad.clone()] + [p.grad.clone() for p in module.parameters()]


def _pair(input_size, hidden, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    ref = nn.GRU(input_size, hidden, batch_first=True).to(dtype)
    fast = fast_gru.GRU(input_size, hidden, batch_first=True).to(dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def test_float64_equals_nn_gru_in_values_and_every_gradient(aten_matmuls):
    ref, fast = _pair(7, 5, torch.float64)
    x = torch.randn(3, 11, 7, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 11, 5, dtype=torch.float64)
    o1, l1, g1 = _grads(ref, x, h0, w)
    # the fast layer's Function itself, in float64 (the GRU module sends float64 to nn.GRU)
    for t in (x, h0):
        t.grad = None
    out = fast_gru.gru_layer(x, h0, fast.weight_ih_l0, fast.weight_hh_l0, fast.bias_ih_l0, fast.bias_hh_l0)
    ((out * w).sum() + (out[:, -1] * 0.5).sum()).backward()
    g2 = [x.grad, h0.grad] + [p.grad for p in fast.parameters()]
    torch.testing.assert_close(out.detach(), o1, rtol=0, atol=1e-13)
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 50, 80, 64), (1, 1, 3, 8), (2, 17, 64, 64)])
def test_float32_matches_nn_gru_with_onednn(shape):
    batch, frames, inp, hidden = shape
    ref, fast = _pair(inp, hidden)
    x = torch.randn(batch, frames, inp, requires_grad=True)
    h0 = torch.randn(batch, hidden, requires_grad=True)
    w = torch.randn(batch, frames, hidden)
    calls = []
    real = fast_gru._GRULayer.apply
    fast_gru._GRULayer.apply = lambda *a: calls.append(1) or real(*a)
    try:
        o2, l2, g2 = _grads(fast, x, h0, w)
    finally:
        fast_gru._GRULayer.apply = real
    assert calls == [1]
    o1, l1, g1 = _grads(ref, x, h0, w)
    torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-5)
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # inference: the same recurrence without a graph
        torch.testing.assert_close(fast(x, h0[None])[0], o1, rtol=1e-5, atol=1e-5)


def test_gru_is_an_nn_gru_and_falls_back_where_the_fast_path_does_not_apply(monkeypatch):
    ref, fast = _pair(6, 4)
    assert isinstance(fast, nn.GRU) and list(fast.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 9, 6)
    used = []
    real = fast_gru.gru_layer
    monkeypatch.setattr(fast_gru, "gru_layer", lambda *a: used.append(1) or real(*a))
    # packed input, bfloat16 autocast, a switched-off path: nn.GRU's own code, same results
    packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([9, 5]), batch_first=True)
    torch.testing.assert_close(fast(packed)[0].data, ref(packed)[0].data)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(fast(x)[0], ref(x)[0])
    with accel.use(fast_gru=False):
        torch.testing.assert_close(fast(x)[0], ref(x)[0])
    with torch.no_grad():  # forward only: nn.GRU's C++ loop is the faster one
        torch.testing.assert_close(fast(x)[0], ref(x)[0])
    fast.requires_grad_(False)  # frozen weights and an input without a gradient: nothing to backpropagate
    torch.testing.assert_close(fast(x)[0], ref(x)[0])
    assert used == []
    fast.requires_grad_(True)
    torch.testing.assert_close(fast(x)[0], ref(x)[0], rtol=1e-5, atol=1e-5)
    assert used == [1]
    monkeypatch.setenv("SPEECHSSL_FAST_GRU", "0")
    assert not accel.decide().fast_gru
    monkeypatch.delenv("SPEECHSSL_FAST_GRU")
    assert accel.decide().fast_gru


@pytest.mark.parametrize("residual", [True, False])
def test_rnn_stack_valid_frames_equal_a_packed_nn_gru_run(residual):
    torch.manual_seed(0)
    stack = RNNStack(10, 16, 3, cell="gru", residual=residual, packed=True).train()
    assert all(isinstance(layer, fast_gru.GRU) for layer in stack.layers)
    x = torch.randn(3, 20, 10, requires_grad=True)
    lengths = torch.tensor([20, 7, 0])
    w = torch.randn(3, 20, 16)
    outs = stack(x, lengths)
    (outs[-1] * w).sum().backward()
    g_fast = [x.grad.clone()] + [p.grad.clone() for p in stack.parameters()]
    with accel.use(fast_gru=False):  # the packed nn.GRU reference
        x.grad = None
        stack.zero_grad()
        ref = stack(x, lengths)
        (ref[-1] * w).sum().backward()
    g_ref = [x.grad.clone()] + [p.grad.clone() for p in stack.parameters()]
    for a, b in zip(outs, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert float(outs[-1][1, 7:].detach().abs().max()) == 0.0 and float(outs[-1][2].detach().abs().max()) == 0.0
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # one utterance alone gives its frames of the batch
    with torch.no_grad():
        alone = stack(x[1:2, :7], lengths[1:2])
    torch.testing.assert_close(alone[-1][0], outs[-1][1, :7].detach(), rtol=1e-5, atol=1e-5)
