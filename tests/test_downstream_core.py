"""Downstream building blocks: pooling ignores padding, heads, featurizer weights, metrics on
hand-computed cases, k-fold groups, n-per-class sampling, label checks, model save/load."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from helpers import ConstructedSource

from speechssl.downstream import (
    HEADS,
    AttentiveStatsPool,
    Featurizer,
    FeaturizerConfig,
    LabelMap,
    build_head,
    classification_metrics,
    downstream_config,
    kfold_by_group,
    load_downstream_model,
    masked_mean,
    masked_mean_std,
    sample_per_class,
    splits_hash,
    stratified_split,
)
from speechssl.downstream.model import build_downstream_model
from speechssl.registry import UnknownNameError


def _pad(x: torch.Tensor, extra: int, fill: float) -> torch.Tensor:
    pad = torch.full((x.shape[0], extra, x.shape[2]), fill)
    return torch.cat([x, pad], dim=1)


def test_pooling_ignores_padding():
    torch.manual_seed(0)
    x = torch.randn(3, 7, 5)
    lengths = torch.tensor([7, 4, 1])
    x = x.masked_fill(torch.arange(7).view(1, 7, 1) >= lengths.view(3, 1, 1), 0.0)
    pool = AttentiveStatsPool(5, 8)
    ref = [masked_mean(x, lengths), masked_mean_std(x, lengths), pool(x, lengths)]
    # padding with garbage (large values, NaN) in the padded frames and in extra frames
    noisy = x.clone()
    noisy[1, 4:] = 1e4
    noisy[2, 1:] = float("nan")
    noisy = _pad(noisy, 5, 123.0)
    got = [masked_mean(noisy, lengths), masked_mean_std(noisy, lengths), pool(noisy, lengths)]
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r)
    # single utterance == batched
    torch.testing.assert_close(masked_mean(x[1:2, :4], lengths[1:2]), ref[0][1:2])
    torch.testing.assert_close(masked_mean(x[1:2, :4], lengths[1:2]), x[1, :4].mean(0, keepdim=True))
    std = x[1, :4].std(0, unbiased=False)
    torch.testing.assert_close(masked_mean_std(x[1:2, :4], lengths[1:2])[0, 5:], std, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["superb_utterance", "speaker_asp", "linear_probe"])
def test_utterance_heads_ignore_padding(name):
    torch.manual_seed(1)
    head = build_head({"name": name}, input_dim=6, num_classes=3).eval()
    x = torch.randn(2, 9, 6)
    lengths = torch.tensor([9, 5])
    ref = head(x, lengths)
    assert ref.shape == (2, 3)
    noisy = x.clone()
    noisy[1, 5:] = 50.0
    torch.testing.assert_close(head(_pad(noisy, 4, -7.0), lengths), ref)
    torch.testing.assert_close(head(x[1:2, :5], lengths[1:2]), ref[1:2])


def test_frame_head_and_registry():
    head = build_head({"name": "frame_linear"}, 4, 5)
    assert head.level == "frame" and head(torch.randn(2, 3, 4), torch.tensor([3, 2])).shape == (2, 3, 5)
    assert set(HEADS) >= {"superb_utterance", "speaker_asp", "linear_probe", "frame_linear"}
    with pytest.raises(UnknownNameError, match="superb_utterance"):
        build_head({"name": "nope"}, 4, 2)
    with pytest.raises(ValueError, match="hidden_dim"):
        build_head({"name": "superb_utterance", "hidden_dimm": 3}, 4, 2)
    sup = build_head({"name": "superb_utterance"}, 80, 4)
    assert sup.projector.out_features == 256 and sup.classifier.in_features == 256


def test_featurizer_weights_sum_to_one_and_export(tmp_path):
    feat = Featurizer(["latent", "layer_1", "layer_2"], FeaturizerConfig())
    stacked = torch.randn(2, 3, 4, 5)
    out = feat(stacked)
    torch.testing.assert_close(out, stacked.mean(1))  # equal weights at init
    # learnable: one optimisation step moves the weights, they still sum to 1
    loss = (feat(stacked) * stacked[:, 2]).sum() * -1
    loss.backward()
    with torch.no_grad():
        feat.weights -= 1.0 * feat.weights.grad
    w = feat.weights_dict()
    assert list(w) == ["latent", "layer_1", "layer_2"]
    assert abs(sum(w.values()) - 1.0) < 1e-6 and w["layer_2"] > w["latent"]
    feat.export_weights(tmp_path / "w.json")
    saved = json.loads((tmp_path / "w.json").read_text())
    assert saved["layers"] == list(w) and saved["by_layer"] == pytest.approx(w)
    from speechssl.downstream.plots import plot_layer_weights

    png = plot_layer_weights(w, tmp_path / "w.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    one = Featurizer(["layer_1"])
    torch.testing.assert_close(one(stacked[:, 1:2]), stacked[:, 1])
    normed = Featurizer(["a", "b"], FeaturizerConfig(layer_norm=True))(stacked[:, :2] * 100 + 3)
    assert normed.abs().mean() < 3


def test_metrics_hand_computed_imbalanced():
    refs = [0, 0, 0, 0, 1, 1]
    hyps = [0, 0, 0, 0, 0, 1]
    m = classification_metrics(refs, hyps, 2)
    assert m["accuracy"] == pytest.approx(5 / 6) and m["wa"] == m["accuracy"]
    assert m["ua"] == pytest.approx((1.0 + 0.5) / 2)  # UA != WA on imbalanced data
    f1_0 = 2 * 4 / (4 + 5)
    f1_1 = 2 * 1 / (2 + 1)
    assert m["macro_f1"] == pytest.approx((f1_0 + f1_1) / 2)
    assert m["confusion_matrix"] == [[4, 0], [1, 1]]
    # a class never referenced nor predicted does not count in UA / macro-F1
    m3 = classification_metrics([0, 1], [0, 0], 3)
    assert m3["ua"] == pytest.approx(0.5) and m3["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)


def _records(n_groups=4, per_group=6, classes=("a", "b", "c")):
    recs = []
    for g in range(n_groups):
        for i in range(per_group):
            recs.append({"id": f"g{g}_{i}", "path": f"/x/g{g}_{i}.wav", "session": f"S{g}",
                         "emotion": classes[(g + i) % len(classes)]})
    return recs


def test_kfold_never_shares_a_group():
    recs = _records(5)
    folds = kfold_by_group(recs, "session")
    assert len(folds) == 5
    seen = []
    for fold in folds:
        train_groups = {r["session"] for r in fold["train"]}
        test_groups = {r["session"] for r in fold["test"]}
        assert not train_groups & test_groups and test_groups
        assert len(fold["train"]) + len(fold["test"]) == len(recs)
        seen += [r["id"] for r in fold["test"]]
    assert sorted(seen) == sorted(r["id"] for r in recs)  # every utterance tested exactly once
    folds2 = kfold_by_group(recs, "session", k=2)
    for fold in folds2:
        assert not {r["session"] for r in fold["train"]} & {r["session"] for r in fold["test"]}
    with pytest.raises(ValueError, match="k=9"):
        kfold_by_group(recs, "session", k=9)


def test_sample_per_class_deterministic():
    recs = _records(4, 8)
    a = sample_per_class(recs, "emotion", 2, seed=0)
    shuffled = list(recs)
    random.Random(5).shuffle(shuffled)
    b = sample_per_class(shuffled, "emotion", 2, seed=0)
    assert [r["id"] for r in a] == [r["id"] for r in b]  # same seed, any input order -> same pick
    counts = {}
    for r in a:
        counts[r["emotion"]] = counts.get(r["emotion"], 0) + 1
    assert counts == {"a": 2, "b": 2, "c": 2}
    picks = {tuple(r["id"] for r in sample_per_class(recs, "emotion", 2, seed=s)) for s in range(5)}
    assert len(picks) > 1  # seeds differ
    assert len(sample_per_class(recs, "emotion", 100, seed=0)) == len(recs)  # small classes give all


def test_stratified_split_and_hash():
    recs = _records(4, 10)
    parts = stratified_split(recs, "emotion", {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=0)
    ids = [r["id"] for p in parts.values() for r in p]
    assert sorted(ids) == sorted(r["id"] for r in recs)
    for p in parts.values():
        assert {r["emotion"] for r in p} == {"a", "b", "c"}
    h = splits_hash(parts)
    assert h == splits_hash({k: list(reversed(v)) for k, v in parts.items()})
    assert h != splits_hash({"train": parts["dev"], "dev": parts["train"], "test": parts["test"]})


def test_unseen_labels_are_named():
    train = [{"id": "1", "emotion": "happy"}, {"id": "2", "emotion": "sad"}]
    labels = LabelMap.from_records(train, "emotion")
    assert labels.labels == ["happy", "sad"]
    with pytest.raises(ValueError, match=r"'angry' \(1 utt., e.g. 3\)") as err:
        labels.check([{"id": "3", "emotion": "angry"}, {"id": "4", "emotion": "sad"}], "emotion", "test")
    assert "test" in str(err.value) and "unseen in train" in str(err.value)
    with pytest.raises(KeyError, match="no label field 'emotion'"):
        labels.check([{"id": "5", "speaker": "x"}], "emotion", "dev")
    with pytest.raises(ValueError, match="at least 2 classes"):
        LabelMap.from_records(train[:1], "emotion")


def test_model_save_load_roundtrip(tmp_path):
    cfg = downstream_config({"head": {"name": "speaker_asp", "hidden_dim": 8, "embedding_dim": 8}})
    model = build_downstream_model(cfg, ["l1", "l2"], 6, ["a", "b", "c"], {"label": "speaker"})
    model.save(tmp_path)
    assert not list(tmp_path.glob("*.pt")) and (tmp_path / "model.safetensors").is_file()
    again = load_downstream_model(tmp_path)
    x, n = torch.randn(2, 2, 5, 6), torch.tensor([5, 3])
    torch.testing.assert_close(again(x, n), model.eval()(x, n))
    assert again.labels == ["a", "b", "c"] and again.meta["label"] == "speaker"
    with pytest.raises(ValueError, match="train.metric"):
        downstream_config({"train": {"metric": "loss"}})
    with pytest.raises(ValueError, match="unknown key"):
        downstream_config({"optim": {"learning_rate": 1}})
    assert np.isclose(sum(again.featurizer.weights_dict().values()), 1.0)


class _ConstructedSource(ConstructedSource):
    """Hidden states built in the test: 2 layers, the frame label is the sign of layer 1's dim 0."""

    spec = "constructed"

    def __init__(self):
        self.store = {}

    def features(self, records, desc=""):
        from speechssl.downstream import FeatureSet

        feats = []
        for rec in records:
            if rec["id"] not in self.store:
                g = torch.Generator().manual_seed(int(rec["id"]))
                signs = torch.tensor([1.0 if c == "p" else -1.0 for c in rec["frames"]])
                h1 = torch.randn(len(signs), 4, generator=g)
                h1[:, 0] = signs * (1 + h1[:, 0].abs())
                self.store[rec["id"]] = [torch.randn(len(signs), 4, generator=g), h1]
            feats.append(self.store[rec["id"]])
        return FeatureSet([r["id"] for r in records], feats, ["noise", "signal"], 160)


def test_frame_level_task_learns_from_the_informative_layer(tmp_path):
    from speechssl.downstream import run_experiment

    rng = random.Random(0)

    def recs(lo, hi):
        return [{"id": str(i), "frames": [rng.choice("pn") for _ in range(rng.randint(5, 30))]} for i in range(lo, hi)]

    splits = {"train": recs(0, 40), "dev": recs(40, 50), "test": recs(50, 60)}
    cfg = downstream_config({"head": {"name": "frame_linear"}, "optim": {"lr": 0.05},
                             "train": {"max_steps": 40, "valid_every": 20, "batch_size": 8}})
    res, model = run_experiment(_ConstructedSource(), splits, "frames", cfg, tmp_path, progress=False)
    assert res["task"]["level"] == "frame" and res["task"]["classes"] == ["n", "p"]
    n_frames = sum(len(r["frames"]) for r in splits["test"])
    assert res["test"]["num"] == n_frames and res["test"]["accuracy"] > 0.95
    w = res["featurizer"]["weights"]
    assert w["signal"] > w["noise"] and abs(sum(w.values()) - 1) < 1e-6
    line = (tmp_path / "predictions_test.tsv").read_text().splitlines()[1].split("\t")
    assert len(line[1].split()) == len(splits["test"][0]["frames"])
    with pytest.raises(ValueError, match="frame head"):
        bad = {k: [dict(r, frames="pn"[int(r["id"]) % 2]) for r in v] for k, v in splits.items()}
        run_experiment(_ConstructedSource(), bad, "frames", cfg, None, progress=False)


class _MixedSizes(_ConstructedSource):
    """Like APC: a small "latent" layer, two layers of the hidden size, "context" = the last one."""

    def features(self, records, desc=""):
        fs = super().features(records, desc)
        fs.feats = [[f[0][:, :2], *f, f[1].clone()] for f in fs.feats]
        fs.layer_names = ["latent", "noise", "signal", "context"]
        return fs


def test_all_layers_mixes_the_hidden_size_and_mixed_lists_fail():
    from speechssl.downstream import run_experiment

    recs = [{"id": str(i), "frames": "pn"[i % 2] * 6, "cls": "pn"[i % 2]} for i in range(12)]
    splits = {"train": recs[:8], "test": recs[8:]}
    cfg = downstream_config({"head": {"name": "linear_probe"}, "train": {"max_steps": 3}})
    res, _ = run_experiment(_MixedSizes(), splits, "cls", cfg, None, progress=False)
    assert res["featurizer"]["layers"] == ["noise", "signal"]
    bad = downstream_config({"head": {"name": "linear_probe"}, "featurizer": {"layers": ["latent", "signal"]}})
    with pytest.raises(ValueError, match=r"equal sizes, got \{'latent': 2, 'signal': 4\}"):
        run_experiment(_MixedSizes(), splits, "cls", bad, None, progress=False)
    with pytest.raises(KeyError, match="unknown layer"):
        run_experiment(_MixedSizes(), splits, "cls", downstream_config({"featurizer": {"layers": "layer_9"}}),
                       None, progress=False)


@pytest.mark.parametrize("head", [{"name": "superb_utterance", "hidden_dim": 8},
                                  {"name": "linear_probe", "pooling": "mean"}])
def test_pooled_fast_path_equals_full_computation(head):
    from speechssl.downstream.training import collate_features, pooled_inputs, predict_features

    torch.manual_seed(3)
    cfg = downstream_config({"head": head, "featurizer": {"layer_norm": True}})
    model = build_downstream_model(cfg, ["a", "b", "c"], 6, ["x", "y", "z"], {}).eval()
    with torch.no_grad():
        model.featurizer.weights.copy_(torch.tensor([0.3, -1.0, 2.0]))
    feats = [[torch.randn(t, 6) * 5 + 2 for _ in range(3)] for t in (4, 11, 7)]
    assert pooled_inputs(model, feats, [0, 1, 2]) is not None
    fast = predict_features(model, feats, [0, 1, 2])
    stacked, lengths, _ = collate_features(feats, [0, 1, 2])
    full = torch.softmax(model(stacked, lengths), dim=-1)
    torch.testing.assert_close(torch.stack(fast), full, atol=1e-5, rtol=1e-5)
    slow = build_downstream_model(downstream_config({"head": {"name": "speaker_asp"}}), ["a"], 6, ["x", "y"], {})
    assert pooled_inputs(slow, feats, [0]) is None


def test_available_memory_follows_cgroup_limits(tmp_path):
    from speechssl.downstream.memory import _cgroup_available

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("max\n")
    (v2 / "memory.current").write_text("1000\n")
    assert _cgroup_available(str(v2)) is None  # no limit
    (v2 / "memory.max").write_text(f"{8 * 2**30}\n")
    (v2 / "memory.current").write_text(f"{6 * 2**30}\n")
    (v2 / "memory.stat").write_text(f"anon 100\ninactive_file {2**30}\nactive_file 5\n")
    assert _cgroup_available(str(v2)) == 3 * 2**30  # 2 GiB left + 1 GiB of reclaimable page cache
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text("5\n")
    assert _cgroup_available(str(v1)) is None  # v1's "no limit"
    (v1 / "memory" / "memory.limit_in_bytes").write_text("5000\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text("6000\n")
    assert _cgroup_available(str(v1)) == 0  # over the limit: nothing left, not negative
    assert _cgroup_available(str(tmp_path / "none")) is None


def test_encoding_logs_progress_when_stderr_is_not_a_terminal(tmp_path, monkeypatch, caplog, capsys):
    import logging

    import speechssl.downstream.feature_cache as feature_cache
    from speechssl.audio import save_audio
    from speechssl.upstream import load_encoder

    monkeypatch.setattr(feature_cache, "PROGRESS_EVERY_SECONDS", 0.0)  # a line after every batch
    caplog.set_level(logging.INFO, logger="speechssl.downstream.feature_cache")
    rng = np.random.default_rng(0)
    records = []
    for i, seconds in enumerate((0.5, 1.0, 1.5)):
        path = tmp_path / f"u{i}.wav"
        save_audio(path, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32))
        records.append({"id": f"u{i}", "path": str(path), "num_samples": int(seconds * 16000), "sample_rate": 16000})
    cache = feature_cache.EncoderFeatureCache(load_encoder("logmel"), batch_size=2)
    cache.features(records, desc="features train")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("features train: ")]
    assert len(lines) == 2  # batches of 2 and 1 utterances
    assert lines[0].startswith("features train: 1.5/3.0 s of audio (50.0%), utterances 2/3, ")
    assert lines[-1].startswith("features train: 3.0/3.0 s of audio (100.0%), utterances 3/3, ")
    assert "audio-s/s" in lines[-1] and "eta " in lines[-1]
    # files of unknown duration (predict on a folder) are counted in utterances
    caplog.clear()
    cache.features([{"id": f"v{i}", "path": r["path"]} for i, r in enumerate(records)], desc="encoding")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("encoding: ")]
    assert lines[-1].startswith("encoding: 3/3 utterances (100.0%), ") and "utt/s" in lines[-1]
    assert "\r" not in capsys.readouterr().err  # no tqdm bar in a redirected log


class _Terminal:
    """A stderr that says it is a terminal (where Progress draws a tqdm bar)."""

    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s
        return len(s)

    def flush(self):
        pass

    def isatty(self):
        return True


def test_progress_false_keeps_the_encoding_bar_off_on_a_terminal(tmp_path, monkeypatch):
    """``downstream ... --quiet`` (progress=False) silences the encoding bar, not only the head's."""
    import sys

    from speechssl.audio import save_audio
    from speechssl.data import write_manifest
    from speechssl.downstream.protocols import label_efficiency

    rng = np.random.default_rng(0)
    records = []
    for i in range(8):
        path = tmp_path / f"u{i}.wav"
        save_audio(path, (0.1 * rng.standard_normal(8000)).astype(np.float32))
        records.append({"id": f"u{i}", "path": str(path), "num_samples": 8000, "sample_rate": 16000, "c": "ab"[i % 2]})
    write_manifest(records[:4], tmp_path / "pool.jsonl")
    write_manifest(records[4:], tmp_path / "test.jsonl")
    cfg = downstream_config({"task": {"label": "c"}, "optim": {"lr": 0.01}, "train": {"max_steps": 2, "batch_size": 2}})
    shown = {}
    for progress in (True, False):
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        label_efficiency(cfg, {"logmel": "logmel"}, tmp_path / "pool.jsonl", tmp_path / "test.jsonl",
                         tmp_path / f"le_{progress}", shots=[1], seeds=[0], progress=progress)
        monkeypatch.undo()
        shown[progress] = terminal.text
    assert "features" in shown[True]  # the check can see the bars
    assert shown[False] == ""
