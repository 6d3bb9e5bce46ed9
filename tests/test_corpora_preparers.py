"""Corpus preparers on tiny fabricated trees with each real corpus's layout and file names."""

from __future__ import annotations

import pytest
from corpus_fixtures import make_iemocap, make_librispeech, make_voxceleb1, write_noise_wav

from speechssl.corpora.generic import prepare_generic
from speechssl.corpora.iemocap import prepare_iemocap
from speechssl.corpora.librispeech import prepare_librispeech
from speechssl.corpora.voxceleb1 import prepare_voxceleb1
from speechssl.data.manifest import read_manifest


def test_librispeech(tmp_path, capsys):
    corpus = make_librispeech(tmp_path / "corpus")
    written = prepare_librispeech(corpus, tmp_path / "out")
    assert set(written) == {"train-clean-100", "dev-clean"}
    train = read_manifest(written["train-clean-100"])
    assert [r["id"] for r in train] == ["19-198-0000", "19-198-0001", "19-198-0002"]
    assert train[0]["speaker"] == "19" and train[0]["gender"] == "F" and train[0]["text"] == "HELLO WORLD 0"
    assert len(read_manifest(written["dev-clean"])) == 2  # the corrupt file is dropped...
    assert "unreadable: 1 files" in capsys.readouterr().out  # ...and reported
    with pytest.raises(ValueError, match="not found"):
        prepare_librispeech(corpus, tmp_path / "out", subsets=["train-other-500"])


def test_iemocap(tmp_path):
    written = prepare_iemocap(make_iemocap(tmp_path / "corpus"), tmp_path / "out")
    allr = read_manifest(written["all"])
    assert len(allr) == 12  # 'fru' dropped in each of 3 sessions
    assert {r["emotion"] for r in allr} == {"neutral", "happy", "angry", "sad"}
    exc = next(r for r in allr if r["id"] == "Ses01F_impro01_M001")
    assert exc["emotion"] == "happy" and exc["speaker"] == "Ses01M" and exc["session"] == "Session1"
    for k in (1, 2, 3):
        test = read_manifest(written[f"fold{k}/test"])
        train = read_manifest(written[f"fold{k}/train"])
        assert {r["session"] for r in test} == {f"Session{k}"}
        assert f"Session{k}" not in {r["session"] for r in train}
        assert len(test) + len(train) == 12


def test_voxceleb1(tmp_path):
    written = prepare_voxceleb1(make_voxceleb1(tmp_path / "vox"), tmp_path / "out")
    train = read_manifest(written["train"])
    assert len(train) == 4 and {r["speaker"] for r in train} == {"id10001", "id10002"}
    assert len(read_manifest(written["test"])) == 2
    (tmp_path / "vox" / "iden_split.txt").write_text("1 id1/x/1.wav\n7 id1/x/2.wav\n")
    with pytest.raises(ValueError, match=r"iden_split.txt:2"):
        prepare_voxceleb1(tmp_path / "vox", tmp_path / "out")


def test_generic(tmp_path):
    corpus = tmp_path / "clips"
    for i in range(4):
        write_noise_wav(corpus / "sub" / f"c{i}.wav")
    (tmp_path / "labels.csv").write_text("path,mood\n" + "".join(f"sub/c{i}.wav,{'ab'[i % 2]}\n" for i in range(4)))
    recs = read_manifest(prepare_generic(corpus, tmp_path / "labels.csv", tmp_path / "out")["all"])
    assert [r["mood"] for r in recs] == ["a", "b", "a", "b"]
    (tmp_path / "labels.tsv").write_text("id\tmood\nc0\tx\nc3\ty\nmissing\tz\n")
    recs = read_manifest(prepare_generic(corpus, tmp_path / "labels.tsv", tmp_path / "out2")["all"])
    assert [r["id"] for r in recs] == ["c0", "c3"]  # the missing file is dropped and reported
    (tmp_path / "bad.csv").write_text("file,mood\nx,y\n")
    with pytest.raises(ValueError, match=r"bad.csv:1: header needs a 'path' or 'id'"):
        prepare_generic(corpus, tmp_path / "bad.csv", tmp_path / "out3")


def test_manifest_merge_cli(tmp_path):
    from speechssl.cli.main import main

    written = prepare_librispeech(make_librispeech(tmp_path / "corpus"), tmp_path / "out")
    out = tmp_path / "train.jsonl"
    assert main(["manifest", "merge", str(written["train-clean-100"]), str(written["dev-clean"]), "--out", str(out)]) == 0
    assert len(read_manifest(out)) == 5
    assert main(["manifest", "merge", str(out), str(written["dev-clean"]), "--out", str(tmp_path / "x.jsonl")]) == 1
    assert not (tmp_path / "x.jsonl").exists()


def test_registry_imports_each_corpus_preparer_on_use():
    """``CORPORA`` names the preparers by ``module:function`` (so ``speechssl corpus --help`` imports
    none of them); each path leads to the corpus's ``prepare_<corpus>``, and a spec given a function
    returns it as is."""
    from speechssl.corpora import CORPORA, CorpusSpec

    expected = {"librispeech": prepare_librispeech, "iemocap": prepare_iemocap, "voxceleb1": prepare_voxceleb1,
                "generic": prepare_generic}
    assert {name: spec.preparer() for name, spec in CORPORA.items()} == expected
    assert all(isinstance(spec.prepare, str) for spec in CORPORA.values())
    assert CorpusSpec(prepare_generic).preparer() is prepare_generic


def test_corpus_headers_progress_without_a_terminal(tmp_path, monkeypatch, caplog):
    """Without a terminal, reading headers draws no bar (no carriage returns): it logs lines instead."""
    import logging
    import subprocess
    import sys

    from speechssl.corpora import common

    corpus = tmp_path / "clips"
    for i in range(3):
        write_noise_wav(corpus / f"c{i}.wav")
    (tmp_path / "labels.csv").write_text("path,mood\n" + "".join(f"c{i}.wav,a\n" for i in range(3)))
    proc = subprocess.run([sys.executable, "-m", "speechssl.cli.main", "corpus", "generic", str(corpus),
                           "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    monkeypatch.setattr(common, "PROGRESS_EVERY_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="speechssl.corpora.common"):
        prepare_generic(corpus, tmp_path / "labels.csv", tmp_path / "out2")
    assert any("headers: 3/3 files (100.0%)" in r.getMessage() for r in caplog.records)
