"""Context-network blocks of APC/CPC: RNN stacks (packed), causal Transformer, causal CNN."""

from __future__ import annotations

import pytest
import torch

from speechssl.modules.causal import CausalConvNet, CausalTransformer, causal_padding_mask
from speechssl.modules.recurrent import RNNStack, lengths_to_mask, run_packed

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

LENGTHS = [37, 5, 1, 20]


def _nets():
    torch.manual_seed(0)
    return {
        "gru": RNNStack(6, 8, 3, "gru", residual=True, dropout=0.3),
        "lstm": RNNStack(6, 8, 2, "lstm", residual=False),
        "gru_unpacked": RNNStack(6, 8, 2, "gru", residual=True, packed=False),
        "transformer": CausalTransformer(6, 8, 2, num_heads=2, ffn_dim=16, dropout=0.3),
        "cnn": CausalConvNet(6, 8, 3, kernel_size=3, dilation_growth=2, dropout=0.3),
    }


@pytest.mark.parametrize("kind", ["gru", "lstm", "gru_unpacked", "transformer", "cnn"])
def test_batched_equals_single_and_padding_zero(kind):
    net = _nets()[kind].eval()
    torch.manual_seed(1)
    lengths = torch.tensor(LENGTHS)
    x = torch.randn(len(LENGTHS), max(LENGTHS), 6)
    x = x * lengths_to_mask(lengths, x.shape[1])[..., None]
    x_garbage = x + 100.0 * (~lengths_to_mask(lengths, x.shape[1]))[..., None]  # padding must not matter
    outs = net(x_garbage, lengths)
    assert len(outs) == len(net.layers) if hasattr(net, "layers") else len(outs) == 3
    for layer_out in outs:
        assert layer_out.shape == (4, 37, 8)
        assert torch.all(layer_out[~lengths_to_mask(lengths, 37)] == 0)
    for b, n in enumerate(LENGTHS):
        single = net(x[b : b + 1, :n], lengths[b : b + 1])
        for layer_b, layer_1 in zip(outs, single):
            torch.testing.assert_close(layer_b[b, :n], layer_1[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["gru", "lstm", "transformer", "cnn"])
def test_causal(kind):
    """Changing frame 10 changes no output frame before 10."""
    net = _nets()[kind].eval()
    x = torch.randn(1, 20, 6)
    y = x.clone()
    y[0, 10] += 5.0
    lengths = torch.tensor([20])
    a, b = net(x, lengths)[-1], net(y, lengths)[-1]
    torch.testing.assert_close(a[0, :10], b[0, :10])
    assert not torch.allclose(a[0, 10], b[0, 10])


def test_unpacked_equals_packed():
    packed = RNNStack(6, 8, 2, "gru", packed=True).eval()
    unpacked = RNNStack(6, 8, 2, "gru", packed=False).eval()
    unpacked.load_state_dict(packed.state_dict())
    lengths = torch.tensor(LENGTHS)
    x = torch.randn(len(LENGTHS), max(LENGTHS), 6)
    for a, b in zip(packed(x, lengths), unpacked(x, lengths)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_zero_length_rows_give_zeros():
    net = _nets()["gru"].eval()
    out = net(torch.randn(2, 4, 6), torch.tensor([0, 4]))
    assert torch.all(out[-1][0] == 0) and torch.isfinite(out[-1]).all()
    tr = _nets()["transformer"].eval()
    assert torch.isfinite(tr(torch.randn(2, 4, 6), torch.tensor([0, 4]))[-1]).all()


def test_residual_only_between_equal_widths():
    net = RNNStack(4, 4, 2, "gru", residual=True)
    with torch.no_grad():
        for rnn in net.layers:
            for p in rnn.parameters():
                p.zero_()
    x = torch.randn(1, 3, 4)
    out = net(x, torch.tensor([3]))
    # zero GRU weights: r = (1 - 0.5) * 0 + 0.5 * h_prev recursion from h0=0 gives 0, so h_i = x
    torch.testing.assert_close(out[0], x)
    torch.testing.assert_close(out[1], x)


def test_between_hook_feeds_next_layer():
    net = RNNStack(4, 4, 2, "gru", residual=False).eval()
    x = torch.randn(1, 5, 4)
    lengths = torch.tensor([5])
    plain = net(x, lengths)
    zeroed = net(x, lengths, between=lambda i, h: torch.zeros_like(h))
    torch.testing.assert_close(plain[0], zeroed[0])  # the hook output is not the layer output
    torch.testing.assert_close(zeroed[1], run_packed(net.layers[1], torch.zeros(1, 5, 4), lengths))


def test_causal_padding_mask():
    m = causal_padding_mask(torch.tensor([2, 0]), 3)[:, 0]
    assert m[0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]
    assert m[1].tolist() == [[True, False, False]] * 3  # key 0 kept so no row is all-masked


def test_cnn_receptive_field():
    net = CausalConvNet(2, 4, 3, kernel_size=3, dilation_growth=2)
    assert net.receptive_field == 1 + 2 * (1 + 2 + 4)
