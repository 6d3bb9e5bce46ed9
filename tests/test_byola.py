"""BYOL-A: the encoder's shapes and layers, the symmetric loss against the EMA target network, the two
augmented views, collapse warning, and a tiny pretraining run with bit-exact resume and a released encoder."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_corpus, recipe, speech_batch

from speechssl.config import to_dict
from speechssl.models import build_model
from speechssl.models.byola import byola_base, byola_tiny, pooled_embedding
from speechssl.train import checkpoint as ckpt_io
from speechssl.train.config import load_pretrain_config
from speechssl.train.trainer import pretrain
from speechssl.upstream import load_encoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SMALL = dict(feature_dim=32, proj_hidden=48, proj_dim=16, conv_channels=8, segment_frames=32, segments_per_utterance=2,
             mixup_memory=8)


def small(**overrides):
    torch.manual_seed(0)
    return build_model({"name": "byola", **to_dict(byola_tiny()), **SMALL, **overrides})


def test_presets_and_encoder_size():
    torch.manual_seed(0)
    base = build_model({"name": "byola", **to_dict(byola_base())})
    assert base.frontend.out_dim == 64 and base.config.segment_frames == 96 and base.config.ema_start == 0.99
    assert 5.2e6 < sum(p.numel() for p in base.encoder.parameters()) < 5.4e6
    with pytest.raises(ValueError, match=r"model.crop_scale must be \[min, max\]"):
        small(crop_scale=[1.5, 0.6])


def test_layers_frames_and_pooled_embedding():
    model = small().eval()
    assert model.frame_shift == 1280 and model.layer_names[0] == "latent" and model.layer_names[-1] == "context"
    b = speech_batch([16000, 9000])
    out = model.encode(b["wavs"], b["lengths"])
    n = model.num_frames(b["lengths"])
    assert out.lengths.tolist() == n.tolist() and all(h.shape[1] == int(n.max()) for h in out.hidden_states)
    dims = [h.shape[-1] for h in out.hidden_states]
    assert dims == [8 * 32, 8 * 16, 8 * 8, 32, 32, 32]
    frames = out.layer("fc_2")[1, : int(n[1])]
    want = frames.max(0).values + frames.mean(0)
    torch.testing.assert_close(out.layer("context")[1, 0], want)
    assert float(out.layer("context")[1, int(n[1]):].detach().abs().max()) == 0.0
    torch.testing.assert_close(pooled_embedding(frames[None], None)[0], want)


def test_loss_is_symmetric_byol_against_the_teacher_and_only_the_online_side_learns():
    model = small().train()
    out = model.loss(speech_batch([16000, 12000]))
    out.loss.backward()
    assert 0.0 <= out.metrics["loss"] <= 8.0 and -1.0 <= out.metrics["cos"] <= 1.0
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (not name.startswith("teacher.")), name
    # at init (teacher == student) the loss is 2 x (2 - 2 cos) averaged: ~ 4 (1 - cos)
    assert out.metrics["loss"] == pytest.approx(4 * (1 - out.metrics["cos"]), rel=1e-4)
    assert int(model.mixup.filled) == 2 * 2 * 2  # both views stored their segments (2 utterances x 2 segments)
    out2 = model.loss(speech_batch([16000, 12000], seed=1))
    assert out2.metrics["mixup_ratio"] > 0  # the memory is filled now: views are mixed


def test_views_differ_and_segments_are_windows_of_the_utterance():
    model = small().train()
    x = torch.randn(2, 50, 64)
    n = torch.tensor([50, 40])
    segs = model.segments(x, n)
    assert segs.shape == (4, 32, 64)
    for k, row in enumerate([0, 0, 1, 1]):
        hits = [s for s in range(int(n[row]) - 31) if torch.equal(x[row, s: s + 32], segs[k])]
        assert hits, k
    lengths = torch.full((4,), 32)
    v1, _ = model._view(segs, lengths)
    v2, _ = model._view(segs, lengths)
    assert v1.shape == segs.shape and not torch.equal(v1, v2)
    assert abs(float(v1.mean())) < 1e-4 and float(v1.std()) == pytest.approx(1.0, abs=1e-3)


def test_crop_freq_false_crops_along_time_only():
    # a segment whose spectrum is the same in every frame: a time-only crop keeps that spectrum (up to
    # the views' standardisation); the published crop also stretches / shifts it along frequency
    spectrum = torch.randn(64, generator=torch.Generator().manual_seed(0))
    segs = spectrum.expand(3, 32, 64).clone()
    lengths = torch.full((3,), 32)
    want = (segs - segs.mean()) / segs.std()
    torch.manual_seed(0)
    time_only, _ = small(crop_freq=False, mixup_ratio=0.0, crop_virtual_scale=1.0, crop_scale=[0.6, 1.0]).train()._view(
        segs, lengths)
    torch.testing.assert_close(time_only, want, atol=1e-4, rtol=1e-4)
    torch.manual_seed(0)
    both, _ = small(mixup_ratio=0.0).train()._view(segs, lengths)
    assert not torch.allclose(both, want, atol=1e-2)


def test_input_norm_utterance_standardises_each_utterance_and_none_keeps_the_frontend_output():
    b = speech_batch([16000, 9000])
    b["wavs"][1] *= 4.0  # louder: per-utterance standardisation hides it, dataset statistics keep it
    x, n = small().log_mel(b["wavs"], b["lengths"])
    for k in range(2):
        valid = x[k, : int(n[k])]
        assert abs(float(valid.mean())) < 1e-4 and float(valid.std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)
    assert float(x[1, int(n[1]):].abs().max()) == 0.0
    model = small(input_norm="none", frontend={**byola_tiny().frontend, "cmvn": "global"})
    model.frontend.set_global_cmvn(torch.full((64,), 2.0), torch.full((64,), 4.0))
    raw, n_raw = model.log_mel(b["wavs"], b["lengths"])
    feats, _ = model.frontend(b["wavs"], b["lengths"])
    assert n_raw.tolist() == n.tolist() and float(raw[1, int(n[1]):].abs().max()) == 0.0
    torch.testing.assert_close(raw[0, : int(n[0])], feats[0, : int(n[0])])
    gain = raw[1, : int(n[1])].mean() - raw[0, : int(n[0])].mean()
    assert float(gain) > 0.1  # the level difference survives (log 4 = 1.39 before the global std of 4)
    with pytest.raises(ValueError, match="model.input_norm: 'batch' is not one of"):
        small(input_norm="batch")


def test_collapse_watch_reads_the_online_embeddings():
    from speechssl.train.diagnostics import health_warnings

    model = small().train()
    out = model.loss(speech_batch([16000, 12000]))
    assert out.metrics["embed_dim"] == 32.0 and out.metrics["embed_eff_rank"] > 1.5
    assert not health_warnings(out.metrics)
    with torch.no_grad():  # a dead encoder: every embedding the same
        model.encoder.fc2.weight.zero_()
        model.encoder.fc2.bias.fill_(1.0)
    assert "embed_eff_rank" in health_warnings(model.loss(speech_batch([16000, 12000])).metrics)


def test_tiny_run_resumes_bit_exactly_and_releases_without_teacher_or_memory(tmp_path):
    train = make_corpus(tmp_path / "data", n=8, seconds=(0.5, 0.8))
    sections = dict(model={"name": "byola", **to_dict(byola_tiny()), **SMALL},
                    data={"max_batch_seconds": 2.0, "crop_seconds": 0.5, "min_seconds": 0.3},
                    optim={"lr": 1e-3, "warmup_steps": 2, "schedule": "constant"},
                    train={"max_steps": 6, "log_every": 1, "valid_every": 0, "ckpt_every_steps": 100, "plot": False})
    ref = pretrain(load_pretrain_config(recipe(tmp_path, **sections)), train, None, tmp_path / "ref")
    pretrain(load_pretrain_config(recipe(tmp_path, **sections), ["train.max_steps=3"]), train, None, tmp_path / "exp")
    second = pretrain(load_pretrain_config(recipe(tmp_path, **sections)), train, None, tmp_path / "exp")
    assert ref.step == second.step == 6
    a = ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(tmp_path / "ref" / "checkpoints"))["model"]
    b = ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(tmp_path / "exp" / "checkpoints"))["model"]
    assert int(a["teacher.last_step"]) == 6 and int(a["mixup.filled"]) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    from safetensors.torch import load_file

    released = load_file(str(tmp_path / "ref" / "encoder" / "model.safetensors"))
    assert not any(k.startswith(("teacher.", "mixup.")) for k in released)
    enc = load_encoder(str(tmp_path / "ref" / "encoder"))
    assert enc.layer_names == ["latent", "conv_2", "conv_3", "fc_1", "fc_2", "context"] and enc.frame_shift == 1280
    records = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert all("embed_eff_rank" in r for r in records if r.get("split") == "train")
