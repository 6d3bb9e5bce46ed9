"""BEST-RQ: the frozen random-projection quantizer, the masked-prediction loss, the model, a tiny pretraining run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import recipe, speech_batch, tiny_model

from speechssl.audio import load_audio
from speechssl.cli.main import main
from speechssl.config import to_dict
from speechssl.corpora.synthetic import SynthConfig, make_speaker, render_utterance, synthesize_corpus
from speechssl.data import read_manifest
from speechssl.models import build_model
from speechssl.models.bestrq import bestrq_base, bestrq_tiny
from speechssl.modules.masked_prediction import LinearHead, masked_prediction_loss
from speechssl.modules.padding import lengths_to_mask, pad_to_batch
from speechssl.modules.random_projection import RandomProjectionQuantizer
from speechssl.upstream import load_encoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_config(**overrides) -> dict:
    return {"name": "bestrq", **to_dict(bestrq_tiny()), **overrides}


# ---------------------------------------------------------------- quantizer
def test_quantizer_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone():
    x = torch.randn(2, 7, 40)
    state = torch.random.get_rng_state()
    a, b = RandomProjectionQuantizer(40, 2, 64, 8, seed=3), RandomProjectionQuantizer(40, 2, 64, 8, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    c = RandomProjectionQuantizer(40, 2, 64, 8, seed=4)
    assert torch.equal(a.projection, b.projection) and torch.equal(a.codebook, b.codebook)
    assert torch.equal(a(x), b(x)) and a(x).shape == (2, 7, 2) and a(x).dtype == torch.long
    assert not torch.equal(a.projection, c.projection) and not torch.equal(a(x), c(x))
    # two models built under different global seeds share the quantizer of their quantizer_seed
    torch.manual_seed(1)
    m1 = build_model(tiny_config())
    torch.manual_seed(2)
    m2 = build_model(tiny_config())
    assert torch.equal(m1.quantizer.codebook, m2.quantizer.codebook)
    assert not torch.equal(m1.head.classifiers[0].weight, m2.head.classifiers[0].weight)


def test_quantizer_codes_are_the_nearest_normalised_codeword():
    q = RandomProjectionQuantizer(12, 1, 32, 4, seed=0)
    x = torch.randn(3, 5, 12)
    p = torch.nn.functional.normalize(x @ q.projection[0], dim=-1)  # [3, 5, 4]
    dist = (p[..., None, :] - q.codebook[0]).norm(dim=-1)  # [3, 5, 32]
    assert torch.equal(q(x)[..., 0], dist.argmin(-1))
    torch.testing.assert_close(q.codebook.norm(dim=-1), torch.ones(1, 32))


def test_quantizer_is_frozen_and_saved_with_the_model():
    torch.manual_seed(0)
    model = build_model(tiny_config()).train()
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith("quantizer.") for n in names)
    assert {"quantizer.projection", "quantizer.codebook"} <= set(model.state_dict())
    before = {k: v.clone() for k, v in model.quantizer.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    out = model.loss(speech_batch([16000, 12000]))
    out.loss.backward()
    opt.step()
    for key, value in model.quantizer.state_dict().items():
        assert not value.requires_grad and torch.equal(value, before[key]), key
    x = torch.randn(1, 3, model.quantizer.in_dim, requires_grad=True)
    assert not model.quantizer(x).requires_grad


def test_quantizer_uses_many_codes_on_normalised_speech_and_few_without_normalisation():
    # three utterances of formant speech (about 8 s): speech-like spectra, silences, onsets
    clips = [torch.from_numpy(render_utterance(make_speaker(i, "formant"), "neutral", "formant", 0, i, SynthConfig())[0])
             for i in range(3)]
    wavs, lengths = pad_to_batch(clips)
    model = tiny_model("bestrq")
    x, n = model.stacked_features(wavs, lengths)
    valid = lengths_to_mask(n, x.shape[1])
    used = model.quantizer(x)[..., 0][valid].unique().numel()
    # the same frames without CMVN: the shared log-Mel offset dominates every projection
    raw, _ = model.frontend.raw_features(wavs, lengths)
    raw_used = model.quantizer(raw[:, : x.shape[1] * 4].reshape(x.shape))[..., 0][valid].unique().numel()
    assert used >= 0.25 * int(valid.sum()) and raw_used <= used / 4, (int(valid.sum()), used, raw_used)


def test_unnormalised_or_waveform_frontend_is_refused():
    with pytest.raises(ValueError, match=r"model.frontend.cmvn: BEST-RQ needs normalised input"):
        build_model(tiny_config(frontend={"name": "logmel", "cmvn": "none"}))
    with pytest.raises(ValueError, match=r"frame frontend with CMVN .* got 'waveform'"):
        build_model(tiny_config(frontend={"name": "waveform"}))


# ---------------------------------------------------------------- masked-prediction loss
def _loss_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    head = LinearHead(8, [5, 7])
    context = torch.randn(2, 6, 8, generator=g)
    targets = torch.stack([torch.randint(0, 5, (2, 6), generator=g), torch.randint(0, 7, (2, 6), generator=g)], -1)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 1:3] = mask[1, 0] = True
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 4:] = False
    return head, context, targets, mask, valid


def test_loss_counts_only_masked_frames_unless_unmasked_weight():
    head, context, targets, mask, valid = _loss_case()
    base = masked_prediction_loss(head, context, targets, mask, valid)
    changed = targets.clone()
    changed[~mask] = (changed[~mask] + 1) % 5  # every unmasked target (valid and padding) differs
    assert torch.equal(masked_prediction_loss(head, context, changed, mask, valid).loss, base.loss)
    assert base.unmasked_loss == 0
    weighted = masked_prediction_loss(head, context, targets, mask, valid, unmasked_weight=0.5)
    weighted_changed = masked_prediction_loss(head, context, changed, mask, valid, unmasked_weight=0.5)
    assert not torch.equal(weighted.loss, weighted_changed.loss)
    torch.testing.assert_close(weighted.loss, base.masked_loss + 0.5 * weighted.unmasked_loss)
    # padding never counts, even with an unmasked weight
    padded = targets.clone()
    padded[~valid] = (padded[~valid] + 1) % 5
    assert torch.equal(masked_prediction_loss(head, context, padded, mask, valid, 0.5).loss, weighted.loss)
    # a masked target does count
    hit = targets.clone()
    hit[0, 1, 0] = (hit[0, 1, 0] + 1) % 5
    assert not torch.equal(masked_prediction_loss(head, context, hit, mask, valid).loss, base.loss)


def test_loss_value_accuracy_and_perplexity_per_codebook():
    head, context, targets, mask, valid = _loss_case()
    out = masked_prediction_loss(head, context, targets, mask, valid)
    logits = head(context[mask])
    want = (torch.nn.functional.cross_entropy(logits[0], targets[mask][:, 0])
            + torch.nn.functional.cross_entropy(logits[1], targets[mask][:, 1])) / 2
    torch.testing.assert_close(out.loss, want)
    assert out.num_masked == 3 and len(out.accuracy) == 2
    for k in range(2):
        assert out.accuracy[k] == pytest.approx(float((logits[k].argmax(-1) == targets[mask][:, k]).float().mean()))
    # targets all equal -> perplexity 1 and one code used
    same = torch.zeros_like(targets)
    flat = masked_prediction_loss(head, context, same, mask, valid)
    assert flat.code_perplexity == [pytest.approx(1.0)] * 2 and flat.codebook_usage == pytest.approx([1 / 5, 1 / 7])


def test_targets_outside_the_head_are_a_clear_error():
    head, context, targets, mask, valid = _loss_case()
    bad = targets.clone()
    bad[0, 4, 1] = 7  # codebook 1 has 7 classes: 0..6
    with pytest.raises(ValueError, match=r"targets of codebook 1 span \[\d+, 7\] on valid frames, outside the head's 7"):
        masked_prediction_loss(head, context, bad, mask, valid)
    bad[0, 4, 1] = targets[0, 4, 1]
    bad[1, 5, 1] = 99  # padding: ignored
    masked_prediction_loss(head, context, bad, mask, valid)


def test_no_masked_frame_gives_a_zero_loss_that_keeps_the_head_in_the_graph():
    head, context, targets, _, valid = _loss_case()
    out = masked_prediction_loss(head, context, targets, torch.zeros_like(valid), valid)
    out.loss.backward()
    assert float(out.loss.detach()) == 0.0 and all(p.grad is not None for p in head.parameters())


# ---------------------------------------------------------------- model
def test_model_masks_with_noise_and_quantizes_the_unmasked_input(monkeypatch):
    torch.manual_seed(0)
    model = build_model(tiny_config(input_dropout=0.0, dropout=0.0)).train()
    b = speech_batch([20000, 16000])
    seen = {}
    quantize, project = model.quantizer.forward, model.input_projection.forward
    monkeypatch.setattr(model.quantizer, "forward", lambda x: seen.setdefault("quantizer", x) is not None and quantize(x))
    monkeypatch.setattr(model.input_projection, "forward",
                        lambda x: seen.setdefault("encoder", x) is not None and project(x))
    out = model.loss(b)
    x, _ = model.stacked_features(b["wavs"], b["lengths"])
    assert torch.equal(seen["quantizer"], x)
    changed = (seen["encoder"] != x).all(-1)  # [B, T]: the frames replaced by noise
    ratio = out.metrics["mask_ratio"]
    assert 0.1 < ratio < 0.6 and changed.any()
    noise = seen["encoder"][changed]
    assert abs(float(noise.std()) - 0.1) < 0.02 and abs(float(noise.mean())) < 0.02
    for key in ("acc", "acc_codebook_0", "code_perplexity_0", "codebook_usage", "masked_ce", "mask_ratio"):
        assert key in out.metrics, key


def test_frame_arithmetic_and_too_short_input():
    model = tiny_model("bestrq")
    assert model.frame_shift == 640 and model.min_samples == 880
    lengths = torch.tensor([880, 1519, 1520, 16000])
    assert model.num_frames(lengths).tolist() == [1, 1, 2, 24]
    out = model.encode(torch.zeros(4, 16000), lengths)
    assert out.lengths.tolist() == [1, 1, 2, 24] and out.hidden_states[0].shape == (4, 24, 192)
    with pytest.raises(ValueError, match=r"bestrq: utterance\(s\) \[0\] have \[879\] samples"):
        model.encode(torch.zeros(1, 879))


def test_conv_subsampler_matches_the_label_rate_and_encodes_a_batch_as_one_at_a_time():
    torch.manual_seed(0)
    model = build_model(tiny_config(conv_subsampler=[[32, 3, 2], [32, 3, 2]], layer_norm_first=True)).eval()
    sub = model.input_projection
    assert sub.conv.receptive_field == 7 and sub.conv.stride == 4 and sub.pad == (1, 2)
    assert model.frame_shift == 640 and model.min_samples == 880
    lengths = torch.tensor([880, 1520, 12000, 16000])
    wavs = speech_batch(lengths.tolist())["wavs"]
    out = model.encode(wavs, lengths)
    x, frames = model.stacked_features(wavs, lengths)
    assert out.lengths.tolist() == frames.tolist() == model.num_frames(lengths).tolist() == [1, 2, 18, 24]
    assert all(h.shape == (4, 24, 192) for h in out.hidden_states)
    assert model.quantizer(x).shape[:2] == out.hidden_states[0].shape[:2]  # one target per encoder frame
    for i, n in enumerate(lengths.tolist()):
        alone = model.encode(wavs[i:i + 1, :n])
        for h_alone, h in zip(alone.hidden_states, out.hidden_states, strict=True):
            torch.testing.assert_close(h_alone[0], h[i, :alone.lengths[0]], atol=1e-4, rtol=1e-4)


def test_conv_subsampler_sees_the_masked_frames_and_its_loss_is_deterministic(monkeypatch):
    cfg = tiny_config(conv_subsampler=[[32, 3, 2], [32, 3, 2]], input_dropout=0.0, dropout=0.0)
    b = speech_batch([20000, 16000])
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model(cfg).train()
        losses.append(model.loss(b))
    assert losses[0].loss.item() == losses[1].loss.item() and losses[0].metrics == losses[1].metrics
    seen = {}
    project = model.input_projection.forward
    monkeypatch.setattr(model.input_projection, "forward",
                        lambda x, valid: seen.setdefault("x", x) is not None and project(x, valid))
    out = model.loss(b)
    x, _ = model.stacked_features(b["wavs"], b["lengths"])
    changed = (seen["x"] != x).all(-1)
    assert changed.any() and 0.1 < out.metrics["mask_ratio"] < 0.6
    out.loss.backward()
    assert all(p.grad is not None for p in model.input_projection.parameters())


@pytest.mark.parametrize("layers, match", [([[32, 3, 2]], "multiply to 2"), ([[32, 1, 2], [32, 3, 2]], "skips"),
                                          ([[32, 3]], "conv_subsampler")])
def test_conv_subsampler_config_errors(layers, match):
    with pytest.raises(ValueError, match=match):
        build_model(tiny_config(conv_subsampler=layers))


def test_presets_sizes():
    torch.manual_seed(0)
    tiny = build_model(tiny_config())
    assert 3e5 < sum(p.numel() for p in tiny.parameters()) < 2e6
    base = bestrq_base()
    assert (base.num_layers, base.embed_dim, base.codebook_size, base.code_dim, base.mask_span) == (12, 576, 8192, 16, 10)
    multi = build_model(tiny_config(num_codebooks=3, codebook_size=32))
    metrics = multi.loss(speech_batch([16000, 12000])).metrics
    assert {f"acc_codebook_{k}" for k in range(3)} | {f"code_perplexity_{k}" for k in range(3)} <= set(metrics)
    assert len(multi.head.classifiers) == 3 and multi.quantizer.codebook.shape == (3, 32, 16)


# ---------------------------------------------------------------- tiny pretraining run
def test_tiny_pretraining_lowers_masked_ce_and_releases_an_encoder(tmp_path):
    # Formant speech, not helpers.make_corpus's noisy sines: after utterance CMVN a stationary sine is
    # white noise, whose random-projection codes nothing can predict.
    train = synthesize_corpus(tmp_path / "data", backend="formant", speakers=2, utts_per_speaker=4)
    cfg = recipe(tmp_path, model=tiny_config(), data={"max_batch_seconds": 8.0, "crop_seconds": 2.0, "min_seconds": 1.0},
                 optim={"lr": 1e-3, "warmup_steps": 5},
                 train={"max_steps": 30, "log_every": 1, "valid_every": 0, "ckpt_every_steps": 30, "plot": False})
    exp = tmp_path / "exp"
    assert main(["pretrain", "--config", str(cfg), "--train", str(train), "--exp", str(exp)]) == 0
    records = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    ce = [r["masked_ce"] for r in records if r.get("split") == "train" and "masked_ce" in r]
    assert len(ce) >= 25
    assert np.mean(ce[-5:]) < np.mean(ce[:5]) - 0.3, (ce[:5], ce[-5:])
    enc = load_encoder(str(exp / "encoder"))
    assert enc.layer_names == ["latent", "layer_1", "layer_2", "layer_3", "context"] and enc.frame_shift == 640
    feats = tmp_path / "feats"
    assert main(["extract", "--encoder", str(exp / "encoder"), "--input", str(train), "--out", str(feats),
                 "--layers", "context", "--no-progress"]) == 0
    rows = dict(line.split("\t")[:2] for line in (feats / "index.tsv").read_text().splitlines()[1:])
    first = read_manifest(train)[0]
    got = np.load(feats / rows[first["id"]])
    wav = load_audio(first["path"])
    out = enc(wav[None], torch.tensor([wav.numel()]))
    want = out.hidden_states[out.layer_names.index("context")][0]
    assert got.shape == tuple(want.shape) == (int(enc.backbone.num_frames(torch.tensor(wav.numel()))), 192)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)


def test_pretraining_with_global_cmvn_estimates_the_statistics_once_and_releases_them(tmp_path):
    # cmvn: global (the paper's normalisation of the quantizer input): the Trainer estimates the
    # statistics on the training manifest (up to 400 evenly spaced utterances) before step 0; the released encoder
    # and the checkpoints carry them, and a resumed run reads them back (the unit test in
    # test_features_cmvn.py checks that set statistics are never recomputed).
    from speechssl.features.base import build_frontend
    from speechssl.features.cmvn import compute_global_cmvn

    train = synthesize_corpus(tmp_path / "data", backend="formant", speakers=2, utts_per_speaker=3)
    frontend = {"name": "logmel", "n_mels": 80, "cmvn": "global"}
    cfg = recipe(tmp_path, model=tiny_config(frontend=frontend),
                 data={"max_batch_seconds": 4.0, "crop_seconds": 1.0, "min_seconds": 0.5},
                 train={"max_steps": 2, "valid_every": 0, "ckpt_every_steps": 2, "plot": False, "seed": 3})
    exp = tmp_path / "exp"
    assert main(["pretrain", "--config", str(cfg), "--train", str(train), "--exp", str(exp)]) == 0
    records = read_manifest(train)  # 6 utterances: all of them
    mean, std = compute_global_cmvn(records, build_frontend({**frontend, "cmvn": "none"}))
    released = load_encoder(str(exp / "encoder")).backbone.frontend
    torch.testing.assert_close(released.cmvn_mean, mean)
    torch.testing.assert_close(released.cmvn_std, std)
    assert main(["pretrain", "--config", str(cfg), "--train", str(train), "--exp", str(exp),
                 "train.max_steps=3"]) == 0
    again = load_encoder(str(exp / "encoder")).backbone.frontend
    assert torch.equal(again.cmvn_mean, released.cmvn_mean) and torch.equal(again.cmvn_std, released.cmvn_std)


# ---------------------------------------------------------------- voice path, frozen input
def _voice_model(voice_input: str, **overrides):
    torch.manual_seed(0)
    model = build_model(tiny_config(voice_input=voice_input, **overrides))
    model.voice_frontend.set_global_cmvn(torch.linspace(-6.0, -2.0, 80), torch.linspace(1.0, 3.0, 80))
    return model


def test_voice_input_default_is_off():
    model = build_model(tiny_config())
    assert model.voice_frontend is None and model.input_projection.in_features == 320
    assert "voice_frontend.cmvn_mean" not in model.state_dict()


@pytest.mark.parametrize("voice_input", ["global", "stats"])
def test_voice_input_concatenates_the_voice_and_quantizes_utterance_normalised_frames(voice_input, monkeypatch):
    model = _voice_model(voice_input, input_dropout=0.0, dropout=0.0).train()
    assert model.input_projection.in_features == 320 + {"global": 320, "stats": 160}[voice_input]
    b = speech_batch([20000, 16000])
    x, frames, voice, _ = model.input_features(b["wavs"], b["lengths"])
    x_plain, frames_plain = model.stacked_features(b["wavs"], b["lengths"])
    assert torch.equal(x, x_plain) and torch.equal(frames, frames_plain)
    raw, raw_lengths = model.frontend.raw_features(b["wavs"], b["lengths"])
    fe = model.voice_frontend
    glob = ((raw - fe.cmvn_mean) / fe.cmvn_std)[:, : x.shape[1] * 4].reshape(x.shape)
    valid = lengths_to_mask(frames, x.shape[1])
    if voice_input == "global":
        torch.testing.assert_close(voice[valid], glob[valid])
    else:
        g = (raw[1, : raw_lengths[1]] - fe.cmvn_mean) / fe.cmvn_std  # the shorter utterance, all its frames
        want = torch.cat([g.mean(0), g.std(0, unbiased=False).log()])
        torch.testing.assert_close(voice[1, : frames[1]], want.expand(int(frames[1]), -1), atol=1e-4, rtol=1e-4)
    assert not voice[(x == 0).all(-1) if voice_input == "global" else ~valid].any()  # padding frames are 0
    seen = {}
    quantize, project = model.quantizer.forward, model.input_projection.forward
    monkeypatch.setattr(model.quantizer, "forward", lambda q: seen.setdefault("quantizer", q) is not None and quantize(q))
    monkeypatch.setattr(model.input_projection, "forward", lambda q: seen.setdefault("input", q) is not None and project(q))
    model.loss(b).loss.backward()
    assert torch.equal(seen["quantizer"], x)
    inp, masked = seen["input"], (seen["input"][..., :320] != x).all(-1)
    assert masked.any() and torch.equal(inp[~masked][:, :320], x[~masked])
    if voice_input == "global":  # the masked frames are noise in both halves
        assert torch.equal(inp[~masked][:, 320:], voice[~masked]) and (inp[masked][:, 320:] != voice[masked]).all()
    else:  # the statistics are never masked
        assert torch.equal(inp[..., 320:], voice)


@pytest.mark.parametrize("voice_input", ["global", "stats"])
def test_voice_input_encodes_a_batch_as_one_at_a_time(voice_input):
    model = _voice_model(voice_input).eval()
    lengths = [880, 12000, 16000]
    wavs = speech_batch(lengths)["wavs"]
    out = model.encode(wavs, torch.tensor(lengths))
    for i, n in enumerate(lengths):
        alone = model.encode(wavs[i:i + 1, :n])
        for h_alone, h in zip(alone.hidden_states, out.hidden_states, strict=True):
            torch.testing.assert_close(h_alone[0], h[i, :alone.lengths[0]], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("overrides, match", [
    ({"voice_input": "mean"}, "voice_input must be one of"),
    ({"voice_input": "global", "conv_subsampler": [[32, 3, 2], [32, 3, 2]]}, "needs the Linear input"),
    ({"voice_input": "stats", "frontend": {"name": "logmel", "n_mels": 80, "cmvn": "global"}}, "cmvn 'utterance'"),
])
def test_voice_input_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        build_model(tiny_config(**overrides))


@pytest.mark.parametrize("conv", [[], [[32, 3, 2], [32, 3, 2]]])
def test_freeze_input_keeps_the_input_projection_at_its_init(conv):
    torch.manual_seed(0)
    model = build_model(tiny_config(freeze_input=True, conv_subsampler=conv))
    init = {k: v.clone() for k, v in model.input_projection.state_dict().items()}
    assert not any(p.requires_grad for p in model.input_projection.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    before = model.encoder.layers[0].ffn.fc1.weight.clone()
    for _ in range(2):
        opt.zero_grad()
        model.loss(speech_batch([16000, 12000])).loss.backward()
        opt.step()
    assert all(p.grad is None for p in model.input_projection.parameters())
    assert all(torch.equal(v, init[k]) for k, v in model.input_projection.state_dict().items())
    assert not torch.equal(before, model.encoder.layers[0].ffn.fc1.weight)
    torch.manual_seed(0)
    trainable = build_model(tiny_config(conv_subsampler=conv))  # the same init, trainable
    assert all(torch.equal(v, init[k]) for k, v in trainable.input_projection.state_dict().items())
    assert all(p.requires_grad for p in trainable.input_projection.parameters())


def test_pretraining_with_the_voice_path_estimates_its_global_statistics(tmp_path):
    from speechssl.features.base import build_frontend
    from speechssl.features.cmvn import compute_global_cmvn

    train = synthesize_corpus(tmp_path / "data", backend="formant", speakers=2, utts_per_speaker=3)
    cfg = recipe(tmp_path, model=tiny_config(voice_input="global"),
                 data={"max_batch_seconds": 4.0, "crop_seconds": 1.0, "min_seconds": 0.5},
                 train={"max_steps": 2, "valid_every": 0, "ckpt_every_steps": 2, "plot": False})
    exp = tmp_path / "exp"
    assert main(["pretrain", "--config", str(cfg), "--train", str(train), "--exp", str(exp)]) == 0
    mean, std = compute_global_cmvn(read_manifest(train), build_frontend({"name": "logmel", "n_mels": 80}))
    backbone = load_encoder(str(exp / "encoder")).backbone
    assert backbone.frontend.config.cmvn == "utterance"
    torch.testing.assert_close(backbone.voice_frontend.cmvn_mean, mean)
    torch.testing.assert_close(backbone.voice_frontend.cmvn_std, std)


def test_quantize_subframes_gives_stack_frames_targets_per_codebook_and_frame(monkeypatch):
    torch.manual_seed(0)
    model = build_model(tiny_config(quantize_subframes=True, num_codebooks=2, codebook_size=32))
    assert model.quantizer.in_dim == 80 and model.head.num_classes == [32] * 8  # 4 frames x 2 codebooks
    b = speech_batch([20000, 16000])
    x, _ = model.stacked_features(b["wavs"], b["lengths"])
    codes = model.targets(x)
    assert codes.shape == (*x.shape[:2], 8)
    for j in range(4):  # column j * 2 + c: codebook c of the 10 ms frame 4 t + j
        torch.testing.assert_close(codes[..., 2 * j: 2 * j + 2], model.quantizer(x[..., 80 * j: 80 * (j + 1)]))
    seen = {}
    quantize = model.quantizer.forward
    monkeypatch.setattr(model.quantizer, "forward", lambda q: seen.setdefault("quantizer", q) is not None and quantize(q))
    out = model.train().loss(b)
    assert seen["quantizer"].shape == (2, x.shape[1] * 4, 80) and "acc_codebook_7" in out.metrics
    torch.manual_seed(0)
    plain = build_model(tiny_config(num_codebooks=2, codebook_size=32))  # the encoder's init is unchanged
    assert all(torch.equal(v, plain.encoder.state_dict()[k]) for k, v in model.encoder.state_dict().items())


def test_quantizer_cmvn_global_quantizes_globally_normalised_frames_and_feeds_the_model_utterance_ones(monkeypatch):
    torch.manual_seed(0)
    model = build_model(tiny_config(quantizer_cmvn="global", input_dropout=0.0, dropout=0.0)).train()
    assert model.input_projection.in_features == 320  # no voice path in the input
    fe = model.voice_frontend
    fe.set_global_cmvn(torch.linspace(-6.0, -2.0, 80), torch.linspace(1.0, 3.0, 80))
    b = speech_batch([20000, 16000])
    x, frames = model.stacked_features(b["wavs"], b["lengths"])
    raw, _ = model.frontend.raw_features(b["wavs"], b["lengths"])
    glob = ((raw - fe.cmvn_mean) / fe.cmvn_std)[:, : x.shape[1] * 4].reshape(x.shape)
    seen = {}
    quantize, project = model.quantizer.forward, model.input_projection.forward
    monkeypatch.setattr(model.quantizer, "forward", lambda q: seen.setdefault("quantizer", q) is not None and quantize(q))
    monkeypatch.setattr(model.input_projection, "forward", lambda q: seen.setdefault("input", q) is not None and project(q))
    model.loss(b)
    valid = lengths_to_mask(frames, x.shape[1])
    torch.testing.assert_close(seen["quantizer"][valid], glob[valid])
    masked = (seen["input"] != x).all(-1)
    assert masked.any() and torch.equal(seen["input"][~masked], x[~masked])
    # features need no targets: extraction skips the global-CMVN pass that only the quantizer reads
    calls = []
    normalise = fe.normalise
    monkeypatch.setattr(fe, "normalise", lambda *a: calls.append(1) or normalise(*a))
    with torch.no_grad():
        model.eval().encode(b["wavs"], b["lengths"])
    assert calls == []
    model.train().loss(b)
    assert calls == [1]
    with pytest.raises(ValueError, match="quantizer_cmvn must be"):
        build_model(tiny_config(quantizer_cmvn="utterance"))
    # the error names the option that needs the utterance-normalised input, not voice_input
    with pytest.raises(ValueError, match="model.quantizer_cmvn 'global' needs model.frontend.cmvn 'utterance'"):
        build_model(tiny_config(quantizer_cmvn="global", frontend={"name": "logmel", "n_mels": 80, "cmvn": "global"}))
