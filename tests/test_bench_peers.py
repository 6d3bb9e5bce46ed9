"""tools/bench/peers.py and peers_hubert.py: our training losses equal the peers' own on the same batch and weights (tiny).

Only the agreement checks are tested (never timings): HF ``Wav2Vec2ForPreTraining`` with our
masks and distractors, and s3prl's own ``pretrain/apc`` expert on the same fbank features.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "bench"))

import peers  # noqa: E402
import peers_hubert  # noqa: E402


def test_wav2vec2_loss_and_gradients_match_hugging_face():
    out = peers.wav2vec2_check(peers.wav2vec2_config("tiny"), batch_size=2, crop_seconds=0.5)
    assert out["masked_frames"] > 0
    assert out["loss_rel_diff"] < 1e-5, out
    assert out["grad_max_rel_diff"] < 1e-3, out


def test_wav2vec2_check_sees_a_different_loss():
    # the check can fail: a distractor table HF does not get changes our loss only
    cfg = peers.wav2vec2_config("tiny", dropout=0.0, attention_dropout=0.0, input_dropout=0.0, target_dropout=0.0)
    ours, hf = peers.wav2vec2_pair(cfg)
    inputs = peers.wav2vec2_inputs(ours, 2, 0.5)
    shifted = dataclasses.replace(inputs.distractors, distractor_frames=inputs.distractors.distractor_frames.roll(1, 1)
                                  .roll(1, 0))
    ours_fn, hf_fn = peers.wav2vec2_losses(ours, hf, dataclasses.replace(inputs, distractors=shifted))
    with peers.fixed_gumbel(), torch.no_grad():
        a, b = float(ours_fn()), float(hf_fn()) / int(inputs.mask.sum())
    assert abs(a - b) > 1e-4


def test_hf_negatives_are_our_distractors():
    ours, _ = peers.wav2vec2_pair(peers.wav2vec2_config("tiny"))
    inputs = peers.wav2vec2_inputs(ours, 2, 0.5)
    d, frames = inputs.distractors, inputs.mask.shape[1]
    flat = inputs.hf_negatives[d.batch_index, d.frame_index]
    assert torch.equal(flat // frames, d.batch_index[:, None].expand_as(flat))
    assert torch.equal(flat % frames, d.distractor_frames)
    assert bool(inputs.mask[d.batch_index[:, None].expand_as(flat), flat % frames].all())  # masked frames only


def test_apc_loss_and_gradients_match_s3prl_pretrain_expert():
    out = peers.apc_check(peers.apc_config("tiny"), batch_size=2, crop_seconds=0.5)
    assert out["loss_rel_diff"] < 1e-5, out
    assert out["grad_max_rel_diff"] < 1e-3, out
    assert "pretrain" in sys.modules and sys.modules["pretrain"].__file__.endswith("tools/bench/pretrain.py")


# ---- HuBERT vs torchaudio (tools/bench/peers.py hubert_*, extraction.compare_hubert) ----------
def test_hubert_loss_and_gradients_match_torchaudio_with_its_examples_loss():
    out = peers_hubert.hubert_check(peers_hubert.hubert_config("tiny"), "tiny", batch_size=2, crop_seconds=0.5)
    assert out["masked_frames"] > 0
    assert out["loss_rel_diff"] < 1e-5, out
    assert out["grad_max_rel_diff"] < 1e-3, out


def test_hubert_check_sees_other_labels_and_the_feature_penalty():
    # the check can fail: labels torchaudio does not get, or another feature-penalty weight, change one side only
    cfg = peers_hubert.hubert_config("tiny", dropout=0.0, attention_dropout=0.0, input_dropout=0.0)
    ours, ta = peers_hubert.hubert_pair(cfg, "tiny")
    inputs = peers_hubert.hubert_inputs(ours, 2, 0.5)
    n = int(inputs.mask.sum())
    shifted = dataclasses.replace(inputs, labels=(inputs.labels + 1) % cfg.num_classes[0])
    with torch.no_grad():
        ours_fn, ta_fn = peers_hubert.hubert_losses(ours, ta, inputs)
        same = float(ours_fn()), float(ta_fn()) / n
        ours_fn, ta_fn = peers_hubert.hubert_losses(ours, ta, shifted)
        other_labels = float(ours_fn()), float(ta_fn()) / n
        ours_fn, ta_fn = peers_hubert.hubert_losses(ours, ta, inputs)  # torchaudio's side keeps the weight 10
        ours.config.feature_penalty = 0.0
        other_penalty = float(ours_fn()), float(ta_fn()) / n
    assert abs(same[0] - same[1]) < 1e-5 * same[0]
    assert abs(other_labels[0] - other_labels[1]) > 1e-3
    assert abs(other_penalty[0] - other_penalty[1]) > 1e-6


def test_hubert_base_comparison_is_our_recipe_against_hubert_pretrain_base():
    cfg = peers_hubert.hubert_config("base")
    assert (cfg.embed_dim, cfg.num_layers, cfg.num_classes, cfg.final_dim, cfg.layer_drop) == (768, 12, [100], 256, 0.0)
    assert (cfg.dropout, cfg.attention_dropout, cfg.input_dropout, cfg.feature_penalty, cfg.feature_grad_mult) == (
        0.1, 0.1, 0.1, 10.0, 0.1)


def test_hubert_extraction_comparison_gives_the_same_layers():
    import extraction

    out = extraction.compare_hubert({"threads": 1, "size": "tiny", "clip_seconds": [0.5], "repeats": 1})
    assert out["max_abs_diff_every_layer"] < 1e-4, out
    assert out["fp32"]["speechssl"]["median_s"] > 0 and out["speedup"] > 0
