"""TERA / Mockingjay: the three alterations, the L1 loss on altered elements, the model, presets,
a tiny pretraining run (release + extract) and bit-exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import (
    check_mlp_input_block,
    check_resume_after_crash,
    check_rotary_transformer,
    make_corpus,
    make_glide_corpus,
    recipe,
    speech_batch,
    tiny_model,
)

from speechssl.cli.main import main
from speechssl.config import to_dict
from speechssl.models import build_model
from speechssl.models.tera import TERAModel, mockingjay_base, tera_base, tera_tiny
from speechssl.modules import alterations
from speechssl.train.config import load_pretrain_config
from speechssl.upstream import load_encoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_config(**overrides) -> dict:
    return {"name": "tera", **to_dict(tera_tiny()), **overrides}


def _frames(batch: int = 6, frames: int = 200, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([frames - 37 * (i % 3) for i in range(batch)])
    x = torch.randn(batch, frames, dim, generator=g) + 3.0  # no frame is zero before alteration
    x = x * (torch.arange(frames)[None, :, None] < lengths[:, None, None])
    return x, lengths


# ---------------------------------------------------------------- alterations
def test_time_alteration_spans_share_and_zero_random_keep_per_utterance():
    x, lengths = _frames(batch=60)
    out, chosen = alterations.time_alteration(x, lengths, 0.15, 7, 0.1, 0.1, torch.Generator().manual_seed(1))
    valid = torch.arange(x.shape[1])[None] < lengths[:, None]
    assert not (chosen & ~valid).any()
    share = chosen.sum(1).float() / lengths
    assert 0.08 < float(share.mean()) < 0.16  # 15 % of frames start-counted, overlaps make it a little less
    runs = torch.diff(torch.cat([torch.zeros(60, 1), chosen.float(), torch.zeros(60, 1)], 1), dim=1)
    lengths_of_runs = (torch.nonzero(runs == -1)[:, 1] - torch.nonzero(runs == 1)[:, 1])
    assert int(lengths_of_runs.min()) >= 7  # spans of 7 (merged when they overlap or touch)
    kinds = []
    for b in range(60):
        c = chosen[b]
        if (out[b, c] == 0).all():
            kinds.append("zero")
        elif torch.equal(out[b, c], x[b, c]):
            kinds.append("keep")
        else:  # every replaced frame is one of the utterance's own valid frames
            n = int(lengths[b])
            kinds.append("random")
            for frame in out[b, c]:
                assert (frame[None] == x[b, :n]).all(-1).any()
        assert torch.equal(out[b, ~c], x[b, ~c])  # other frames untouched
    assert kinds.count("zero") > 35 and kinds.count("random") >= 1 and kinds.count("keep") >= 1, kinds


def test_frequency_and_magnitude_alterations():
    x, lengths = _frames(batch=40, dim=20)
    stacked = torch.cat([x, x], -1)  # two stacked frames of 20 channels
    out, band = alterations.frequency_alteration(stacked, 20, 0.2, torch.Generator().manual_seed(2))
    widths = band[:, :20].sum(1)
    assert int(widths.max()) <= 4 and int(widths.max()) >= 3 and int(widths.min()) >= 0
    assert torch.equal(band[:, :20], band[:, 20:])  # the same channels of every stacked frame
    assert (out.masked_select(band[:, None, :].expand_as(out)) == 0).all()
    assert torch.equal(out[~band[:, None, :].expand_as(out)], stacked[~band[:, None, :].expand_as(out)])
    valid = torch.arange(x.shape[1])[None] < lengths[:, None]
    noisy_x, noisy = alterations.magnitude_alteration(x, valid, 0.15, 0.2, torch.Generator().manual_seed(3))
    assert not (noisy & ~valid).any() and 0.12 < float(noisy.sum() / valid.sum()) < 0.18
    diff = noisy_x - x
    assert (diff[~noisy] == 0).all() and abs(float(diff[noisy].std()) - 0.2) < 0.01


def test_alter_marks_altered_elements_and_is_seeded():
    x, lengths = _frames()
    a = alterations.alter(x, lengths, channels=8, generator=torch.Generator().manual_seed(5))
    b = alterations.alter(x, lengths, channels=8, generator=torch.Generator().manual_seed(5))
    c = alterations.alter(x, lengths, channels=8, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.x, b.x) and torch.equal(a.altered, b.altered) and not torch.equal(a.altered, c.altered)
    changed = a.x != x
    assert not (changed & ~a.altered).any()  # every change is marked (kept frames are marked unchanged)
    assert (a.altered[a.time]).all() and (a.altered[a.noise]).all()
    valid = torch.arange(x.shape[1])[None] < lengths[:, None]
    assert not (a.altered & ~valid[..., None]).any()
    only_time = alterations.alter(x, lengths, channels=8, frequency=False, magnitude=False,
                                  generator=torch.Generator().manual_seed(5))
    assert torch.equal(only_time.altered, only_time.time[..., None].expand_as(x)) and not only_time.noise.any()


# ---------------------------------------------------------------- model
def test_loss_is_l1_on_altered_elements_only(monkeypatch):
    torch.manual_seed(0)
    model = build_model(tiny_config(dropout=0.0)).train()
    seen = {}
    real_alter = alterations.alter

    def spy(*args, **kwargs):
        seen["alt"] = real_alter(*args, **kwargs)
        return seen["alt"]

    monkeypatch.setattr("speechssl.models.tera.alter", spy)
    b = speech_batch([20000, 14000])
    x, n = model.stacked_features(b["wavs"], b["lengths"])
    # a head that predicts the clean target on altered elements and garbage elsewhere: loss 0
    monkeypatch.setattr(model.head, "forward", lambda h: torch.where(seen["alt"].altered, x, x + 5.0))
    out = model.loss(b)
    assert float(out.loss) == 0.0 and out.metrics["recon_unmasked"] == pytest.approx(5.0)
    monkeypatch.setattr(model.head, "forward", lambda h: torch.where(seen["alt"].altered, x + 1.0, x))
    out = model.loss(b)
    assert float(out.loss) == pytest.approx(1.0) and out.metrics["recon_unmasked"] == 0.0
    assert 0.1 < out.metrics["mask_ratio"] < 0.25 and out.metrics["alter_ratio"] > out.metrics["mask_ratio"] / 2
    assert out.metrics["recon_baseline"] == pytest.approx(float(x[seen["alt"].altered].abs().mean()), rel=1e-5)


def test_loss_uses_the_torch_rng_so_a_seed_repeats_it():
    model = tiny_model("tera").train()
    b = speech_batch([16000, 12000])
    torch.manual_seed(3)
    a = model.loss(b).loss
    torch.manual_seed(3)
    assert torch.equal(model.loss(b).loss, a)
    assert not torch.equal(model.loss(b).loss, a)


def test_linear_target_and_config_errors():
    torch.manual_seed(0)
    model = build_model(tiny_config(target="linear", frequency_alteration=False)).train()
    b = speech_batch([16000, 9000])
    x, n = model.stacked_features(b["wavs"], b["lengths"])
    target = model.targets(b["wavs"], x, n)
    assert target.shape == (2, x.shape[1], 2 * 201) and model.head.output.out_features == 402
    valid = target[1, : int(n[1])].reshape(-1, 201)
    assert abs(float(valid.mean())) < 1e-4 and abs(float(valid.std()) - 1) < 1e-2  # utterance CMVN
    assert (target[1, int(n[1]):] == 0).all()
    out = model.loss(b)
    assert np.isfinite(out.metrics["loss"]) and out.metrics["recon_masked"] > 0
    with pytest.raises(ValueError, match="target 'linear' with model.frequency_alteration"):
        build_model(tiny_config(target="linear"))
    with pytest.raises(ValueError, match="every alteration is off"):
        build_model(tiny_config(time_alteration=False, frequency_alteration=False, magnitude_alteration=False))
    with pytest.raises(ValueError, match=r"time_random_prob \+ model.time_keep_prob must be <= 1"):
        build_model(tiny_config(time_random_prob=0.6, time_keep_prob=0.6))
    with pytest.raises(ValueError, match="frame frontend with CMVN .* got 'waveform'"):
        build_model(tiny_config(frontend={"name": "waveform"}))


def test_frame_arithmetic_and_too_short_input():
    model = tiny_model("tera")
    assert model.frame_shift == 320 and model.min_samples == 560
    lengths = torch.tensor([560, 879, 880, 16000])
    assert model.num_frames(lengths).tolist() == [1, 1, 2, 49]
    out = model.encode(torch.zeros(4, 16000), lengths)
    assert out.lengths.tolist() == [1, 1, 2, 49] and out.hidden_states[0].shape == (4, 49, 192)
    assert out.layer_names == ["latent", "layer_1", "layer_2", "layer_3", "context"]
    norm = model.encoder.layer_norm  # pre-LN: context = the final LayerNorm of layer_3
    torch.testing.assert_close(out.hidden_states[-1], norm(out.hidden_states[-2]))
    with pytest.raises(ValueError, match=r"tera: utterance\(s\) \[0\] have \[559\] samples"):
        model.encode(torch.zeros(1, 559))


def test_presets_match_s3prl():
    base, mj = tera_base(), mockingjay_base()
    assert (base.num_layers, base.embed_dim, base.num_heads, base.ffn_dim, base.time_span) == (3, 768, 12, 3072, 7)
    assert base.time_alteration and base.frequency_alteration and base.magnitude_alteration
    assert (mj.num_layers, mj.target, mj.frequency_alteration, mj.magnitude_alteration) == (12, "linear", False, False)
    model = build_model({"name": "tera", **to_dict(base)}, init_weights=False)
    encoder = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head."))
    assert 21.2e6 < encoder < 21.4e6, encoder
    cfg = load_pretrain_config("recipes/pretrain/tera.yaml")
    assert cfg.model == base and cfg.optim.lr == 2e-4
    assert load_pretrain_config("recipes/pretrain/mockingjay.yaml").model == mj


# ---------------------------------------------------------------- pretraining
def test_tiny_pretraining_lowers_the_loss_and_releases_an_encoder(tmp_path):
    train = make_glide_corpus(tmp_path / "data")
    cfg = recipe(tmp_path, model=tiny_config(), data={"max_batch_seconds": 4.0, "crop_seconds": 1.0, "min_seconds": 0.5},
                 optim={"lr": 1e-3, "warmup_steps": 5},
                 train={"max_steps": 30, "log_every": 1, "valid_every": 0, "ckpt_every_steps": 30, "plot": False})
    exp = tmp_path / "exp"
    assert main(["pretrain", "--config", str(cfg), "--train", str(train), "--exp", str(exp)]) == 0
    records = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    l1 = [r["recon_masked"] for r in records if r.get("split") == "train" and "recon_masked" in r]
    base = [r["recon_baseline"] for r in records if r.get("split") == "train" and "recon_baseline" in r]
    assert len(l1) == 30
    # below the first steps and below predicting the utterance mean (0 after CMVN) on the same elements
    assert np.mean(l1[-8:]) < np.mean(l1[:5]) - 0.03 and np.mean(l1[-8:]) < np.mean(base[-8:]) - 0.03, \
        (l1[:5], l1[-8:], base[-8:])
    enc = load_encoder(str(exp / "encoder"))
    assert enc.layer_names == ["latent", "layer_1", "layer_2", "layer_3", "context"] and enc.frame_shift == 320
    feats = tmp_path / "feats"
    assert main(["extract", "--encoder", str(exp / "encoder"), "--input", str(train), "--out", str(feats),
                 "--layers", "layer_2", "--no-progress"]) == 0
    rows = [line.split("\t") for line in (feats / "index.tsv").read_text().splitlines()[1:]]
    assert len(rows) == 8 and np.load(feats / rows[0][1]).shape[1] == 192


def test_resume_after_a_crash_is_bit_exact(tmp_path, monkeypatch):
    train = make_corpus(tmp_path / "data", n=8, seconds=(0.5, 0.8))
    sections = {"model": tiny_config(), "data": {"max_batch_seconds": 1.0, "crop_seconds": 0.5, "min_seconds": 0.2},
                "train": {"max_steps": 5, "ckpt_every_steps": 2, "valid_every": 0, "plot": False}}
    check_resume_after_crash(monkeypatch, TERAModel, sections, train, tmp_path)


# ---------------------------------------------------------------- health diagnostics
def test_masked_reconstruction_health_warning_and_inspect_rows(tmp_path, capsys):
    from speechssl.train.diagnostics import RECON_GRACE_STEPS, health_warnings

    bad = {"step": RECON_GRACE_STEPS, "recon_masked": 0.80, "recon_baseline": 0.79, "recon_unmasked": 0.31}
    line = health_warnings(bad)["recon_masked"]
    assert line.startswith("masked reconstruction no better than predicting the mean: recon_masked 0.8 >= "
                           "recon_baseline 0.79 at step 200 (recon_unmasked 0.31)")
    assert not health_warnings({**bad, "step": RECON_GRACE_STEPS - 1})  # early steps: the model is still learning
    assert not health_warnings({**bad, "recon_masked": 0.6})
    exp = tmp_path / "exp"
    exp.mkdir()
    lines = [{"split": "train", "step": 10, "loss": 0.9, "recon_masked": 0.9, "recon_unmasked": 0.8,
              "recon_baseline": 0.8, "alter_ratio": 0.3, "time": 1.0},
             {"split": "train", "step": 300, "loss": 0.85, "recon_masked": 0.85, "recon_unmasked": 0.2,
              "recon_baseline": 0.8, "alter_ratio": 0.3, "time": 30.0},
             {"split": "probe", "step": 300, "probe/speaker/context": 0.5, "health/context/eff_rank": 1.2,
              "health/context/dim": 192.0, "health/context/std_mean": 0.4}]
    (exp / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["inspect", str(exp)]) == 0
    out = capsys.readouterr().out
    rows = [r.split() for r in out.splitlines()]
    assert ["recon_masked", "0.9", "0.85"] in rows and ["recon_unmasked", "0.8", "0.2"] in rows
    assert ["recon_baseline", "0.8", "0.8"] in rows and ["health/context/eff_rank", "1.2", "1.2"] in rows
    assert "masked reconstruction no better than predicting the mean" in out
    assert "the context features have effective rank 1.20 of 192 dimensions" in out


def test_mlp_input_block_keeps_what_a_linear_one_averages_away():
    # unstacked: stacked, the even and odd frames' means are not 0 each
    def embed(model, b):
        x, _ = model.stacked_features(b["wavs"], b["lengths"])
        return model.input_projection(x)

    def check_mlp(model, b):
        assert type(model.input_projection).__name__ == "FrameMLP"
        for linear in (model.input_projection.dense, model.input_projection.output):  # BERT init too
            assert abs(float(linear.weight.detach().std()) - 0.02) < 0.002 and torch.count_nonzero(linear.bias) == 0
        out = model.loss(b)
        assert torch.isfinite(out.loss) and out.metrics["recon_baseline"] > 0
        assert [h.shape for h in model.encode(b["wavs"], b["lengths"]).hidden_states] == [(2, 98, 192)] * 5

    check_mlp_input_block(lambda block: build_model(tiny_config(input_block=block, stack_frames=1)), embed, check_mlp)


def test_global_cmvn_statistics_come_from_the_training_manifest_and_ship_with_the_encoder(tmp_path):
    from speechssl.features import build_frontend, compute_global_cmvn

    train = make_glide_corpus(tmp_path / "data")  # 8 utterances: fill_global_cmvn takes them all
    frontend = {"name": "fbank", "num_mel_bins": 80, "cmvn": "global"}
    cfg = recipe(tmp_path, model=tiny_config(frontend=frontend),
                 data={"max_batch_seconds": 4.0, "crop_seconds": 1.0, "min_seconds": 0.5},
                 train={"max_steps": 2, "log_every": 1, "valid_every": 0, "ckpt_every_steps": 2, "plot": False})
    exp = tmp_path / "exp"
    assert main(["pretrain", "--config", str(cfg), "--train", str(train), "--exp", str(exp)]) == 0
    mean, std = compute_global_cmvn(train, build_frontend(frontend))
    released = load_encoder(str(exp / "encoder")).backbone.frontend
    torch.testing.assert_close(released.cmvn_mean, mean)
    torch.testing.assert_close(released.cmvn_std, std)
    assert int(released.cmvn_frames) > 0


def test_rotary_positions_keep_position_vectors_out_of_the_features():
    check_rotary_transformer()
    b = speech_batch([16000, 12000], seed=3)
    models = {}
    for positions in ("sinusoidal", "rotary"):
        torch.manual_seed(0)
        models[positions] = build_model(tiny_config(positions=positions)).eval()
    with torch.no_grad():
        x, _ = models["rotary"].stacked_features(b["wavs"], b["lengths"])
        projected = models["rotary"].input_projection(x)
        latent = {k: m.encode(b["wavs"], b["lengths"]).hidden_states[0] for k, m in models.items()}
        out = models["rotary"].loss(b)
    torch.testing.assert_close(latent["rotary"][0], projected[0])  # no sinusoid added
    assert float((latent["sinusoidal"][0] - projected[0]).abs().max()) > 1e-3
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="model.positions: 'learned' is not one of"):
        build_model(tiny_config(positions="learned"))


def test_norm_targets_normalise_each_target_frame():
    b = speech_batch([16000, 12000], seed=3)
    torch.manual_seed(0)
    model = build_model(tiny_config(norm_targets=True)).eval()
    with torch.no_grad():
        x, frames = model.stacked_features(b["wavs"], b["lengths"])
        target = model.targets(b["wavs"], x, frames)
    valid = target[0, : int(frames[0])]
    torch.testing.assert_close(valid.mean(-1), torch.zeros(valid.shape[0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(valid.var(-1, unbiased=False), torch.ones(valid.shape[0]), atol=1e-3, rtol=0)
    assert float((target - x).abs().max()) > 0.1
    torch.testing.assert_close(build_model(tiny_config()).targets(b["wavs"], x, frames), x)  # default: the frames
