"""Masked autoencoder: tokens (frame and patch mode), random token masking, the encoder sees only the
visible tokens, MSE on normalised masked tokens, frozen features on the full input, a tiny
pretraining run (release + extract) and bit-exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import (
    check_mlp_input_block,
    check_resume_after_crash,
    make_glide_corpus,
    recipe,
    speech_batch,
    tiny_model,
)

from speechssl.cli.main import main
from speechssl.config import to_dict
from speechssl.models import build_model
from speechssl.models import mae as mae_module
from speechssl.models.mae import MAEModel, audio_mae_base, mae_base, mae_tiny, random_token_mask
from speechssl.train.config import load_pretrain_config
from speechssl.upstream import load_encoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_config(**overrides) -> dict:
    return {"name": "mae", **to_dict(mae_tiny()), **overrides}


def patch_config(**overrides) -> dict:
    return tiny_config(**{"mode": "patch", "patch_frames": 4, "patch_channels": 16, **overrides})


# ---------------------------------------------------------------- tokens and masking
def test_tokens_tile_the_frames_in_frame_and_patch_mode():
    b = speech_batch([16000, 11000])
    for cfg, groups, dim in ((tiny_config(), 1, 160), (patch_config(), 5, 64)):
        torch.manual_seed(0)
        model = build_model(cfg)
        feats, _ = model.frontend(b["wavs"], b["lengths"])
        p, steps = model.tokens(b["wavs"], b["lengths"])
        k = model.config.patch_frames
        assert model.groups == groups and p.shape == (2, (feats.shape[1] // k) * groups, dim)
        assert steps.tolist() == model.num_frames(b["lengths"]).tolist()
        # token (t, g) holds frames kt..kt+k-1 of channels g*C..(g+1)*C, frame-major
        t, g = 3, groups - 1
        c = 80 // groups
        want = feats[1, k * t: k * t + k, g * c: (g + 1) * c].reshape(-1)
        assert torch.equal(p[1, t * groups + g], want)


def test_random_token_mask_hides_the_ratio_of_valid_tokens_only():
    valid = torch.arange(40)[None, :] < torch.tensor([40, 21, 3, 1])[:, None]
    idx, pad, masked = random_token_mask(valid, 0.75, torch.Generator().manual_seed(0))
    assert masked.sum(1).tolist() == [30, 15, 2, 0] and not (masked & ~valid).any()
    assert idx.shape == (4, 10) and (~pad).sum(1).tolist() == [10, 6, 1, 1]
    for b in range(4):  # the visible indices are exactly the valid, unmasked tokens
        seen = set(idx[b][~pad[b]].tolist())
        assert seen == set(torch.nonzero(valid[b] & ~masked[b]).flatten().tolist())
    _, _, again = random_token_mask(valid, 0.75, torch.Generator().manual_seed(0))
    _, _, other = random_token_mask(valid, 0.75, torch.Generator().manual_seed(1))
    assert torch.equal(again, masked) and not torch.equal(other, masked)


# ---------------------------------------------------------------- model
def test_encoder_sees_only_the_visible_tokens_and_the_loss_counts_only_masked_ones(monkeypatch):
    torch.manual_seed(0)
    model = build_model(tiny_config(norm_targets=True)).train()
    b = speech_batch([20000, 14000])
    seen = {}
    real_mask, real_encoder = mae_module.random_token_mask, model.encoder.forward

    def spy_mask(valid, ratio):
        seen["mask"] = real_mask(valid, ratio)
        return seen["mask"]

    def spy_encoder(h, padding_mask=None, return_layers=False, positions=None):
        seen["encoder_input"] = h
        return real_encoder(h, padding_mask, return_layers, positions)

    monkeypatch.setattr(mae_module, "random_token_mask", spy_mask)
    monkeypatch.setattr(model.encoder, "forward", spy_encoder)
    p, steps = model.tokens(b["wavs"], b["lengths"])
    target = model.targets(p)
    out = model.loss(b)
    idx, pad, masked = seen["mask"]
    assert seen["encoder_input"].shape[1] == idx.shape[1] == int(steps[0]) - int(steps[0] * 0.75)
    want = (model.patch_embed(p) + model._positions(p.shape[1], 192, model.group_embed, p.device, 0.1))[1, idx[1][~pad[1]]]
    torch.testing.assert_close(seen["encoder_input"][1][~pad[1]], want)
    assert out.metrics["mask_ratio"] == pytest.approx(float(masked.sum() / steps.sum()))
    assert out.metrics["recon_baseline"] == pytest.approx(1.0, abs=1e-4)  # normalised targets
    # a decoder that is right on the masked tokens and wrong on the visible ones: loss 0
    monkeypatch.setattr(model.decoder_pred, "forward", lambda h: torch.where(masked[..., None], target, target + 2.0))
    monkeypatch.setattr(mae_module, "random_token_mask", lambda valid, ratio: seen["mask"])
    out = model.loss(b)
    assert float(out.loss) == 0.0 and out.metrics["recon_unmasked"] == pytest.approx(4.0)
    targets_norm = target[masked]
    assert torch.allclose(targets_norm.mean(-1), torch.zeros(1), atol=1e-5)


def test_frozen_features_run_on_every_token_whatever_the_mask_ratio():
    model = tiny_model("mae")
    torch.manual_seed(0)
    other = build_model(tiny_config(mask_ratio=0.5)).eval()
    other.load_state_dict(model.state_dict())
    b = speech_batch([16000, 9000])
    a, c = model.encode(b["wavs"], b["lengths"]), other.encode(b["wavs"], b["lengths"])
    assert a.lengths.tolist() == [49, 27] and a.frame_shift == 320 and model.min_samples == 560
    assert a.layer_names == ["latent", "layer_1", "layer_2", "layer_3", "context"]
    for x, y in zip(a.hidden_states, c.hidden_states):
        assert x.shape == (2, 49, 192) and torch.equal(x, y)
    with pytest.raises(ValueError, match=r"mae: utterance\(s\) \[0\] have \[559\] samples"):
        model.encode(torch.zeros(1, 559))


def test_patch_mode_features_average_a_time_step_and_bad_geometry_is_refused():
    torch.manual_seed(0)
    model = build_model(patch_config()).eval()
    b = speech_batch([16000, 9000])
    out = model.encode(b["wavs"], b["lengths"])
    assert model.frame_shift == 640 and out.hidden_states[-1].shape == (2, 24, 192) and out.lengths.tolist() == [24, 13]
    model.train()
    metrics = model.loss(b).metrics
    assert metrics["mask_ratio"] == pytest.approx((24 * 5 - 30 + 13 * 5 - 17) / (37 * 5))
    with pytest.raises(ValueError, match="patch_channels 24 does not divide the frontend's 80 channels"):
        build_model(patch_config(patch_channels=24))
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\)"):
        build_model(tiny_config(mask_ratio=1.0))


def test_presets():
    base, audio = mae_base(), audio_mae_base()
    assert (base.mode, base.patch_frames, base.mask_ratio, base.num_layers, base.decoder_layers) == ("frame", 2, 0.75, 12, 2)
    assert (audio.mode, audio.patch_frames, audio.patch_channels, audio.mask_ratio) == ("patch", 16, 16, 0.8)
    assert load_pretrain_config("recipes/pretrain/mae.yaml").model == base


# ---------------------------------------------------------------- pretraining
def test_tiny_pretraining_lowers_the_loss_and_releases_an_encoder(tmp_path):
    train = make_glide_corpus(tmp_path / "data")
    cfg = recipe(tmp_path, model=tiny_config(), data={"max_batch_seconds": 4.0, "crop_seconds": 1.0, "min_seconds": 0.5},
                 optim={"lr": 1e-3, "warmup_steps": 5},
                 train={"max_steps": 30, "log_every": 1, "valid_every": 0, "ckpt_every_steps": 30, "plot": False})
    exp = tmp_path / "exp"
    assert main(["pretrain", "--config", str(cfg), "--train", str(train), "--exp", str(exp)]) == 0
    records = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r.get("split") == "train" and "recon_masked" in r]
    mse = [r["recon_masked"] for r in train_records]
    base = [r["recon_baseline"] for r in train_records]
    assert len(mse) == 30
    # below the first steps and below predicting the utterance mean (0 after CMVN) on the same tokens
    assert np.mean(mse[-8:]) < np.mean(mse[:5]) - 0.03 and np.mean(mse[-8:]) < np.mean(base[-8:]) - 0.02, \
        (mse[:5], mse[-8:], base[-8:])
    enc = load_encoder(str(exp / "encoder"))
    assert enc.layer_names == ["latent", "layer_1", "layer_2", "layer_3", "context"] and enc.frame_shift == 320
    feats = tmp_path / "feats"
    assert main(["extract", "--encoder", str(exp / "encoder"), "--input", str(train), "--out", str(feats),
                 "--layers", "context", "--no-progress"]) == 0
    rows = [line.split("\t") for line in (feats / "index.tsv").read_text().splitlines()[1:]]
    assert len(rows) == 8 and np.load(feats / rows[0][1]).shape == (59, 192)


def test_resume_after_a_crash_is_bit_exact(tmp_path, monkeypatch):
    train = make_glide_corpus(tmp_path / "data", n=6, seconds=0.8)
    sections = {"model": patch_config(), "data": {"max_batch_seconds": 1.6, "crop_seconds": 0.8, "min_seconds": 0.2},
                "train": {"max_steps": 5, "ckpt_every_steps": 2, "valid_every": 0, "plot": False}}
    check_resume_after_crash(monkeypatch, MAEModel, sections, train, tmp_path)


def test_mlp_token_embedding_keeps_what_a_linear_one_averages_away():
    def embed(model, b):
        p, _ = model.tokens(b["wavs"], b["lengths"])
        return model.patch_embed(p)

    def check_mlp(model, b):
        assert type(model.patch_embed).__name__ == "FrameMLP"
        out = model.loss(b)
        assert torch.isfinite(out.loss) and out.metrics["visible_tokens"] > 0
        assert [h.shape for h in model.encode(b["wavs"], b["lengths"]).hidden_states] == [(2, 98, 192)] * 5

    check_mlp_input_block(lambda block: build_model(tiny_config(input_block=block, patch_frames=1)), embed, check_mlp)


def test_rotary_positions_follow_the_visible_tokens_and_stay_out_of_the_features():
    b = speech_batch([16000, 12000], seed=3)
    for config in (tiny_config(positions="rotary"), patch_config(positions="rotary")):
        torch.manual_seed(0)
        model = build_model(config).eval()
        with torch.no_grad():
            p, steps = model.tokens(b["wavs"], b["lengths"])
            tokens = p.shape[1]
            h = model.patch_embed(p) + model._positions(tokens // model.groups, model.config.embed_dim,
                                                        model.group_embed, p.device)
            states = model.encode(b["wavs"], b["lengths"]).hidden_states
            if model.groups == 1:  # the latent is the token embedding + the (constant) group embedding only
                torch.testing.assert_close(states[0][0], model.patch_embed(p)[0] + model.group_embed[0])
            # the encoder on a shuffled subset of tokens, each at its own time step, equals the same subset in order
            idx = torch.randperm(tokens)[: tokens // 3][None]
            shuffled, _ = model.encoder(torch.gather(h[:1], 1, idx[..., None].expand(-1, -1, h.shape[-1])),
                                        positions=model._time(idx))
            order = idx.sort(1).values
            ordered, _ = model.encoder(torch.gather(h[:1], 1, order[..., None].expand(-1, -1, h.shape[-1])),
                                       positions=model._time(order))
            rank = idx[0].argsort().argsort()
            torch.testing.assert_close(shuffled[0], ordered[0, rank], atol=1e-4, rtol=0)
            out = model.loss(b)
        assert torch.isfinite(out.loss) and out.metrics["mask_ratio"] > 0.4
