"""speechssl.modules.dropout: integer-drawn dropout masks and attention with dropout give PyTorch's maths for
the same mask (float64), and transformer layers take them exactly where speechssl.accel's ``fast_dropout``
rule says (Base width), so the demo's models keep nn.Dropout, SDPA and their random stream."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import speechssl.accel as accel
import speechssl.modules.dropout as dropout
import speechssl.modules.transformer as transformer
from speechssl.modules.dropout import Dropout, dropout_attention, dropout_noise, fast_dropout, keep_mask
from speechssl.modules.transformer import TransformerEncoder, TransformerLayer


def test_keep_mask_probability_and_errors():
    gen = torch.Generator().manual_seed(0)
    for p in (0.1, 0.5, 0.9):
        mask = keep_mask((1000, 1000), p, gen)
        assert mask.dtype == torch.bool
        sigma = math.sqrt(p * (1 - p) / mask.numel())
        assert abs(float(mask.float().mean()) - (1 - p)) < 5 * sigma, p
    assert bool(keep_mask((100,), 0.0, gen).all())
    for p in (1.0, -0.1):
        with pytest.raises(ValueError, match="dropout probability"):
            keep_mask((3,), p)


def test_fast_dropout_is_pytorchs_formula_for_its_mask():
    x = torch.randn(4, 50, 16, dtype=torch.float64, requires_grad=True)
    y = fast_dropout(x, 0.3, torch.Generator().manual_seed(1))
    mask = keep_mask(x.shape, 0.3, torch.Generator().manual_seed(1))
    noise = mask.double() / (1 - 0.3)  # PyTorch's _dropout_impl: bernoulli_(1 - p), div_(1 - p), input * noise
    assert torch.equal(y, x * noise)
    assert torch.equal(dropout_noise(x.shape, 0.3, torch.float64, generator=torch.Generator().manual_seed(1)), noise)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.equal(gx, g * noise)
    assert 0 < int((y == 0).sum()) < y.numel()
    assert fast_dropout(x, 0.0) is x


def _reference_attention(q, k, v, noise, pad):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if pad is not None:
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    b, h, n, _ = q.shape
    return (scores.softmax(-1) * noise.view(b, h, n, n)) @ v


@pytest.mark.parametrize("padded", [False, True])
def test_dropout_attention_values_and_gradients(padded):
    gen = torch.Generator().manual_seed(2)
    b, h, n, d, p = 3, 4, 17, 8, 0.2
    q, k, v = (torch.randn(b, h, n, d, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    pad = torch.zeros(b, n, dtype=torch.bool)
    pad[1, 12:] = pad[2, 5:] = True
    pad = pad if padded else None
    noise = dropout_noise((b * h, n, n), p, torch.float64, generator=gen)
    ours = dropout_attention(q, k, v, p, pad, noise)
    ref = _reference_attention(q, k, v, noise, pad)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-12)
    g = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    for a, r in zip(torch.autograd.grad(ours, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=1e-12)
    # no dropout (noise of ones): scaled_dot_product_attention itself, in float32 too
    ones = torch.ones(b * h, n, n, dtype=torch.float64)
    mask = None if pad is None else ~pad[:, None, None, :]
    torch.testing.assert_close(dropout_attention(q, k, v, p, pad, ones),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-12, rtol=1e-12)
    q32, k32, v32 = (t.detach().float() for t in (q, k, v))
    torch.testing.assert_close(dropout_attention(q32, k32, v32, p, pad, ones.float()),
                               F.scaled_dot_product_attention(q32, k32, v32, attn_mask=mask), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="noise must be"):
        dropout_attention(q, k, v, p, pad, noise.float())
    # a fresh noise drops about p of the weights
    torch.manual_seed(0)
    out = dropout_attention(q32, k32, v32, p)
    assert out.shape == q.shape and torch.isfinite(out).all()


def _layer_calls(monkeypatch):
    calls = {"attention": 0, "dropout": 0}

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped
    monkeypatch.setattr(transformer, "dropout_attention", count("attention", dropout_attention))
    monkeypatch.setattr(dropout, "fast_dropout", count("dropout", fast_dropout))
    return calls


def test_layers_take_the_rule_and_match_the_reference_maths(monkeypatch):
    """With the rule forced on, a post-LN layer's output and gradients equal the reference layer's run with the
    same masks (PyTorch's dropout formula, SDPA's attention) to float rounding (float64)."""
    torch.manual_seed(0)
    layer = TransformerLayer(16, 2, 32, dropout=0.2, attention_dropout=0.3).double().train()
    x = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)
    attn_mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    attn_mask[1, ..., 6:] = False
    calls = _layer_calls(monkeypatch)
    torch.manual_seed(5)
    with accel.use(fast_dropout=True):
        out = layer(x, attn_mask)
    assert calls == {"attention": 1, "dropout": 2}
    # replay the same draws: the attention noise first, then the two residual dropouts' masks
    torch.manual_seed(5)
    attn_noise = dropout_noise((4, 9, 9), 0.3, torch.float64)
    res_noise = [dropout_noise(x.shape, 0.2, torch.float64) for _ in range(2)]
    att = layer.attention
    q, k, v = att.qkv(x).view(2, 9, 3, 2, 8).permute(2, 0, 3, 1, 4)
    a = _reference_attention(q, k, v, attn_noise, ~attn_mask[:, 0, 0, :])
    h = layer.attn_norm(x + att.out_proj(a.transpose(1, 2).reshape(2, 9, 16)) * res_noise[0])
    ref = layer.ffn_norm(h + layer.ffn.fc2(layer.ffn.fc1(h)) * res_noise[1])
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    params = [x] + list(layer.parameters())
    for g, r in zip(torch.autograd.grad(out.sum(), params), torch.autograd.grad(ref.sum(), params)):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-12)
    # evaluation, or dropout 0: the reference path, no draws
    layer.eval()
    with accel.use(fast_dropout=True):
        layer(x, attn_mask)
    assert calls == {"attention": 1, "dropout": 2}


def test_attention_under_bf16_autocast_runs_in_float32_like_sdpa_math(monkeypatch):
    """Under CPU bf16 autocast the layer's attention with dropout takes the fast path in float32 (SDPA's math path
    upcasts reduced precision on CPU): its output and gradients are those of the float32 maths on the bf16 q, k, v
    with the same mask, and the backward runs (it once met bf16 autocast and failed)."""
    torch.manual_seed(0)
    att = transformer.SelfAttention(16, 2, dropout=0.3).train()
    x = torch.randn(2, 9, 16, requires_grad=True)
    attn_mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    attn_mask[1, ..., 6:] = False
    calls = _layer_calls(monkeypatch)
    torch.manual_seed(5)
    with accel.use(fast_dropout=True), torch.autocast("cpu", dtype=torch.bfloat16):
        out = att(x, attn_mask)
        qkv = att.qkv(x)
    assert calls["attention"] == 1 and out.dtype == torch.bfloat16
    torch.manual_seed(5)
    noise = dropout_noise((4, 9, 9), 0.3, torch.float32)
    q, k, v = qkv.view(2, 9, 3, 2, 8).permute(2, 0, 3, 1, 4)
    a = _reference_attention(q.float(), k.float(), v.float(), noise, ~attn_mask[:, 0, 0, :]).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = att.out_proj(a.transpose(1, 2).reshape(2, 9, 16))
    torch.testing.assert_close(out, ref, atol=1e-2, rtol=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a backward inside autocast, as a training step may run it
        grads = torch.autograd.grad(out.float().sum(), [x, att.qkv.weight])
        ref_grads = torch.autograd.grad(ref.float().sum(), [x, att.qkv.weight])
    for g, r in zip(grads, ref_grads):
        assert g.dtype == r.dtype == torch.float32
        torch.testing.assert_close(g, r, atol=2e-2, rtol=2e-2)


def test_narrow_layers_keep_nn_dropout_and_their_random_stream(monkeypatch):
    """The rule's default: a demo-width encoder (192) is bit-identical to the reference path, draws included;
    a Base-width one (768) takes the fast path."""
    monkeypatch.delenv("SPEECHSSL_FAST_DROPOUT", raising=False)
    monkeypatch.setattr(accel, "decision", lambda: accel.decide())
    calls = _layer_calls(monkeypatch)
    torch.manual_seed(0)
    demo = TransformerEncoder(192, 2, 4, 384, pos_conv_kernel=16, pos_conv_groups=4).train()
    x = torch.randn(2, 30, 192)
    torch.manual_seed(1)
    out, _ = demo(x)
    state = torch.get_rng_state()
    assert calls == {"attention": 0, "dropout": 0}
    torch.manual_seed(1)
    with accel.use(fast_dropout=False):
        ref, _ = demo(x)
    assert torch.equal(out, ref) and torch.equal(state, torch.get_rng_state())
    base = TransformerLayer(768, 12, 64).train()
    base(torch.randn(1, 5, 768))
    assert calls == {"attention": 1, "dropout": 2}


def test_demo_recipes_stay_below_the_rule():
    """Every demo recipe's model is narrower than the rule's width: their training does not change."""
    import yaml

    widths = []
    for path in sorted((Path(__file__).parents[1] / "recipes" / "pretrain").glob("*_demo.yaml")):
        with open(path) as fh:
            model = yaml.safe_load(fh)["model"]
        widths += [model.get(key) for key in ("embed_dim", "decoder_dim") if model.get(key)]
    assert widths and max(widths) < accel.DROPOUT_MIN_DIM, widths


def test_the_fast_dropout_rule(monkeypatch):
    monkeypatch.delenv("SPEECHSSL_FAST_DROPOUT", raising=False)
    decided = accel.decide()
    assert decided.dropout_min_dim == accel.DROPOUT_MIN_DIM == 768 and "fast_dropout" in decided.reasons
    monkeypatch.setattr(accel, "decision", lambda: decided)
    assert accel.fast_dropout(768) and not accel.fast_dropout(512)
    with accel.use(fast_dropout=True):
        assert accel.fast_dropout(16)
    with accel.use(fast_dropout=False):
        assert not accel.fast_dropout(768)
    monkeypatch.setenv("SPEECHSSL_FAST_DROPOUT", "0")
    assert accel.decide().dropout_min_dim is None
    monkeypatch.setenv("SPEECHSSL_FAST_DROPOUT", "1")
    assert accel.decide().dropout_min_dim == 0
    monkeypatch.setattr(accel, "decision", lambda: dataclasses.replace(decided, dropout_min_dim=None))
    assert not accel.fast_dropout(768)
    assert not Dropout(0.1, 768).eval()(torch.ones(3)).eq(0).any()
