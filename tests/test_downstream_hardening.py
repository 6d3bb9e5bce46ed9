"""Downstream edge cases fail early and clearly: bad batch sizes, pickles in .pt feature files,
classes with a single example."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import ConstructedSource, make_corpus

from speechssl.cli.main import main
from speechssl.downstream import FeatureSet, PrecomputedSource, downstream_config, run_experiment
from speechssl.downstream.precomputed import LazyFeatures


@pytest.mark.parametrize("value", [0, -4])
@pytest.mark.parametrize("key", ["train.batch_size", "encode.batch_size"])
def test_batch_size_below_one_is_a_config_error(key, value):
    section, name = key.split(".")
    with pytest.raises(ValueError, match=rf"{key}: expected an integer >= 1, got {value}"):
        downstream_config({section: {name: value}})


def test_cli_refuses_a_zero_batch_size_before_any_work(tmp_path, capsys):
    # the manifest does not exist: the config error must come first, in one line
    argv = ["downstream", "train", "--encoder", "logmel", "--train", str(tmp_path / "missing.jsonl"),
            "--label", "speaker", "--exp", str(tmp_path / "exp"), "train.batch_size=0"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["speechssl downstream: error: train.batch_size: expected an integer >= 1, got 0"]
    assert not (tmp_path / "exp").exists()


class _Payload:
    """Any class: pickling it into a .pt file is what weights_only=True refuses."""


def _feature_folder(tmp_path, bad: bool):
    folder = tmp_path / "feats"
    folder.mkdir()
    rows = ["id\tpath\tframes\tframe_rate\tlayers\tdim"]
    for i in range(3):
        value = {"features": torch.randn(5, 4)}
        if bad and i == 2:
            value["extra"] = _Payload()
        torch.save(value, folder / f"u{i}.pt")
        rows.append(f"u{i}\tu{i}.pt\t5\t100\tfeatures\t4")
    (folder / "index.tsv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.mark.parametrize("lazy", [False, True])
def test_pickled_objects_in_pt_features_are_refused_naming_the_file(tmp_path, lazy):
    folder = _feature_folder(tmp_path, bad=True)
    records = [{"id": f"u{i}"} for i in (2, 0, 1)]  # the bad file first, so the lazy set reads it too
    with pytest.raises(ValueError, match=r"u2\.pt \(id 'u2' in .*index\.tsv\): not plain tensors.*weights_only=True"):
        PrecomputedSource(folder, lazy=lazy).features(records)


def test_a_bad_pt_file_read_lazily_during_training_is_named_in_one_line(tmp_path):
    """Features too big for memory are read when used: a pickle in any file but the first used to
    surface as a raw UnpicklingError in the middle of training."""
    folder = _feature_folder(tmp_path, bad=True)
    fs = PrecomputedSource(folder, lazy=True).features([{"id": f"u{i}"} for i in range(3)])  # u2 is not read now
    assert isinstance(fs.feats, LazyFeatures) and fs.feats[0][0].shape == (5, 4)
    with pytest.raises(ValueError, match=r"u2\.pt \(id 'u2' in .*index\.tsv\): not plain tensors.*weights_only=True") as err:
        fs.feats[2]
    assert "\n" not in str(err.value)
    (folder / "u1.pt").write_bytes(b"PK\x03\x04 cut short")  # a truncated or foreign file
    with pytest.raises(ValueError, match=r"u1\.pt \(id 'u1' in .*index\.tsv\): not a readable \.pt file"):
        fs.feats[1]


def test_plain_pt_features_load(tmp_path):
    folder = _feature_folder(tmp_path, bad=False)
    fs = PrecomputedSource(folder).features([{"id": "u0"}, {"id": "u1"}])
    assert fs.layer_names == ["features"] and fs.feats[0][0].shape == (5, 4)


class _Source(ConstructedSource):
    def features(self, records, desc=""):
        feats = [[torch.full((3, 2), float("abc".index(r["cls"])))] for r in records]
        return FeatureSet([r["id"] for r in records], feats, ["features"], 160)


def test_a_class_with_a_single_example_is_warned_by_name(caplog):
    recs = [{"id": str(i), "cls": "ab"[i % 2]} for i in range(8)] + [{"id": "8", "cls": "c"}]
    cfg = downstream_config({"head": {"name": "linear_probe"}, "train": {"max_steps": 1}})
    with caplog.at_level(logging.WARNING, logger="speechssl.downstream"):
        run_experiment(_Source(), {"train": recs}, "cls", cfg, None, progress=False)
    warned = [r.getMessage() for r in caplog.records if "single example" in r.getMessage()]
    assert warned == ["train: class(es) 'c' of 'cls' have a single example; the head can hardly learn them "
                      "(add examples, or merge or drop these classes)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="speechssl.downstream"):
        run_experiment(_Source(), {"train": recs[:8]}, "cls", cfg, None, progress=False)
    assert not [r for r in caplog.records if "single example" in r.getMessage()]


def test_no_progress_bar_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    # a redirected log (a recipe's `| tee`, a batch job) gets no carriage-return bar lines
    train = make_corpus(tmp_path / "c", n=6)
    assert main(["downstream", "train", "--encoder", "logmel", "--train", str(train), "--label", "speaker",
                 "--exp", str(tmp_path / "exp"), "train.max_steps=3", "head.hidden_dim=8"]) == 0
    err = capsys.readouterr().err
    assert "train head" not in err and "\r" not in err, err[-300:]


def test_head_training_logs_progress_lines_when_stderr_is_not_a_terminal(tmp_path, monkeypatch, caplog, capsys):
    # the bar's replacement in a redirected log: a line every 30 s (here after every step)
    import speechssl.downstream.training as training

    monkeypatch.setattr(training, "PROGRESS_EVERY_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="speechssl.downstream.training")
    recs = [{"id": str(i), "cls": "ab"[i % 2]} for i in range(8)]
    cfg = downstream_config({"head": {"name": "linear_probe"}, "train": {"max_steps": 4, "valid_every": 2}})
    run_experiment(_Source(), {"train": recs, "dev": recs}, "cls", cfg, None, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train head: ")]
    assert [line.split(" (")[0] for line in lines] == [f"train head: step {i}/4" for i in (1, 2, 3, 4)]
    assert "loss " in lines[2] and "dev " in lines[2] and "steps/s" in lines[-1] and "eta 0:00:00" in lines[-1]
    assert "\r" not in capsys.readouterr().err  # progress=True asks for a bar, but stderr is not a terminal
