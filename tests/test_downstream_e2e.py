"""Downstream end to end on a tiny formant-synthetic corpus with the logmel baseline: CLI train,
predict == eval, compare, unseen labels, precomputed features, k-fold, learning-rate sweep with
the feature cache, label-efficiency curves."""

from __future__ import annotations

import csv
import json
import logging
import shutil

import pytest
import torch

import speechssl
from speechssl.cli.main import main
from speechssl.data import read_manifest, write_manifest
from speechssl.downstream import (
    EncoderSource,
    downstream_config,
    run_lr_sweep,
    stratified_split,
)
from speechssl.models.base import EncoderOutput

FAST = ["train.max_steps=40", "train.valid_every=10", "train.batch_size=8", "head.hidden_dim=32", "optim.lr=3e-3"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    assert main(["synth", "--backend", "formant", "--out", str(root / "synth"), "--speakers", "3",
                 "--utts-per-speaker", "8", "--jobs", "1"]) == 0
    recs = read_manifest(root / "synth" / "manifest.jsonl")
    parts = stratified_split(recs, "speaker", {"train": 0.5, "dev": 0.25, "test": 0.25}, seed=0)
    paths = {}
    for name, part in parts.items():
        paths[name] = root / f"{name}.jsonl"
        write_manifest(part, paths[name])
    paths["all"] = root / "synth" / "manifest.jsonl"
    paths["root"] = root
    return paths


def _tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_cli_train_predict_compare(corpus, tmp_path, capsys):
    exp = tmp_path / "sid"
    args = ["downstream", "train", "--encoder", "logmel", "--train", str(corpus["train"]), "--valid",
            str(corpus["dev"]), "--test", str(corpus["test"]), "--label", "speaker", "--exp", str(exp), "--quiet",
            *FAST]
    assert main(args) == 0
    assert "test: accuracy" in capsys.readouterr().out
    res = json.loads((exp / "results.json").read_text())
    assert res["encoder"]["spec"] == "logmel" and res["featurizer"]["layers"] == ["features"]
    assert res["featurizer"]["weights"] == {"features": 1.0}
    assert res["task"]["classes"] == ["spk000", "spk001", "spk002"]
    assert res["hyperparameters"]["optim"]["lr"] == pytest.approx(3e-3) and res["seeds"] == [0]
    assert len(res["splits"]["hash"]) == 16 and res["splits"]["sizes"]["test"] == 6
    assert set(res["test"]) >= {"accuracy", "ua", "macro_f1", "confusion_matrix"}
    for png in ("confusion_matrix.png", "layer_weights.png"):
        assert (exp / png).read_bytes()[:4] == b"\x89PNG"
    assert (exp / "model.safetensors").is_file() and not list(exp.glob("*.pt"))

    # predict on the test manifest reproduces the evaluation exactly
    out = tmp_path / "pred.tsv"
    assert main(["downstream", "predict", "--model", str(exp), "--input", str(corpus["test"]), "--out", str(out)]) == 0
    assert _tsv(out) == _tsv(exp / "predictions_test.tsv")
    acc = sum(r["prediction"] == r["reference"] for r in _tsv(out)) / len(_tsv(out))
    assert acc == pytest.approx(res["test"]["accuracy"])
    # a single file and a folder work too
    one = read_manifest(corpus["test"])[0]
    assert main(["downstream", "predict", "--model", str(exp), "--input", one["path"], "--out", str(tmp_path / "1.tsv")]) == 0
    row = _tsv(tmp_path / "1.tsv")[0]
    assert row["prediction"] == next(r for r in _tsv(out) if r["id"] == one["id"])["prediction"]

    folder = corpus["root"] / "synth" / "wavs" / "spk001"
    assert main(["downstream", "predict", "--model", str(exp), "--input", str(folder), "--out", str(tmp_path / "d.tsv")]) == 0
    rows = _tsv(tmp_path / "d.tsv")
    assert len(rows) == 8 and rows[0]["id"] == "spk001_s0_0000" and "reference" not in rows[0]

    capsys.readouterr()
    assert main(["downstream", "compare", str(exp), str(exp), "--png", str(tmp_path / "cmp.png")]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| experiment | encoder |") and len(rows) == 3
    assert all(f"| logmel | superb | test | {res['test']['accuracy']:.4f} |" in r for r in rows[1:])
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    # --out (the --help example) is named on stdout as --png is
    assert main(["downstream", "compare", str(exp), "--png", str(tmp_path / "c.png"), "--out", str(tmp_path / "c.md")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {tmp_path / 'c.md'}, {tmp_path / 'c.png'}"
    assert (tmp_path / "c.md").read_text().startswith("| experiment | encoder |")


def test_unseen_label_is_a_clear_error(corpus, tmp_path, capsys):
    recs = read_manifest(corpus["test"])
    recs[0]["speaker"] = "spk_new"
    write_manifest(recs, tmp_path / "bad.jsonl")
    rc = main(["downstream", "train", "--encoder", "logmel", "--train", str(corpus["train"]), "--test",
               str(tmp_path / "bad.jsonl"), "--label", "speaker", "--exp", str(tmp_path / "x"), "--quiet", *FAST])
    err = capsys.readouterr().err
    assert rc == 1 and "'spk_new'" in err and "unseen in train" in err and recs[0]["id"] in err
    assert not (tmp_path / "x" / "results.json").exists()
    # a speaker-independent split (one speaker per part here) cannot train speaker identity
    rc = main(["downstream", "train", "--encoder", "logmel", "--data", str(corpus["all"]), "--split-by", "speaker",
               "--fractions", "train=0.34,dev=0.33,test=0.33", "--label", "speaker", "--exp", str(tmp_path / "y")])
    err = capsys.readouterr().err
    assert rc == 1 and "needs at least 2 classes, found ['spk0" in err


def test_precomputed_features_match_on_the_fly(corpus, tmp_path, capsys):
    feats = tmp_path / "feats"
    assert main(["extract", "--encoder", "logmel", "--input", str(corpus["all"]), "--out", str(feats),
                 "--no-progress"]) == 0
    common = ["--train", str(corpus["train"]), "--valid", str(corpus["dev"]), "--test", str(corpus["test"]),
              "--label", "style", "--quiet", *FAST]
    assert main(["downstream", "train", "--features", str(feats), "--exp", str(tmp_path / "a"), *common]) == 0
    assert main(["downstream", "train", "--encoder", "logmel", "--exp", str(tmp_path / "b"), *common]) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert a["encoder"]["features"] == str(feats.resolve()) and a["encoder"]["spec"] == "logmel"
    assert a["test"]["confusion_matrix"] == b["test"]["confusion_matrix"]
    assert a["splits"]["hash"] == b["splits"]["hash"]


class ThreeLayers(torch.nn.Module):
    """logmel as three layers (test helper), counting the utterances it encodes."""

    def __init__(self):
        super().__init__()
        self.inner = speechssl.load_encoder("logmel")
        self.seen = 0

    def forward(self, wavs, lengths):
        out = self.inner(wavs, lengths)
        self.seen += int(wavs.shape[0])
        h = out.hidden_states[0]
        return EncoderOutput([h, torch.tanh(h), -h], out.lengths, ["latent", "layer_1", "context"], out.frame_shift)


def test_lr_sweep_uses_feature_cache_and_exports_weights(corpus, tmp_path):
    splits = {k: read_manifest(corpus[k]) for k in ("train", "dev", "test")}
    enc = ThreeLayers()
    source = EncoderSource(enc, "three_layers")
    cfg = downstream_config({"head": {"name": "linear_probe"},
                             "train": {"max_steps": 30, "valid_every": 10, "batch_size": 8}})
    res = run_lr_sweep(source, splits, "speaker", cfg, [1e-3, 1e-2], tmp_path / "sweep", progress=False)
    n_utts = sum(len(v) for v in splits.values())
    assert enc.seen == n_utts  # two runs, every utterance encoded once
    assert [r["lr"] for r in res["sweep"]] == [1e-3, 1e-2]
    best = max(res["sweep"], key=lambda r: r["dev"]["accuracy"])
    assert res["protocol"]["selected_lr"] == best["lr"]
    weights = json.loads((tmp_path / "sweep" / "layer_weights.json").read_text())
    assert weights["layers"] == ["latent", "layer_1", "context"]
    assert sum(weights["weights"]) == pytest.approx(1.0) and len(set(weights["weights"])) > 1
    assert res["featurizer"]["weights"] == pytest.approx(weights["by_layer"])
    assert (tmp_path / "sweep" / "model.json").is_file() and (tmp_path / "sweep" / "lr_0.01" / "results.json").is_file()


def test_cli_kfold_by_group(corpus, tmp_path, capsys):
    exp = tmp_path / "kf"
    assert main(["downstream", "kfold", "--encoder", "logmel", "--data", str(corpus["all"]), "--label", "style",
                 "--group", "speaker", "--exp", str(exp), "--quiet", *FAST]) == 0
    res = json.loads((exp / "results.json").read_text())
    assert res["protocol"] == {"name": "kfold", "k": 3, "group_field": "speaker", "dev_fraction": 0.1}
    assert [f["test_groups"] for f in res["folds"]] == [["spk000"], ["spk001"], ["spk002"]]
    accs = [f["test"]["accuracy"] for f in res["folds"]]
    assert res["summary"]["accuracy"]["mean"] == pytest.approx(sum(accs) / 3) and res["summary"]["accuracy"]["n"] == 3
    for i in (1, 2, 3):
        fold_train = read_manifest(corpus["all"])  # every fold's test speaker is absent from its training data
        held = res["folds"][i - 1]["test_groups"][0]
        preds = _tsv(exp / f"fold_{i}" / "predictions_test.tsv")
        assert {r["id"] for r in preds} == {r["id"] for r in fold_train if r["speaker"] == held}
    assert "± " in capsys.readouterr().out


def test_cli_label_efficiency(corpus, tmp_path, capsys):
    out = tmp_path / "le"
    assert main(["downstream", "label-efficiency", "--encoders", "logmel,fbank", "--train", str(corpus["train"]),
                 "--valid", str(corpus["dev"]), "--test", str(corpus["test"]), "--label", "speaker",
                 "--shots", "1,2", "--seeds", "2", "--out", str(out), "--quiet",
                 "train.max_steps=15", "train.valid_every=5", "head.hidden_dim=16"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["curves"]) == {"logmel", "fbank"} and res["seeds"] == [0, 1]
    assert len(res["runs"]) == 8 and {r["train_size"] for r in res["runs"]} == {3, 6}
    by = {(r["encoder"], r["shots"], r["seed"]): r["train_hash"] for r in res["runs"]}
    assert by[("logmel", 1, 0)] == by[("fbank", 1, 0)] != by[("logmel", 1, 1)]  # same draws across encoders
    assert (out / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    assert "| logmel |" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["npy", "pt", "hdf5", "kaldi"])
def test_precomputed_features_larger_than_memory_are_read_from_disk(corpus, tmp_path, caplog, monkeypatch, fmt):
    import speechssl.downstream.precomputed as precomputed
    from speechssl.downstream.features import num_frames

    feats = tmp_path / "feats"
    assert main(["extract", "--encoder", "fbank", "--input", str(corpus["all"]), "--out", str(feats),
                 "--format", fmt, "--no-progress"]) == 0
    records = [json.loads(line) for line in open(corpus["train"])]
    eager = precomputed.load_precomputed(feats, records, lazy=False)
    assert isinstance(eager.feats, list)
    # too big for the (pretended) memory: nothing is loaded, each use reads the files again
    monkeypatch.setattr(precomputed, "available_memory_bytes", lambda: 1000)
    loads = []
    real = precomputed._load_entry
    monkeypatch.setattr(precomputed, "_load_entry", lambda *a: loads.append(a[1]) or real(*a))
    lazy = precomputed.load_precomputed(feats, records)
    assert isinstance(lazy.feats, precomputed.LazyFeatures) and "reading them from disk" in caplog.text
    assert lazy.layer_names == eager.layer_names and lazy.frame_shift == eager.frame_shift and len(lazy) == len(eager)
    assert len(loads) == 1  # the first utterance, for its layer names
    for i in (0, len(records) - 1, 0):
        assert [torch.equal(a, b) for a, b in zip(lazy.feats[i], eager.feats[i])] == [True]
        assert num_frames(lazy.feats, i) == eager.feats[i][0].shape[0]
    assert len(loads) == 4 and loads[1] == loads[3]  # read again, not kept
    assert [len(x) for x in lazy.feats] == [1] * len(records)


def test_downstream_on_features_larger_than_memory_gives_the_same_results(corpus, tmp_path, monkeypatch, caplog):
    import speechssl.downstream.precomputed as precomputed

    feats = tmp_path / "feats"
    assert main(["extract", "--encoder", "logmel", "--input", str(corpus["all"]), "--out", str(feats),
                 "--no-progress"]) == 0
    common = ["--features", str(feats), "--train", str(corpus["train"]), "--valid", str(corpus["dev"]),
              "--test", str(corpus["test"]), "--label", "style", "--quiet", *FAST]
    # a non-linear pooling head on random crops: every training step reads its batch
    heads = [["head.name=speaker_asp", "train.crop_frames=40"], []]
    for i, head in enumerate(heads):
        assert main(["downstream", "train", "--exp", str(tmp_path / f"mem{i}"), *common, *head]) == 0
    monkeypatch.setattr(precomputed, "available_memory_bytes", lambda: 1000)
    for i, head in enumerate(heads):
        assert main(["downstream", "train", "--exp", str(tmp_path / f"disk{i}"), *common, *head]) == 0
        a = json.loads((tmp_path / f"mem{i}" / "results.json").read_text())
        b = json.loads((tmp_path / f"disk{i}" / "results.json").read_text())
        assert a["test"] == b["test"] and a["history"] == b["history"]
    assert "reading them from disk" in caplog.text
    # the config decides when told to: always in memory (as before), or never
    loads = []
    real = precomputed._load_entry
    monkeypatch.setattr(precomputed, "_load_entry", lambda *a: loads.append(a[1]) or real(*a))
    assert main(["downstream", "train", "--exp", str(tmp_path / "forced"), *common, "encode.features_in_memory=always"]) == 0
    assert len(loads) == 24  # each utterance of train, dev and test read once
    assert json.loads((tmp_path / "forced" / "results.json").read_text())["test"] == a["test"]
    monkeypatch.undo()
    caplog.clear()
    assert main(["downstream", "train", "--exp", str(tmp_path / "never"), *common, "encode.features_in_memory=never"]) == 0
    assert json.loads((tmp_path / "never" / "results.json").read_text())["test"] == a["test"]
    assert "reading them from disk" not in caplog.text  # asked for, not a surprise: no warning
    assert main(["downstream", "train", "--exp", str(tmp_path / "bad"), *common, "encode.features_in_memory=sometimes"]) == 1


def test_encoding_more_than_fits_in_memory_stops_after_the_first_batch(corpus, tmp_path, monkeypatch, capsys):
    import speechssl.downstream.feature_cache as feature_cache

    monkeypatch.setattr(feature_cache, "available_memory_bytes", lambda: 1000)
    rc = main(["downstream", "train", "--encoder", "logmel", "--train", str(corpus["train"]), "--test",
               str(corpus["test"]), "--label", "style", "--exp", str(tmp_path / "a"), "--quiet", *FAST])
    err = capsys.readouterr().err
    assert rc == 1 and "with logmel would keep about" in err and "--features DIR" in err
    assert not (tmp_path / "a" / "results.json").exists()
    cache = EncoderSource(speechssl.load_encoder("logmel"), "logmel", batch_size=4).cache
    records = read_manifest(corpus["train"])
    with pytest.raises(MemoryError):
        cache.features(records)
    assert cache.encoded == 4  # stopped after the first batch


def _count_runs(monkeypatch):
    """Count the heads actually trained by the protocols."""
    import speechssl.downstream.protocols as protocols

    calls = []
    real = protocols.run_experiment
    monkeypatch.setattr(protocols, "run_experiment", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


LE_FAST = ["train.max_steps=15", "train.valid_every=5", "head.hidden_dim=16"]


def test_label_efficiency_resumes_after_an_interruption(corpus, tmp_path, monkeypatch, caplog):
    out = tmp_path / "le"
    feats = tmp_path / "fbank_feats"
    assert main(["extract", "--encoder", "fbank", "--input", str(corpus["all"]), "--out", str(feats),
                 "--no-progress"]) == 0
    args = ["downstream", "label-efficiency", "--encoders", f"logmel,fbank={feats}", "--train", str(corpus["train"]),
            "--valid", str(corpus["dev"]), "--test", str(corpus["test"]), "--label", "speaker",
            "--shots", "1,2", "--seeds", "2", "--out", str(out), "--quiet", *LE_FAST]
    caplog.set_level(logging.INFO, logger="speechssl")
    calls = _count_runs(monkeypatch)
    assert main(args) == 0 and len(calls) == 8
    full = json.loads((out / "results.json").read_text())
    journal = (out / "runs.jsonl").read_text().splitlines()
    assert len(journal) == 8
    # interrupted during the 6th run's line: 5 finished runs and half a line
    (out / "runs.jsonl").write_text("\n".join(journal[:5]) + "\n" + journal[5][:40])
    (out / "results.json").unlink()
    calls.clear()
    assert main(args) == 0 and len(calls) == 3
    assert "5 of 8 runs finished earlier" in caplog.text and "cut short?" in caplog.text
    again = json.loads((out / "results.json").read_text())
    assert again["curves"] == full["curves"] and again["runs"] == full["runs"]
    assert again["encoders"] == full["encoders"]
    assert len(_journal_entries(out)) == 8  # the half line was followed by a fresh one, not glued to it
    # nothing left to do
    calls.clear()
    assert main(args) == 0 and len(calls) == 0
    # another hyper-parameter: nothing matches
    assert main([*args, "optim.lr=2e-3"]) == 0 and len(calls) == 8
    # features extracted again (same path, new files): that encoder's runs are trained again
    calls.clear()
    shutil.rmtree(feats)
    assert main(["extract", "--encoder", "fbank", "--input", str(corpus["all"]), "--out", str(feats),
                 "--no-progress"]) == 0
    assert main(args) == 0 and len(calls) == 4
    calls.clear()
    assert main([*args, "--restart"]) == 0 and len(calls) == 8


def _journal_entries(out):
    return [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines() if line.startswith("{")
            and line.endswith("}")]


def test_kfold_and_lr_sweep_resume(corpus, tmp_path, monkeypatch):
    exp = tmp_path / "kf"
    args = ["downstream", "kfold", "--encoder", "logmel", "--data", str(corpus["all"]), "--label", "style",
            "--group", "speaker", "--exp", str(exp), "--quiet", *FAST]
    calls = _count_runs(monkeypatch)
    assert main(args) == 0 and len(calls) == 3
    full = json.loads((exp / "results.json").read_text())
    (exp / "fold_2" / "results.json").unlink()  # interrupted while fold 2 was training
    (exp / "results.json").unlink()
    calls.clear()
    assert main(args) == 0 and len(calls) == 1
    assert json.loads((exp / "results.json").read_text())["folds"] == full["folds"]
    calls.clear()
    assert main([*args, "--restart"]) == 0 and len(calls) == 3

    sweep = tmp_path / "sweep"
    args = ["downstream", "train", "--encoder", "logmel", "--train", str(corpus["train"]), "--valid",
            str(corpus["dev"]), "--test", str(corpus["test"]), "--label", "style", "--lrs", "1e-3,1e-2",
            "--exp", str(sweep), "--quiet", *[o for o in FAST if not o.startswith("optim.lr")]]
    calls.clear()
    assert main(args) == 0 and len(calls) == 2
    first = json.loads((sweep / "results.json").read_text())
    calls.clear()
    assert main([*args, "train.seed=1"]) == 0 and len(calls) == 2  # another seed: trained again
    calls.clear()
    assert main(args) == 0 and len(calls) == 2  # back to seed 0: lr dirs now hold seed 1, so again
    calls.clear()
    assert main(args) == 0 and len(calls) == 0
    again = json.loads((sweep / "results.json").read_text())
    assert again["sweep"] == first["sweep"] and again["test"] == first["test"]


def test_an_encoder_released_again_at_the_same_path_is_trained_again(corpus, tmp_path, monkeypatch):
    from helpers import tiny_model

    from speechssl.upstream.release import save_released_encoder

    enc = tmp_path / "enc"
    save_released_encoder(tiny_model("apc", seed=0), enc)
    args = ["downstream", "train", "--encoder", str(enc), "--train", str(corpus["train"]), "--valid",
            str(corpus["dev"]), "--label", "style", "--lrs", "1e-3", "--exp", str(tmp_path / "sweep"), "--quiet",
            *[o for o in FAST if not o.startswith("optim.lr")]]
    calls = _count_runs(monkeypatch)
    assert main(args) == 0 and len(calls) == 1
    assert main(args) == 0 and len(calls) == 1  # read back
    save_released_encoder(tiny_model("apc", seed=1), enc)  # pretrained again: other weights, same path
    assert main(args) == 0 and len(calls) == 2
    save_released_encoder(tiny_model("apc", seed=1), enc)  # the same weights written again: still read back
    assert main(args) == 0 and len(calls) == 2
