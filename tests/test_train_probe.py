"""The live probe: the ridge classifier against hand-computed and independent (scikit-learn)
answers, fixed seeded grouped splits, eval mode and untouched RNG streams, a run with the probe
training the same weights as one without, exact resume, DDP, the loss-curve panel."""

from __future__ import annotations

import json
import logging
import math
import random
import sys

import numpy as np
import pytest
import torch
from helpers import CRASH, ToyConfig, ToyLinear, make_corpus, recipe
from sklearn.linear_model import RidgeClassifier

from speechssl.config import ConfigError
from speechssl.models.base import MODELS, EncoderOutput, ModelSpec
from speechssl.train import checkpoint as ckpt_io
from speechssl.train.config import load_pretrain_config
from speechssl.train.probe import (
    LabelSplit,
    LiveProbe,
    ProbeConfig,
    choose_utterances,
    pool_mean_std,
    ridge_accuracy,
)
from speechssl.train.trainer import pretrain

PROBE = {"labels": ["speaker"], "label_from": "train", "per_class": 4, "every": 3}


class ToyDrawsRandom(ToyLinear):
    """``toy_linear`` whose ``encode`` also draws from the torch, numpy and python global RNGs
    (as a stochastic layer might even in eval mode): a probe that did not restore them would shift
    the training noise of every later step."""

    name = "toy_draws_random"

    def encode(self, wavs, lengths) -> EncoderOutput:
        torch.rand(1), np.random.rand(), random.random()
        self.encoded_in_train_mode = getattr(self, "encoded_in_train_mode", False) or self.training
        return super().encode(wavs, lengths)


if "toy_draws_random" not in MODELS:
    MODELS["toy_draws_random"] = ModelSpec(ToyConfig, ToyDrawsRandom)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), n=18)


def _weights(exp):
    return ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(exp / "checkpoints"))["model"]


def _lines(exp, split=None):
    lines = [json.loads(x) for x in (exp / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if split is None or x["split"] == split]


# ---------------------------------------------------------------- the classifier
def test_ridge_accuracy_matches_a_hand_computed_probe():
    # 1-D, 2 classes: standardised x_train = [-2, -1, 1, 2] / sqrt(2.5), lam = ridge * N = 4,
    # w = (4 + 4)^-1 * X^T Yc = +-3 / (8 sqrt(2.5)): class 1 scores 0.5 + 0.15 * (x - 2) / 2.5 * ... > 0.5
    # exactly when x > 2 (the train mean), so the probe predicts [0, 1, 0, 1] for [1.9, 2.1, -5, 10].
    x_train = np.array([[0.0], [1.0], [3.0], [4.0]])
    y_train = np.array([0, 0, 1, 1])
    x_test = np.array([[1.9], [2.1], [-5.0], [10.0]])
    assert ridge_accuracy(x_train, y_train, x_test, np.array([0, 1, 0, 1]), 1.0) == 1.0
    assert ridge_accuracy(x_train, y_train, x_test, np.array([0, 1, 1, 1]), 1.0) == 0.75
    # a constant feature carries no information and must not break the solve
    assert ridge_accuracy(np.hstack([x_train, np.ones((4, 1))]), y_train, np.hstack([x_test, np.ones((4, 1))]),
                          np.array([0, 1, 0, 1]), 1.0) == 1.0


@pytest.mark.parametrize("n_train,dim", [(30, 80), (90, 6)])  # dual (N <= F) and primal solves
@pytest.mark.parametrize("ridge", [0.01, 1.0, 10.0])
def test_ridge_accuracy_equals_scikit_learn_ridge_classifier(n_train, dim, ridge):
    rng = np.random.default_rng(n_train + dim)
    centres = rng.normal(size=(3, dim))
    y_train, y_test = np.arange(n_train) % 3, np.arange(300) % 3
    x_train = centres[y_train] + 1.5 * rng.normal(size=(n_train, dim)) * rng.uniform(0.1, 5, dim)
    x_test = centres[y_test] + 1.5 * rng.normal(size=(300, dim)) * rng.uniform(0.1, 5, dim)
    mean, std = x_train.mean(0), x_train.std(0)
    reference = RidgeClassifier(alpha=ridge * n_train).fit((x_train - mean) / std, y_train)
    expected = float((reference.predict((x_test - mean) / std) == y_test).mean())
    assert ridge_accuracy(x_train, y_train, x_test, y_test, ridge) == expected
    assert 0.34 < expected < 1.0  # a probe that can be wrong in both directions


def test_pool_mean_std_ignores_padding():
    h = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [99.0, 99.0]]])
    pooled = pool_mean_std(h, torch.tensor([2]))
    torch.testing.assert_close(pooled, torch.tensor([[2.0, 4.0, 1.0, 2.0]], dtype=torch.float64))


# ---------------------------------------------------------------- the probe set
def test_choice_is_seeded_balanced_and_grouped():
    records = [{"id": f"u{s}_{i}", "speaker": f"s{s}", "style": ["calm", "angry"][i % 2]}
               for s in range(6) for i in range(10)]
    cfg = ProbeConfig(labels=["speaker", "style"], label_from="train", per_class=6, group_by="speaker", seed=3)
    utts, splits = choose_utterances(records, cfg, "m.jsonl")
    again = choose_utterances(list(reversed(records)), cfg, "m.jsonl")
    assert [u["id"] for u in utts] == [u["id"] for u in again[0]]
    assert [(s.train, s.test) for s in splits] == [(s.train, s.test) for s in again[1]]
    speaker, style = splits
    assert len(speaker.classes) == 6 and len(speaker.train) == len(speaker.test) == 18  # 3 + 3 per speaker
    # style: fit and held-out speakers are disjoint (group_by), 3 + 3 utterances per style
    fit_spk = {utts[i]["speaker"] for i in style.train}
    held_spk = {utts[i]["speaker"] for i in style.test}
    assert fit_spk and held_spk and not fit_spk & held_spk
    assert np.bincount(style.y_train).tolist() == [3, 3] and np.bincount(style.y_test).tolist() == [3, 3]
    other, _ = choose_utterances(records, ProbeConfig(labels=["speaker"], label_from="train", per_class=6, seed=4), "m")
    assert {u["id"] for u in other} != {utts[i]["id"] for i in speaker.train + speaker.test}  # the seed draws


def test_bad_probe_configs_name_the_key(corpus, caplog):
    with pytest.raises(ConfigError, match="exactly one of manifest"):
        ProbeConfig(labels=["speaker"])
    with pytest.raises(ConfigError, match="per_class must be >= 2"):
        ProbeConfig(per_class=1)
    # a labelled probe manifest must carry its labels ...
    with pytest.raises(ConfigError, match="has no field 'emotion' \\(fields: speaker\\)"):
        LiveProbe.build(ProbeConfig(labels=["emotion"], manifest=str(corpus)), {}, 32)
    with pytest.raises(ConfigError, match="label 'id' has 18 class"):  # one utterance per class: nothing held out
        LiveProbe.build(ProbeConfig(labels=["id"], manifest=str(corpus)), {}, 32)
    # ... a recipe's training manifest (label_from) may not: the probe keeps what it can use
    with caplog.at_level(logging.WARNING):
        probe = LiveProbe.build(ProbeConfig(labels=["emotion", "speaker"], label_from="train"), {"train": corpus}, 32)
        assert [s.label for s in probe.splits] == ["speaker"]
        assert LiveProbe.build(ProbeConfig(labels=["id"], label_from="train"), {"train": corpus}, 32) is None
    assert "has no field 'emotion' (fields: speaker); not probing emotion" in caplog.text
    assert "none of the labels ['id'] is usable" in caplog.text


# ---------------------------------------------------------------- one probe point
def test_measure_equals_a_hand_computed_probe_in_eval_mode_with_rngs_untouched():
    torch.manual_seed(0)
    model = ToyDrawsRandom(ToyConfig())
    model.train()
    # 3 classes x 4 utterances of noisy sines of class-specific frequency, lengths 0.05 - 0.1 s
    rng = np.random.default_rng(0)
    wavs, classes = [], []
    for i in range(12):
        n = int(rng.integers(800, 1600))
        wavs.append(torch.tensor(np.sin(np.arange(n) * (0.05 + 0.1 * (i % 3))) + 0.3 * rng.normal(size=n),
                                 dtype=torch.float32))
        classes.append(i % 3)
    train, test = list(range(6)), list(range(6, 12))
    split = LabelSplit("speaker", ["a", "b", "c"], train, test, np.array(classes[:6]), np.array(classes[6:]))
    probe = LiveProbe(ProbeConfig(labels=["speaker"], label_from="train", batch_seconds=0.15), wavs, [split])
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    record = probe.measure(model, step=7)
    assert model.training and not model.encoded_in_train_mode  # encoded in eval mode, train mode restored
    assert torch.equal(before[0], torch.get_rng_state()) and np.array_equal(before[1], np.random.get_state()[1])
    assert before[2] == random.getstate()
    # by hand: frames of 16 samples -> tanh(Linear) -> mean and population std over valid frames
    w, b = model.enc.weight.detach().double().numpy(), model.enc.bias.detach().double().numpy()
    feats = []
    for wav in wavs:
        x = wav.double().numpy()[: len(wav) // 16 * 16].reshape(-1, 16)
        h = np.tanh(x @ w.T + b)
        feats.append(np.concatenate([h.mean(0), h.std(0)]))
    feats = np.array(feats)
    expected = ridge_accuracy(feats[train], split.y_train, feats[test], split.y_test, 1.0)
    assert record["step"] == 7 and record["split"] == "probe"
    assert record["probe/speaker/context"] == record["probe/speaker/latent"] == expected
    assert record["probe_chance/speaker"] == pytest.approx(1 / 3)
    frames = np.concatenate([np.tanh(w_.double().numpy()[: len(w_) // 16 * 16].reshape(-1, 16) @ w.T + b)
                             for w_ in wavs])
    assert record["health/context/std_mean"] == pytest.approx(frames.std(0).mean(), rel=1e-5)


# ---------------------------------------------------------------- in the Trainer
def _run(tmp, corpus, exp, probe=True, model="toy_draws_random", **train):
    sections = {"model": {"name": model}, "train": {"max_steps": 7, "valid_every": 0, **train}}
    if probe:
        sections["train"]["probe"] = dict(PROBE)
    cfg = load_pretrain_config(recipe(tmp, **sections))
    return pretrain(cfg, corpus, None, tmp / exp)


def test_probe_leaves_training_bit_exact_and_resumes_exactly(tmp_path, corpus):
    _run(tmp_path, corpus, "plain", probe=False)
    _run(tmp_path, corpus, "probed")
    plain, probed = _weights(tmp_path / "plain"), _weights(tmp_path / "probed")
    for k in plain:
        assert torch.equal(plain[k], probed[k]), k
    probes = _lines(tmp_path / "probed", "probe")
    assert [x["step"] for x in probes] == [0, 3, 6, 7]  # step 0, every 3, and the last step
    assert all(0.0 <= x["probe/speaker/context"] <= 1.0 for x in probes)
    # crash after step 4 (checkpoints every 3 steps): the rerun resumes at 3 (probed before its
    # checkpoint: not probed again) and redoes steps 4 to 7
    CRASH.update(after=4, calls=0)
    try:
        with pytest.raises(RuntimeError, match="injected crash"):
            _run(tmp_path, corpus, "crashed")
    finally:
        CRASH.update(after=None, calls=0)
    _run(tmp_path, corpus, "crashed")
    resumed = _weights(tmp_path / "crashed")
    for k in plain:
        assert torch.equal(plain[k], resumed[k]), k
    again = _lines(tmp_path / "crashed", "probe")
    assert [x["step"] for x in again] == [0, 3, 6, 7]
    for a, b in zip(probes, again):
        assert {k: v for k, v in a.items() if k.startswith("probe/")} == \
            {k: v for k, v in b.items() if k.startswith("probe/")}
    # per-block gradient norms (before clipping) combine to the step's gradient norm
    train = _lines(tmp_path / "probed", "train")[0]
    assert math.hypot(train["grad_norm/enc"], train["grad_norm/out"]) == pytest.approx(train["grad_norm"])


def test_probe_panel_in_loss_curve(tmp_path, corpus):
    from PIL import Image

    _run(tmp_path, corpus, "with", max_steps=2)
    _run(tmp_path, corpus, "without", probe=False, max_steps=2)
    assert Image.open(tmp_path / "with" / "loss_curve.png").size[0] > Image.open(
        tmp_path / "without" / "loss_curve.png").size[0]  # a second panel


DDP_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import helpers  # noqa: F401  (registers toy_linear)
from speechssl.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_ddp_rank0_probes_and_nobody_deadlocks(tmp_path):
    from helpers import free_port as _free_port
    from helpers import run_group
    from helpers import subprocess_env as _env

    train = make_corpus(tmp_path / "data", n=12, seconds=(0.25, 0.25), equal=True)
    cfg = recipe(tmp_path, model={"noise": 0.0}, data={"device_batch_seconds": 0.5},
                 train={"max_steps": 4, "valid_every": 0, "ckpt_every_steps": 100, "probe": PROBE})
    script = tmp_path / "run.py"
    script.write_text(DDP_SCRIPT.format(tests=str(__import__("pathlib").Path(__file__).parent)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(script), "pretrain", "--config", str(cfg), "--train", str(train), "--exp", str(tmp_path / "two")]
    proc = run_group(cmd, _env(), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [x["step"] for x in _lines(tmp_path / "two", "probe")] == [0, 3, 4]  # rank 0 only, once per point


def test_probe_logs_to_tensorboard_under_its_own_tag(tmp_path, corpus, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    caplog.set_level(logging.INFO)
    _run(tmp_path, corpus, "tb", max_steps=2)
    acc = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "probe/speaker/context" in tags and "health/context/eff_rank" in tags and "grad_norm/enc" in tags
    assert [e.step for e in acc.Scalars("probe/speaker/context")] == [0, 2]
    assert "probe: 12 utterances" in caplog.text
