"""`downstream predict` is a batch job over new files: an input that gives no features (empty,
undecodable, too short, or listed in the feature folder's errors.tsv) is reported and skipped,
listed with its reason in OUT_STEM.errors.tsv; the run fails only when no input works."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import soundfile as sf

from speechssl import load_encoder
from speechssl.cli.main import main
from speechssl.data import read_manifest
from speechssl.downstream import EncoderSource, PrecomputedSource
from speechssl.downstream.inference import input_records

FAST = ["train.max_steps=5", "train.valid_every=5", "train.batch_size=8", "head.hidden_dim=16"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pred")
    assert main(["synth", "--backend", "formant", "--out", str(root / "synth"), "--speakers", "2",
                 "--utts-per-speaker", "4", "--jobs", "1"]) == 0
    manifest = root / "synth" / "manifest.jsonl"
    exp = root / "exp"
    assert main(["downstream", "train", "--encoder", "logmel", "--train", str(manifest), "--valid", str(manifest),
                 "--test", str(manifest), "--label", "speaker", "--exp", str(exp), "--quiet", *FAST]) == 0
    return {"root": root, "manifest": manifest, "exp": exp}


def _tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _folder_with_bad_files(trained, folder):
    folder.mkdir()
    for rec in read_manifest(trained["manifest"])[:2]:
        shutil.copy(rec["path"], folder / f"{rec['id']}.wav")
    (folder / "empty.wav").write_bytes(b"")
    (folder / "garbage.wav").write_text("not audio")
    sf.write(folder / "tiny.wav", np.zeros(20, dtype="float32"), 16000)
    return folder


def test_predict_skips_bad_files_and_lists_them(trained, tmp_path, capsys):
    folder = _folder_with_bad_files(trained, tmp_path / "new")
    out = tmp_path / "preds.tsv"
    assert main(["downstream", "predict", "--model", str(trained["exp"]), "--input", str(folder),
                 "--out", str(out)]) == 0
    assert "wrote 2 predictions to" in (printed := capsys.readouterr().out)
    assert "; 3 inputs skipped, listed in" in printed
    assert len(_tsv(out)) == 2
    errors = {row["id"]: row for row in _tsv(tmp_path / "preds.errors.tsv")}
    assert set(errors) == {"empty", "garbage", "tiny"}
    assert "empty.wav: file is empty" in errors["empty"]["reason"]
    assert "too short" in errors["tiny"]["reason"] and errors["tiny"]["path"].endswith("tiny.wav")

    # a later run where every input works removes the stale error list
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(folder / next(p.name for p in folder.iterdir() if p.name.startswith("spk")), good)
    assert main(["downstream", "predict", "--model", str(trained["exp"]), "--input", str(good),
                 "--out", str(out)]) == 0
    assert f"wrote 1 prediction to {out}\n" == capsys.readouterr().out
    assert len(_tsv(out)) == 1 and not (tmp_path / "preds.errors.tsv").exists()


def test_predict_fails_when_no_input_works(trained, tmp_path, capsys):
    (tmp_path / "empty.wav").write_bytes(b"")
    assert main(["downstream", "predict", "--model", str(trained["exp"]), "--input", str(tmp_path / "empty.wav"),
                 "--out", str(tmp_path / "p.tsv")]) == 1
    assert "empty.wav: file is empty" in capsys.readouterr().err
    assert not (tmp_path / "p.tsv").exists()


def test_training_features_still_raise_on_a_bad_file(trained, tmp_path):
    # downstream training must not drop utterances silently: only predict skips
    folder = _folder_with_bad_files(trained, tmp_path / "new")
    source = EncoderSource(load_encoder("logmel"), "logmel")
    with pytest.raises(ValueError, match="empty.wav: file is empty"):
        source.features(input_records(folder))


def test_precomputed_features_skip_only_what_extract_listed(trained, tmp_path):
    folder = _folder_with_bad_files(trained, tmp_path / "new")
    feats = tmp_path / "feats"
    assert main(["extract", "--encoder", "logmel", "--input", str(folder), "--out", str(feats), "--no-progress"]) == 0
    records = input_records(folder)
    fs = PrecomputedSource(feats).features(records, skip_failed=True)
    assert sorted(fs.ids) == sorted(r["id"] for r in records if r["id"].startswith("spk"))
    assert set(fs.failed) == {"empty", "garbage", "tiny"} and "errors.tsv" in fs.failed["tiny"]
    # training does not skip: the error says why extract left them out
    with pytest.raises(KeyError, match=r"extract could not encode some \(errors.tsv: empty: .*file is empty"):
        PrecomputedSource(feats).features(records)
    # an id neither extracted nor listed as failed is a wrong feature folder: still an error
    other = [{**records[0], "id": "never_extracted"}]
    with pytest.raises(KeyError, match="never_extracted"):
        PrecomputedSource(feats).features(other, skip_failed=True)


def test_predict_refuses_features_of_other_encoder_weights(tmp_path, capsys):
    # two encoders with the same architecture and layer names, different weights
    from helpers import tiny_model

    from speechssl.upstream.release import save_released_encoder

    corpus = tmp_path / "synth"
    assert main(["synth", "--backend", "formant", "--out", str(corpus), "--speakers", "2",
                 "--utts-per-speaker", "3", "--jobs", "1"]) == 0
    manifest = str(corpus / "manifest.jsonl")
    for seed in (0, 1):
        save_released_encoder(tiny_model("apc", seed), tmp_path / f"enc{seed}")
    exp = tmp_path / "exp"
    assert main(["downstream", "train", "--encoder", str(tmp_path / "enc0"), "--train", manifest,
                 "--label", "speaker", "--exp", str(exp), "--quiet", *FAST]) == 0
    for seed in (0, 1):
        assert main(["extract", "--encoder", str(tmp_path / f"enc{seed}"), "--input", manifest,
                     "--out", str(tmp_path / f"feats{seed}"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["downstream", "predict", "--model", str(exp), "--input", manifest,
                 "--features", str(tmp_path / "feats1"), "--out", str(tmp_path / "p1.tsv")]) == 1
    err = capsys.readouterr().err
    assert f"the features in {tmp_path / 'feats1'} come from other weights" in err, err
    assert main(["downstream", "predict", "--model", str(exp), "--input", manifest,
                 "--encoder", str(tmp_path / "enc1"), "--out", str(tmp_path / "p2.tsv")]) == 1
    assert "has other weights" in capsys.readouterr().err
    assert not (tmp_path / "p1.tsv").exists() and not (tmp_path / "p2.tsv").exists()
    # the encoder it was trained on, directly or through its extracted features, predicts the same
    assert main(["downstream", "predict", "--model", str(exp), "--input", manifest,
                 "--features", str(tmp_path / "feats0"), "--out", str(tmp_path / "p3.tsv")]) == 0
    assert main(["downstream", "predict", "--model", str(exp), "--input", manifest,
                 "--out", str(tmp_path / "p4.tsv")]) == 0
    assert _tsv(tmp_path / "p3.tsv") == _tsv(tmp_path / "p4.tsv")
