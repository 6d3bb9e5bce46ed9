"""wav2vec 2.0 model: presets, frame arithmetic, batched == single, loss, schedules, collapse warning."""

import dataclasses
import logging
import math

import pytest
import torch

from speechssl.models import build_model
from speechssl.models.wav2vec2 import Wav2Vec2Config, build_wav2vec2, wav2vec2_base, wav2vec2_tiny


def _micro(**kw) -> Wav2Vec2Config:
    """Smaller than tiny, for speed; keeps the Base conv geometry (400-sample field, 320 shift)."""
    base = dict(
        conv_layers=[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2,
        embed_dim=32, num_layers=2, num_heads=4, ffn_dim=64, pos_conv_kernel=16, pos_conv_groups=4,
        num_vars=16, vq_dim=16, final_dim=16, num_negatives=10, layer_drop=0.0,
    )
    base.update(kw)
    return Wav2Vec2Config(**base)


def test_base_parameter_count_is_95_04_million():
    with torch.device("meta"):
        model = build_wav2vec2(wav2vec2_base())
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 95.04e6) / 95.04e6 < 0.005, count
    assert model.min_samples == 400 and model.frame_shift == 320
    assert model.layer_names == ["latent", *(f"layer_{i}" for i in range(1, 13)), "context"]


def test_tiny_preset_builds_through_the_registry():
    model = build_model({"name": "wav2vec2", **dataclasses.asdict(wav2vec2_tiny())})
    assert model.frame_shift == 320  # 10 ms log-Mel frames, conv subsampler stride 2
    assert model.min_samples == 400 + 2 * 160  # one 25 ms window + 2 more hops for the kernel-3 conv
    assert sum(p.numel() for p in model.parameters()) < 3e6
    lengths = torch.tensor([16000, 720])
    with torch.no_grad():
        out = model.eval().encode(torch.randn(2, 16000), lengths)
    assert out.lengths.tolist() == model.num_frames(lengths).tolist() == [48, 1]  # 98 Mel frames -> (98 - 3) // 2 + 1


@pytest.mark.parametrize("variant", ["post_ln_group_norm", "pre_ln_layer_norm"])
def test_encode_shapes_lengths_and_batched_equals_single(variant):
    torch.manual_seed(0)
    kw = {} if variant == "post_ln_group_norm" else {"layer_norm_first": True, "conv_norm": "layer_norm", "conv_bias": True}
    model = build_wav2vec2(_micro(**kw)).eval()
    lengths = torch.tensor([16000, 400, 719, 720, 5000])
    wavs = torch.randn(len(lengths), 16000) * (torch.arange(16000)[None] < lengths[:, None])
    with torch.no_grad():
        out = model.encode(wavs, lengths)
    expected = [(n - 400) // 320 + 1 for n in lengths.tolist()]
    assert out.lengths.tolist() == expected == model.num_frames(lengths).tolist()
    assert out.layer_names == ["latent", "layer_1", "layer_2", "context"] and out.frame_shift == 320
    assert all(h.shape == (5, expected[0], 32) for h in out.hidden_states)
    if variant == "post_ln_group_norm":
        assert out.layer("context") is out.layer("layer_2")
    for i, n in enumerate(lengths.tolist()):
        with torch.no_grad():
            single = model.encode(wavs[i : i + 1, :n], lengths[i : i + 1])
        for a, b in zip(out.hidden_states, single.hidden_states):
            torch.testing.assert_close(a[i, : expected[i]], b[0], atol=1e-5, rtol=1e-4)


def test_encode_refuses_audio_shorter_than_receptive_field():
    model = build_wav2vec2(_micro()).eval()
    with pytest.raises(ValueError, match="receptive field of 400 samples"):
        model.encode(torch.zeros(2, 1000), torch.tensor([1000, 399]))


def test_logmel_frontend_with_conv_subsampler():
    torch.manual_seed(0)
    cfg = _micro(frontend={"name": "logmel", "n_mels": 40}, conv_layers=[(16, 3, 2)])
    model = build_wav2vec2(cfg).eval()
    assert model.frame_shift == 320
    assert model.min_samples == 400 + 2 * 160
    lengths = torch.tensor([8000, 3000])
    wavs = torch.randn(2, 8000) * (torch.arange(8000)[None] < lengths[:, None])
    with torch.no_grad():
        out = model.encode(wavs, lengths)
        single = model.encode(wavs[1:, :3000], lengths[1:])
    assert out.lengths.tolist() == model.num_frames(lengths).tolist()
    torch.testing.assert_close(out.layer("context")[1, : out.lengths[1]], single.layer("context")[0],
                               atol=1e-5, rtol=1e-4)
    loss = model.train().loss({"wavs": wavs, "lengths": lengths})
    assert torch.isfinite(loss.loss)


@pytest.mark.parametrize("name", ["wav2vec2", "data2vec2"])
def test_stacked_mel_frames_without_a_cnn(name):
    """conv_layers: [] (as MelHuBERT): 4 stacked 10 ms log-Mel frames per model frame, batched == single,
    a loss with gradients into the projection of the stacked frames; a waveform frontend is refused."""
    from speechssl.models.data2vec2 import data2vec2_tiny
    torch.manual_seed(0)
    tiny = wav2vec2_tiny() if name == "wav2vec2" else data2vec2_tiny()
    cfg = {"name": name, **dataclasses.asdict(tiny), "conv_layers": [], "stack_frames": 4, "num_layers": 2}
    if name == "data2vec2":
        cfg["top_k"] = 2  # of its 2 layers
    model = build_model(cfg).eval()
    assert model.frame_shift == 640 and model.min_samples == 400 + 3 * 160
    lengths = torch.tensor([8000, 880, 879])
    assert model.num_frames(lengths).tolist() == [12, 1, 0]
    wavs = torch.randn(2, 8000) * (torch.arange(8000)[None] < lengths[:2, None])
    with torch.no_grad():
        out = model.encode(wavs, lengths[:2])
        single = model.encode(wavs[1:, :880])
    assert out.lengths.tolist() == [12, 1] and out.hidden_states[0].shape[-1] == tiny.embed_dim
    for a, b in zip(out.hidden_states, single.hidden_states):
        torch.testing.assert_close(a[1, :1], b[0], atol=1e-5, rtol=1e-4)
    model.train()
    loss = model.loss({"wavs": torch.randn(2, 16000), "lengths": torch.tensor([16000, 12000])})
    loss.loss.backward()
    assert torch.isfinite(loss.loss) and model.feature_projection.projection.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs a frame frontend"):
        build_model({**cfg, "frontend": {"name": "waveform"}})
    with pytest.raises(ValueError, match="model.stack_frames must be >= 1, and 1 with a conv feature encoder"):
        build_model({**cfg, "conv_layers": [[16, 3, 2]]})


def test_loss_metrics_backward_and_overfit_one_batch():
    torch.manual_seed(0)
    model = build_wav2vec2(_micro(dropout=0.0, input_dropout=0.0, target_dropout=0.0, attention_dropout=0.0))
    lengths = torch.tensor([6400, 4000])
    wavs = torch.randn(2, 6400) * (torch.arange(6400)[None] < lengths[:, None])
    batch = {"wavs": wavs, "lengths": lengths, "ids": ["a", "b"]}
    out = model.loss(batch)
    assert out.loss.dtype == torch.float32 and out.loss.dim() == 0
    for key in ("loss", "contrastive", "diversity", "feature_pen", "acc", "codebook_usage", "temperature",
                "code_perplexity_0", "code_perplexity_1", "prob_perplexity_0", "prob_perplexity_1", "mask_ratio"):
        assert key in out.metrics, key
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    # Same mask, distractors and (argmax) targets every step: the model must memorise the batch and
    # beat chance, ln(K + 1), by a wide margin (white noise has nothing to learn otherwise).
    model.eval()
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        torch.manual_seed(1)
        optim.zero_grad()
        out = model.loss(batch)
        out.loss.backward()
        optim.step()
    chance = math.log(model.config.num_negatives + 1)
    assert out.metrics["contrastive"] < chance - 0.3, (chance, out.metrics["contrastive"])
    assert out.metrics["acc"] > 0.2, out.metrics["acc"]


def test_feature_grad_mult_scales_conv_gradient():
    torch.manual_seed(0)
    wavs = torch.randn(1, 4000)
    grads = {}
    for mult in (1.0, 0.1):
        torch.manual_seed(0)
        model = build_wav2vec2(_micro(feature_grad_mult=mult, dropout=0.0, input_dropout=0.0, target_dropout=0.0))
        torch.manual_seed(5)
        model.loss({"wavs": wavs, "lengths": torch.tensor([4000])}).loss.backward()
        grads[mult] = model.feature_encoder.layers[-1].conv.weight.grad.clone()
    # the feature penalty's gradient is scaled too, so everything into the conv stack is x0.1
    torch.testing.assert_close(grads[0.1], grads[1.0] * 0.1, atol=1e-6, rtol=1e-3)


def test_step_update_anneals_temperature_in_state_dict():
    model = build_wav2vec2(_micro(temp_decay=0.9))
    model.step_update(3)
    assert float(model.state_dict()["quantizer.temperature"]) == pytest.approx(2.0 * 0.9**3)
    model.step_update(1000)
    assert model.loss({"wavs": torch.randn(1, 4000)}).metrics["temperature"] == pytest.approx(0.5)


def test_codebook_collapse_warns(caplog):
    model = build_wav2vec2(_micro())
    with torch.no_grad():
        model.quantizer.weight_proj.weight.zero_()
        model.quantizer.weight_proj.bias.zero_()
        model.quantizer.weight_proj.bias[0] = 1e4  # group 0 always picks code 0
        model.quantizer.weight_proj.bias[16] = 1e4  # group 1 always picks code 16
    with caplog.at_level(logging.WARNING):
        out = model.loss({"wavs": torch.randn(2, 16000), "lengths": torch.tensor([16000, 16000])})
    assert out.metrics["code_perplexity_0"] == pytest.approx(1.0)
    assert "codebook collapse" in caplog.text



def test_cross_sample_negatives_widen_the_logits_and_validate(monkeypatch):
    import speechssl.models.wav2vec2 as w2v_module

    real = w2v_module.contrastive_loss
    widths = []

    def spy(*args, **kw):
        out = real(*args, **kw)
        widths.append(out.logits.shape[1])
        return out

    monkeypatch.setattr(w2v_module, "contrastive_loss", spy)
    torch.manual_seed(0)
    batch = {"wavs": torch.randn(2, 6400), "lengths": torch.tensor([6400, 6400])}
    for same, cross in ((10, 0), (10, 7), (0, 7)):
        model = build_wav2vec2(_micro(num_negatives=same, cross_sample_negatives=cross))
        out = model.loss(batch)
        out.loss.backward()
        assert widths[-1] == 1 + same + cross and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="num_negatives"):
        _micro(num_negatives=0)
    with pytest.raises(ValueError, match="cross_sample_negatives"):
        _micro(cross_sample_negatives=-1)


def test_continuous_targets_skip_the_quantizer_and_the_diversity_loss():
    torch.manual_seed(0)
    model = build_wav2vec2(_micro(quantize_targets=False, dropout=0.0, input_dropout=0.0, target_dropout=0.0))
    assert model.project_q.in_features == model.feature_encoder.out_dim  # targets = project_q(LayerNorm(f))
    batch = {"wavs": torch.randn(2, 6400), "lengths": torch.tensor([6400, 6400])}
    out = model.loss(batch)
    m = out.metrics
    assert m["loss"] == pytest.approx(m["contrastive"] + model.config.feature_penalty * m["feature_pen"], rel=1e-5)
    assert m["diversity"] > 0 and "code_perplexity_0" in m  # health numbers of the unused codebook still logged
    out.loss.backward()
    assert all(p.grad is None for p in model.quantizer.parameters())
    assert model.project_q.weight.grad is not None and model.feature_projection.layer_norm.weight.grad is not None


def test_freeze_projection_keeps_the_latent_untrained_and_the_loss_unchanged():
    batch = {"wavs": torch.randn(2, 6400), "lengths": torch.tensor([6400, 6400])}
    losses = {}
    for freeze in (False, True):
        torch.manual_seed(0)
        model = build_wav2vec2(_micro(quantize_targets=False, feature_grad_mult=0.0, freeze_projection=freeze))
        torch.manual_seed(5)
        out = model.loss(batch)
        out.loss.backward()
        losses[freeze] = float(out.loss.detach())
        projection_grads = [p.grad for p in model.feature_projection.parameters()]
        if freeze:
            assert all(g is None for g in projection_grads)
            assert model.mask_emb.grad is not None and model.project_q.weight.grad is not None
        else:
            assert all(g is not None for g in projection_grads)
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)  # same forward pass, same RNG draws
