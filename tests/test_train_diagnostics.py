"""Health diagnostics against constructed collapsed models (a constant encoder, a quantizer using
one code, a model that masks nothing), per-block gradient norms, and ``speechssl inspect``."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from helpers import ToyConfig, ToyLinear, make_corpus, recipe

from speechssl.cli.main import main
from speechssl.models.base import MODELS, EncoderOutput, ModelSpec
from speechssl.models.wav2vec2 import Wav2Vec2Config, build_wav2vec2
from speechssl.train.config import load_pretrain_config
from speechssl.train.diagnostics import (
    FeatureSample,
    HealthWatch,
    block_grad_norms,
    effective_rank,
    feature_health,
    health_warnings,
    run_report,
)
from speechssl.train.trainer import pretrain


class ToyConstant(ToyLinear):
    """``toy_linear`` whose encoder output is the same vector for every frame: a collapsed representation."""

    name = "toy_constant"

    def encode(self, wavs, lengths) -> EncoderOutput:
        x, n = self._frames(wavs, lengths)
        h = torch.tanh(self.enc.bias).expand(x.shape[0], x.shape[1], -1)
        return EncoderOutput([h, h], n, self.layer_names, self.frame_shift)


if "toy_constant" not in MODELS:
    MODELS["toy_constant"] = ModelSpec(ToyConfig, ToyConstant)


class ToyMasksNothing(ToyLinear):
    """``toy_linear`` reporting that its masked objective masked no frame."""

    name = "toy_masks_nothing"

    def loss(self, batch):
        out = super().loss(batch)
        out.metrics["mask_ratio"] = 0.0
        return out


if "toy_masks_nothing" not in MODELS:
    MODELS["toy_masks_nothing"] = ModelSpec(ToyConfig, ToyMasksNothing)


def test_effective_rank_by_hand():
    # two orthogonal directions of equal energy -> singular values (a, a) -> exp(ln 2) = 2
    assert effective_rank(np.array([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]])) == pytest.approx(2.0)
    # frames on one line -> 1; constant frames -> 0
    line = np.outer(np.arange(10.0), [1.0, 2.0, -1.0])
    assert effective_rank(line) == pytest.approx(1.0)
    assert effective_rank(np.ones((20, 4))) == 0.0
    # isotropic noise in 8 dims: close to 8
    assert 7.0 < effective_rank(np.random.default_rng(0).normal(size=(4000, 8))) <= 8.0


def test_constant_encoder_warns_once_until_it_recovers(caplog):
    healthy = feature_health(FeatureSample("context", np.random.default_rng(0).normal(size=(500, 16))))
    assert health_warnings(healthy) == {}
    collapsed = feature_health(FeatureSample("context", np.tile(np.arange(16.0), (500, 1))))
    assert collapsed["health/context/std_mean"] == 0.0 and collapsed["health/context/eff_rank"] == 0.0
    watch = HealthWatch()
    with caplog.at_level(logging.WARNING):
        first = watch.check({"step": 5, **collapsed})
        second = watch.check({"step": 6, **collapsed})
        watch.check({"step": 7, **healthy})
        third = watch.check({"step": 8, **collapsed})
    assert len(first) == 2 and second == [] and len(third) == 2
    assert "step 5: representation collapse: the context features are constant" in caplog.text
    assert "effective rank 0.00 of 16 dimensions" in caplog.text


def test_trainer_warns_about_a_constant_encoder(tmp_path, caplog):
    train = make_corpus(tmp_path / "data", n=12)
    cfg = load_pretrain_config(recipe(tmp_path, model={"name": "toy_constant"}, train={
        "max_steps": 2, "valid_every": 0,
        "probe": {"labels": ["speaker"], "label_from": "train", "per_class": 4, "every": 10}}))
    with caplog.at_level(logging.WARNING):
        pretrain(cfg, train, None, tmp_path / "exp")
    lines = [r.getMessage() for r in caplog.records if "representation collapse" in r.getMessage()]
    assert lines and lines[0].startswith("step 0: representation collapse: the context features are constant")
    report = run_report(tmp_path / "exp")
    assert "warnings at the last step:" in report and "representation collapse" in report


def test_trainer_warns_once_about_a_bad_training_metric(tmp_path, caplog):
    train = make_corpus(tmp_path / "data", n=6)
    cfg = load_pretrain_config(recipe(tmp_path, model={"name": "toy_masks_nothing"},
                                      train={"max_steps": 3, "valid_every": 0}))
    with caplog.at_level(logging.WARNING):
        pretrain(cfg, train, None, tmp_path / "exp")
    lines = [r.getMessage() for r in caplog.records if "frames masked" in r.getMessage()]
    assert lines == ["step 1: only 0.0 % of frames masked: the masked objective has little to predict; "
                     "raise mask_prob or lower mask_span"]


def _micro_wav2vec2(**kw) -> Wav2Vec2Config:
    base = dict(conv_layers=[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2, embed_dim=32, num_layers=2,
                num_heads=4, ffn_dim=64, pos_conv_kernel=16, pos_conv_groups=4, num_vars=16, vq_dim=16,
                final_dim=16, num_negatives=10, layer_drop=0.0)
    base.update(kw)
    return Wav2Vec2Config(**base)


def test_quantizer_using_one_code_warns():
    batch = {"wavs": torch.randn(2, 16000), "lengths": torch.tensor([16000, 16000])}
    torch.manual_seed(0)
    model = build_wav2vec2(_micro_wav2vec2())
    assert not [k for k in health_warnings(model.loss(batch).metrics) if k.startswith("code_perplexity")]
    with torch.no_grad():
        model.quantizer.weight_proj.weight[:16].zero_()  # rows of group 0 (num_vars=16)
        model.quantizer.weight_proj.bias[:16].zero_()
        model.quantizer.weight_proj.bias[0] = 1e4  # group 0 always picks code 0; group 1 untouched
    bad = health_warnings(model.loss(batch).metrics)
    assert list(bad) == ["code_perplexity_0"]
    assert bad["code_perplexity_0"].startswith("quantizer collapse: code_perplexity_0 = 1.00, about one code in use")


def test_masking_nothing_warns():
    model = build_wav2vec2(_micro_wav2vec2(mask_prob=0.0, min_masks=0))
    metrics = model.loss({"wavs": torch.randn(2, 16000), "lengths": torch.tensor([16000, 16000])}).metrics
    assert metrics["mask_ratio"] == 0.0
    assert health_warnings(metrics)["mask_ratio"].startswith("only 0.0 % of frames masked")


def test_block_grad_norms_recover_the_norms_before_clipping():
    model = ToyLinear(ToyConfig())
    batch = {"wavs": torch.randn(2, 320), "lengths": torch.tensor([320, 200]), "ids": ["a", "b"]}
    model.loss(batch).loss.mul(100).backward()
    before = block_grad_norms(model)
    expected = {f"grad_norm/{n}": float(torch.stack([p.grad.norm() for p in m.parameters()]).norm())
                for n, m in model.named_children() if list(m.parameters())}
    assert before == pytest.approx(expected) and set(before) == {"grad_norm/enc", "grad_norm/out"}
    total = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01))
    assert total > 0.01  # the clip did scale
    assert block_grad_norms(model, total=total) == pytest.approx(expected)
    model.zero_grad(set_to_none=True)
    assert block_grad_norms(model, total=None) == {"grad_norm/enc": 0.0, "grad_norm/out": 0.0}


def test_inspect_prints_health_and_probe_tables(tmp_path, capsys):
    exp = tmp_path / "exp"
    exp.mkdir()
    lines = [
        {"split": "probe", "step": 0, "probe/speaker/latent": 0.25, "probe/speaker/context": 0.5,
         "probe_chance/speaker": 0.25, "health/context/std_mean": 0.3, "health/context/eff_rank": 5.0,
         "health/context/dim": 8.0, "probe_seconds": 0.5},
        {"split": "train", "step": 10, "loss": 2.0, "grad_norm": 1.5, "grad_norm/encoder": 1.2,
         "code_perplexity_0": 12.0, "codebook_usage": 0.5, "mask_ratio": 0.45, "time": 10.0},
        {"split": "train", "step": 20, "loss": 1.0, "grad_norm": 0.5, "grad_norm/encoder": 0.4,
         "code_perplexity_0": 1.2, "codebook_usage": 0.03, "mask_ratio": 0.44, "time": 20.0},
        {"split": "probe", "step": 20, "probe/speaker/latent": 0.375, "probe/speaker/context": 0.875,
         "probe_chance/speaker": 0.25, "health/context/std_mean": 0.2, "health/context/eff_rank": 4.0,
         "health/context/dim": 8.0, "probe_seconds": 0.5},
    ]
    (exp / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["inspect", str(exp)]) == 0
    out = capsys.readouterr().out
    assert f"{exp}: model ?, 20 steps logged, 20.0 s of training (1.0 s of it probing, 5.0 %)" in out
    rows = [line.split() for line in out.splitlines()]
    assert ["code_perplexity_0", "12", "1.2"] in rows and ["codebook_usage", "0.5", "0.03"] in rows
    assert ["grad_norm/encoder", "1.2", "0.4"] in rows and ["mask_ratio", "0.45", "0.44"] in rows
    assert ["health/context/eff_rank", "5", "4"] in rows and ["health/context/std_mean", "0.3", "0.2"] in rows
    assert "quantizer collapse: code_perplexity_0 = 1.20, about one code in use (3.0 % of the codebook used)" in out
    table = out[out.index("probe accuracy: speaker"):].splitlines()
    assert table[1].split() == ["step", "latent", "context", "chance"]
    assert table[3].split() == ["0", "0.25", "0.5", "0.25"] and table[4].split() == ["20", "0.375", "0.875", "0.25"]


def test_inspect_of_a_folder_without_metrics_is_one_line_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"speechssl inspect: error: {tmp_path}: no metrics.jsonl (not a pretraining experiment folder, " \
                  "or not started)"
