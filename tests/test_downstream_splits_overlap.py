"""A test (or dev) set that shares audio with the training set is named in a warning: its score is
not held-out, which otherwise goes unnoticed (e.g. --train and --test given the same manifest)."""

from __future__ import annotations

import logging

from speechssl.cli.main import main
from speechssl.data import read_manifest, write_manifest
from speechssl.downstream.splits import warn_shared_audio


def _rec(uid, path, **extra):
    return {"id": uid, "path": path, **extra}


def test_shared_audio_is_counted_by_path_and_segment_not_id(caplog):
    train = [_rec("a", "/x/a.wav"), _rec("b", "/x/b.wav"), _rec("c", "/x/long.wav", start=0.0, duration=2.0)]
    test = [_rec("renamed_a", "/x/a.wav"), _rec("d", "/x/d.wav"), _rec("c2", "/x/long.wav", start=2.0, duration=2.0)]
    dev = [_rec("b", "/x/b.wav")]
    caplog.set_level(logging.WARNING)
    assert warn_shared_audio({"train": train, "dev": dev, "test": test}) == {"dev": 1, "test": 1}
    assert "1 of the 3 test utterances are also in train (same audio), e.g. ['renamed_a']" in caplog.text
    caplog.clear()
    assert warn_shared_audio({"train": train, "dev": [], "test": [_rec("d", "/x/d.wav")]}) == {}
    assert caplog.text == ""


def test_cli_train_warns_when_test_is_the_training_manifest(tmp_path, caplog):
    assert main(["synth", "--backend", "formant", "--out", str(tmp_path / "synth"), "--speakers", "2",
                 "--utts-per-speaker", "4", "--jobs", "1"]) == 0
    manifest = tmp_path / "synth" / "manifest.jsonl"
    recs = read_manifest(manifest)
    write_manifest(recs[:6], tmp_path / "train.jsonl")
    write_manifest(recs[4:], tmp_path / "test.jsonl")  # 2 of them are training utterances
    caplog.set_level(logging.WARNING)
    assert main(["downstream", "train", "--encoder", "logmel", "--train", str(tmp_path / "train.jsonl"),
                 "--test", str(tmp_path / "test.jsonl"), "--label", "speaker", "--exp", str(tmp_path / "exp"),
                 "--quiet", "train.max_steps=2", "head.hidden_dim=8"]) == 0
    assert "2 of the 4 test utterances are also in train" in caplog.text
