"""GumbelVectorQuantizer: hard codes, perplexities on hand cases, temperature schedule, buffers."""

import math

import pytest
import torch

from speechssl.modules.quantizer import GumbelVectorQuantizer, perplexity


def _quantizer(**kw):
    torch.manual_seed(0)
    return GumbelVectorQuantizer(input_dim=8, num_groups=2, num_vars=4, vq_dim=6, **kw)


def test_hard_codes_are_codewords_in_train_and_eval():
    q = _quantizer()
    x = torch.randn(3, 5, 8)
    book = q.codevectors.view(2, 4, 3)
    for train in (True, False):
        q.train(train)
        out = q(x)
        assert out.quantized.shape == (3, 5, 6)
        assert out.codes.shape == (3, 5, 2)
        expect = torch.cat([book[0][out.codes[..., 0]], book[1][out.codes[..., 1]]], dim=-1)
        torch.testing.assert_close(out.quantized, expect)
    q.eval()
    torch.testing.assert_close(q(x).codes, q.weight_proj(x).view(3, 5, 2, 4).argmax(-1))


def test_straight_through_gradient_reaches_projection():
    q = _quantizer().train()
    x = torch.randn(2, 7, 8, requires_grad=True)
    out = q(x)
    (out.quantized.sum() + out.diversity_loss).backward()
    assert q.weight_proj.weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


def test_perplexity_hand_cases():
    assert perplexity(torch.tensor([0.25, 0.25, 0.25, 0.25])).item() == pytest.approx(4.0)
    assert perplexity(torch.tensor([1.0, 0.0, 0.0, 0.0])).item() == pytest.approx(1.0)
    assert perplexity(torch.tensor([0.5, 0.5, 0.0, 0.0])).item() == pytest.approx(2.0)


def test_code_perplexity_usage_and_diversity_on_hand_case():
    q = GumbelVectorQuantizer(input_dim=4, num_groups=1, num_vars=4, vq_dim=2).eval()
    with torch.no_grad():
        q.weight_proj.weight.copy_(torch.eye(4) * 100)
        q.weight_proj.bias.zero_()
    # frames pick codes 0, 1, 0, 1 (valid) and 3 (padding: ignored)
    x = torch.eye(4)[[0, 1, 0, 1, 3]].unsqueeze(0)
    mask = torch.tensor([[True, True, True, True, False]])
    out = q(x, mask)
    assert out.code_perplexity.tolist() == pytest.approx([2.0], abs=1e-4)
    assert out.prob_perplexity.tolist() == pytest.approx([2.0], abs=1e-3)
    assert out.codebook_usage.item() == pytest.approx(0.5)
    assert out.diversity_loss.item() == pytest.approx((4 - 2) / 4, abs=1e-3)
    # without the mask the padding frame counts: codes 0,1,0,1,3 -> p = (.4,.4,0,.2)
    full = q(x)
    expect = math.exp(-(2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2)))
    assert full.code_perplexity.item() == pytest.approx(expect, abs=1e-4)
    assert full.codebook_usage.item() == pytest.approx(0.75)


def test_temperature_schedule_in_buffer():
    q = _quantizer(temp_max=2.0, temp_min=0.5, temp_decay=0.9)
    assert float(q.temperature) == 2.0
    q.set_step(1)
    assert float(q.temperature) == pytest.approx(1.8)
    q.set_step(5)
    assert float(q.temperature) == pytest.approx(2.0 * 0.9**5)
    q.set_step(10_000)
    assert float(q.temperature) == pytest.approx(0.5)
    state = q.state_dict()
    assert float(state["temperature"]) == pytest.approx(0.5)
    fresh = _quantizer(temp_max=2.0, temp_min=0.5, temp_decay=0.9)
    fresh.load_state_dict(state)
    assert float(fresh.temperature) == pytest.approx(0.5)
    assert fresh(torch.randn(1, 2, 8)).temperature == pytest.approx(0.5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        GumbelVectorQuantizer(8, 3, 4, 8)
    with pytest.raises(ValueError, match="temp_min"):
        GumbelVectorQuantizer(8, 2, 4, 8, temp_max=0.1, temp_min=0.5)
