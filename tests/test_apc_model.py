"""APC / VQ-APC model: shapes, exact lengths, batched == single, L1 masking, presets, release."""

from __future__ import annotations

import pytest
import torch

from speechssl.config import ConfigError, to_dict
from speechssl.features.base import num_frames
from speechssl.models import build_model
from speechssl.models.apc import APCConfig, VQConfig, apc_paper, apc_tiny, vq_apc_paper
from speechssl.upstream.release import load_released_model, save_released_encoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

VARIANTS = {
    "gru": {"context": "gru"},
    "lstm_prenet": {"context": "lstm", "prenet_layers": 2, "prenet_dim": 12},
    "transformer": {"context": "transformer", "num_heads": 2, "ffn_dim": 32},
    "cnn": {"context": "cnn", "kernel_size": 3},
    "vq": {"context": "gru", "vq": {"after_layers": [1, 2], "num_groups": 2, "num_vars": 8}},
}


def small(**kw) -> torch.nn.Module:
    cfg = {"name": "apc", "frontend": {"name": "logmel", "n_mels": 20, "cmvn": "utterance"},
           "num_layers": 2, "hidden_size": 16, "dropout": 0.2, **kw}
    torch.manual_seed(0)
    return build_model(cfg)


def batch_of(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    wavs = torch.randn(len(lengths), max(lengths), generator=g)
    t = torch.arange(max(lengths)) / 16000
    wavs = 0.1 * wavs + torch.sin(2 * torch.pi * 220 * t)[None] * torch.rand(len(lengths), 1, generator=g)
    lengths = torch.tensor(lengths)
    wavs = wavs * (torch.arange(wavs.shape[1])[None] < lengths[:, None])
    return {"wavs": wavs, "lengths": lengths}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_encode_shapes_lengths_and_batched_equals_single(variant):
    model = small(**VARIANTS[variant]).train()  # encode must use eval semantics anyway
    lens = [16000, 1200, 5555]
    b = batch_of(lens)
    out = model.encode(b["wavs"], b["lengths"])
    assert model.training, "encode must restore the training flag"
    assert out.layer_names == ["latent", "layer_1", "layer_2", "context"]
    assert out.frame_shift == 160
    assert out.lengths.tolist() == [num_frames(n, 400, 160) for n in lens]
    dims = [12 if "prenet_layers" in VARIANTS[variant] else 20, 16, 16, 16]
    for h, d in zip(out.hidden_states, dims):
        assert h.shape == (3, 98, d)
    torch.testing.assert_close(out.layer("context"), out.layer("layer_2"))
    for i, n in enumerate(lens):
        single = model.encode(b["wavs"][i : i + 1, :n], b["lengths"][i : i + 1])
        nf = int(out.lengths[i])
        for hb, hs in zip(out.hidden_states, single.hidden_states):
            torch.testing.assert_close(hb[i, :nf], hs[0], atol=2e-5, rtol=1e-4)
            assert torch.all(hb[i, nf:] == 0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_loss_finite_and_backprop(variant):
    model = small(**VARIANTS[variant]).train()
    out = model.loss(batch_of([8000, 3000]))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32
    assert "l1" in out.metrics
    if variant == "vq":
        assert {"code_perplexity", "codebook_usage", "temperature"} <= set(out.metrics)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "every parameter must get a gradient (DDP)"


def test_l1_ignores_padding_and_last_n_frames():
    """Hand case: with a zero postnet the prediction is 0, so the loss is the mean |x[t]| over
    frames n..len-1 of each utterance, pooled over the batch."""
    model = small(time_shift=3)
    with torch.no_grad():
        model.postnet.weight.zero_()
        model.postnet.bias.zero_()
    b = batch_of([4000, 2400])
    x, n = model.frontend(b["wavs"], b["lengths"])
    total, count = 0.0, 0
    for i in range(2):
        frames = int(n[i])
        total += x[i, 3:frames].abs().sum().item()
        count += (frames - 3) * x.shape[-1]
    assert model.loss(b).loss.item() == pytest.approx(total / count, rel=1e-5)


def test_loss_gradient_never_reaches_last_n_frames_or_padding():
    model = small(time_shift=2)
    captured = {}

    def hook(_module, _inputs, outputs):
        outputs[-1].retain_grad()
        captured["top"] = outputs[-1]

    model.context.register_forward_hook(hook)
    b = batch_of([4000, 2400])
    model.loss(b).loss.backward()
    grad = captured["top"].grad  # [B, T, H]
    nf = [num_frames(4000, 400, 160), num_frames(2400, 400, 160)]
    for i, frames in enumerate(nf):
        assert grad[i, : frames - 2].abs().sum(-1).min() > 0
        assert torch.all(grad[i, frames - 2 :] == 0)


def test_min_samples():
    model = small(time_shift=3)
    assert model.min_samples == 400 + 3 * 160
    model.loss(batch_of([model.min_samples]))
    with pytest.raises(ValueError, match="time_shift"):
        model.loss(batch_of([model.min_samples - 1]))


def test_overfit_one_batch():
    model = small(dropout=0.0, context="lstm")
    b = batch_of([3000, 2000, 2500], seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    first = None
    for _ in range(20):
        out = model.loss(b)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.loss.item()
    assert out.loss.item() < 0.7 * first  # ~0.55 x after 20 steps


def test_preset_parameter_counts():
    def count(cfg):
        return sum(p.numel() for p in build_model({"name": "apc", **to_dict(cfg)}).parameters())

    # SUPERB lists APC 4.11 M, VQ-APC 4.63 M (3 x 512 GRU on 80-dim log-Mel + linear postnet)
    assert count(apc_paper()) == 4_105_296
    assert count(vq_apc_paper()) == 4_630_096
    assert count(apc_tiny()) < 1_500_000


def test_vq_temperature_follows_step_update_and_round_trips(tmp_path):
    model = small(vq={"after_layers": [2], "num_vars": 8, "temp_decay": 0.9})
    model.step_update(5)
    q = model.quantizers["2"]
    assert float(q.temperature) == pytest.approx(max(2.0 * 0.9**5, 0.5))
    save_released_encoder(model, tmp_path / "enc")
    loaded = load_released_model(tmp_path / "enc")
    assert float(loaded.quantizers["2"].temperature) == pytest.approx(float(q.temperature))


def test_config_errors():
    with pytest.raises(ConfigError, match="vq"):
        APCConfig(context="transformer", vq=VQConfig())
    with pytest.raises(ConfigError, match="after_layers"):
        APCConfig(num_layers=2, vq=VQConfig(after_layers=[3]))
    with pytest.raises(ConfigError, match="time_shift"):
        APCConfig(time_shift=0)
    with pytest.raises(ConfigError, match="unknown key"):
        build_model({"name": "apc", "hidden": 3})
