"""Folder scanning (prepare), fairseq TSV and Kaldi import/export, and the two CLI verbs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechssl.cli.main import main
from speechssl.data import ManifestError, read_manifest, write_manifest
from speechssl.data.formats import read_kaldi_dir, read_tsv, write_kaldi_dir, write_tsv
from speechssl.data.prepare import PrepareError, make_ids, parse_label_patterns, prepare_folder


def _write(path: Path, seconds: float, sr: int = 16000, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, format=fmt)


@pytest.fixture()
def corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    _write(root / "19" / "198" / "19-198-0000.wav", 1.0)
    _write(root / "19" / "198" / "19-198-0001.flac", 1.5)
    _write(root / "26" / "495" / "26-495-0000.wav", 2.0, sr=8000)
    _write(root / "26" / "495" / "26-495-0001.ogg", 0.2)  # too short for --min-seconds 0.5
    (root / "26" / "495" / "26-495-0002.wav").write_bytes(b"RIFF garbage")  # corrupt
    (root / "26" / "495" / "26-495-0003.wav").write_bytes(b"")  # empty
    (root / "26" / "495" / "notes.txt").write_text("not audio")
    (root / ".hidden").mkdir()
    _write(root / ".hidden" / "x.wav", 1.0)
    return root


def test_prepare_keeps_drops_and_labels(corpus, tmp_path):
    out = tmp_path / "data" / "train.jsonl"
    report = prepare_folder(
        corpus,
        out,
        label_from_path=["speaker={grandparent}", "chapter={parent}", r"(?P<utt>\d+)$"],
        min_seconds=0.5,
    )
    assert report.kept == 3 and report.seconds_kept == pytest.approx(4.5)
    assert report.dropped == {"too_short": 1, "unreadable": 1, "empty": 1}
    assert report.seconds_dropped["too_short"] == pytest.approx(0.2)
    assert "26/495/26-495-0002.wav" in report.examples["unreadable"][0]
    text = report.summary()
    assert (
        "kept 3 files, 0.0013 h (4.5 s)" in text and "unreadable: 1 files" in text and "too_short: 1" in text
    )
    recs = read_manifest(out)
    assert [r["id"] for r in recs] == ["19_198_19-198-0000", "19_198_19-198-0001", "26_495_26-495-0000"]
    assert recs[2] == {
        "id": "26_495_26-495-0000",
        "path": str(corpus / "26/495/26-495-0000.wav"),
        "num_samples": 16000,
        "sample_rate": 8000,
        "speaker": "26",
        "chapter": "495",
        "utt": "0000",
    }
    # re-running gives the same manifest (stable ids, atomic overwrite)
    before = out.read_text()
    prepare_folder(
        corpus,
        out,
        label_from_path=["speaker={grandparent}", "chapter={parent}", r"(?P<utt>\d+)$"],
        min_seconds=0.5,
    )
    assert out.read_text() == before


def test_prepare_regex_labels_and_no_match(corpus, tmp_path):
    report = prepare_folder(
        corpus, tmp_path / "m.jsonl", label_from_path=r"(?P<speaker>\d+)-(?P<chapter>\d+)-0000"
    )
    recs = read_manifest(tmp_path / "m.jsonl")
    assert {(r["speaker"], r["chapter"]) for r in recs} == {("19", "198"), ("26", "495")}
    assert report.dropped["no_label_match"] == 2  # the -0001 files
    on_path = prepare_folder(corpus, tmp_path / "p.jsonl", label_from_path=r"^(?P<spk>\d+)/")
    assert on_path.kept == 4 and on_path.label_fields == ["spk"]


def test_a_template_folder_the_file_lacks_is_named(corpus, tmp_path):
    _write(corpus / "top.wav", 1.0)  # at the top of DIR: no {parent}, no {grandparent}
    report = prepare_folder(corpus, tmp_path / "m.jsonl", label_from_path=["speaker={grandparent}"])
    assert report.dropped["no_label_match"] == 1 and report.kept == 4
    (why,) = report.examples["no_label_match"]
    assert why.startswith("top.wav: 'speaker={grandparent}' needs {grandparent}") and "top of DIR" in why
    regex = prepare_folder(corpus, tmp_path / "r.jsonl", label_from_path=["(?P<n>[0-9]{4})$"])
    assert "top.wav: does not match '(?P<n>[0-9]{4})$'" in regex.examples["no_label_match"]


def test_label_pattern_errors():
    with pytest.raises(ValueError, match="unknown placeholder {folder}"):
        parse_label_patterns(["speaker={folder}"])
    with pytest.raises(ValueError, match="needs named groups"):
        parse_label_patterns([r"(\d+)-\d+"])
    with pytest.raises(ValueError, match="valid regex"):
        parse_label_patterns(["(?P<x>"])


def test_prepare_empty_and_nothing_usable(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("hi")
    with pytest.raises(
        PrepareError, match=r"no audio files \(.wav, .flac.*\) found under .*empty \(1 other files\)"
    ):
        prepare_folder(tmp_path / "empty", tmp_path / "m.jsonl")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.wav").write_bytes(b"xx")
    with pytest.raises(PrepareError, match="none of the 1 audio files") as err:
        prepare_folder(tmp_path / "bad", tmp_path / "m.jsonl")
    assert err.value.report.dropped == {"unreadable": 1}
    assert not (tmp_path / "m.jsonl").exists()
    with pytest.raises(FileNotFoundError, match="not a folder"):
        prepare_folder(tmp_path / "missing", tmp_path / "m.jsonl")


def test_tsv_bare_label_file_name_sits_next_to_the_tsv(corpus, tmp_path, monkeypatch):
    """`manifest export --out fairseq/train.tsv --labels text=train.wrd` (the --help example) writes
    fairseq/train.wrd beside train.tsv and train.ids, not into the working directory, and the import
    of fairseq/train.tsv with the same --labels reads it back; a path with a folder is taken as given."""
    prepare_folder(corpus, tmp_path / "m.jsonl", label_from_path="speaker={grandparent}")
    recs = read_manifest(tmp_path / "m.jsonl")
    for r in recs:
        r["text"] = f"words of {r['id']}"
    write_manifest(recs, tmp_path / "m.jsonl")
    monkeypatch.chdir(tmp_path)
    assert main(["manifest", "export", "--to", "tsv", "m.jsonl", "--out", "fairseq/train.tsv",
                 "--labels", "text=train.wrd", "--labels", "speaker=other/train.spk"]) == 0
    assert not (tmp_path / "train.wrd").exists()
    assert (tmp_path / "fairseq/train.wrd").read_text().splitlines() == [r["text"] for r in recs]
    assert (tmp_path / "other/train.spk").read_text().splitlines() == [r["speaker"] for r in recs]
    assert main(["manifest", "import", "--from", "tsv", "fairseq/train.tsv", "--out", "back.jsonl",
                 "--labels", "text=train.wrd", "--labels", "speaker=other/train.spk"]) == 0
    back = read_manifest(tmp_path / "back.jsonl")
    assert [(r["id"], r["text"], r["speaker"]) for r in back] == [(r["id"], r["text"], r["speaker"]) for r in recs]


def test_ids_unique_and_stable():
    ids = make_ids([Path("a/b c.wav"), Path("a/x.wav"), Path("a/x.flac"), Path("a_x.wav")])
    assert ids == ["a_b_c", "a_x_wav", "a_x_flac", "a_x_wav-2"]


def test_tsv_round_trip(corpus, tmp_path):
    prepare_folder(corpus, tmp_path / "m.jsonl", label_from_path="speaker={grandparent}")
    recs = read_manifest(tmp_path / "m.jsonl")
    for r in recs:
        r["text"] = f"words of {r['id']}"
    write_tsv(recs, tmp_path / "train.tsv", label_files={"text": tmp_path / "train.wrd"})
    lines = (tmp_path / "train.tsv").read_text().splitlines()
    assert lines[0] == str(corpus) and lines[1] == "19/198/19-198-0000.wav\t16000"
    back = read_tsv(tmp_path / "train.tsv", label_files={"text": tmp_path / "train.wrd"})
    assert [(r["id"], r["path"], r["num_samples"], r["sample_rate"], r["text"]) for r in back] == [
        (r["id"], r["path"], r["num_samples"], r["sample_rate"], r["text"]) for r in recs
    ]
    assert read_tsv(tmp_path / "train.tsv", sample_rate=16000)[2]["sample_rate"] == 16000
    (tmp_path / "bad.tsv").write_text(f"{corpus}\n19/198/19-198-0000.wav 16000\n")
    with pytest.raises(ManifestError, match=r"bad\.tsv:2: expected 'relative/path<TAB>num_samples'"):
        read_tsv(tmp_path / "bad.tsv")
    (tmp_path / "bad.tsv").write_text(f"{corpus}\n19/198/19-198-0000.wav\t16000\nmissing.wav\t5\n")
    with pytest.raises(ManifestError, match=r"bad\.tsv:3: file not found"):
        read_tsv(tmp_path / "bad.tsv")
    with pytest.raises(ManifestError, match="is a segment"):
        write_tsv([{**recs[0], "start": 0.1}], tmp_path / "seg.tsv")


def test_kaldi_round_trip_with_segments(corpus, tmp_path):
    a = str(corpus / "19/198/19-198-0000.wav")
    b = str(corpus / "26/495/26-495-0000.wav")
    recs = [
        {
            "id": "19-utt1",
            "path": a,
            "num_samples": 16000,
            "sample_rate": 16000,
            "speaker": "19",
            "text": "hello",
        },
        {
            "id": "26-seg1",
            "path": b,
            "num_samples": 16000,
            "sample_rate": 8000,
            "start": 0.5,
            "duration": 1.0,
            "speaker": "26",
            "text": "a b",
        },
    ]
    write_kaldi_dir(recs, tmp_path / "kaldi")
    files = {p.name: p.read_text() for p in (tmp_path / "kaldi").iterdir()}
    assert set(files) == {"wav.scp", "segments", "utt2spk", "spk2utt", "text"}
    assert files["utt2spk"] == "19-utt1 19\n26-seg1 26\n"
    assert "26-seg1 26_495_26-495-0000 0.500 1.500" in files["segments"]
    back = read_kaldi_dir(tmp_path / "kaldi")
    assert back[1] == recs[1]
    assert back[0] == {**recs[0], "id": "19-utt1", "start": 0.0, "duration": 1.0}
    plain = read_kaldi_dir(_plain_kaldi(tmp_path, a))
    assert plain == [{"id": "u1", "path": a, "num_samples": 16000, "sample_rate": 16000, "speaker": "spk1"}]


def _plain_kaldi(tmp_path: Path, audio: str) -> Path:
    d = tmp_path / "plain"
    d.mkdir()
    (d / "wav.scp").write_text(f"u1 {audio}\n")
    (d / "utt2spk").write_text("u1 spk1\n")
    return d


@pytest.mark.parametrize(
    "entry,match",
    [
        ("sox in.flac -t wav - |", r"wav\.scp:2: 'sox in.flac -t wav - \|' is a command \(pipe\)"),
        ("-", r"wav\.scp:2: '-' \(stdin\)"),
        ("feats.ark:1234", r"wav\.scp:2: .*offset into an ark"),
        ("/no/such/file.wav", r"wav\.scp:2: file not found"),
    ],
)
def test_kaldi_refuses_commands_naming_the_line(corpus, tmp_path, entry, match):
    d = tmp_path / "k"
    d.mkdir()
    (d / "wav.scp").write_text(f"u0 {corpus / '19/198/19-198-0000.wav'}\nu1 {entry}\n")
    with pytest.raises(ManifestError, match=match):
        read_kaldi_dir(d)


def test_cli_prepare_split_info_import_export(corpus, tmp_path, capsys):
    for spk in range(6):  # more speakers so a grouped 3-way split is possible
        _write(corpus / f"9{spk}" / "1" / f"9{spk}-1-0000.wav", 1.0)
    m = tmp_path / "data" / "all.jsonl"
    assert (
        main(
            [
                "prepare",
                str(corpus),
                "--out",
                str(m),
                "--label-from-path",
                "speaker={grandparent}",
                "--min-seconds",
                "0.5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "kept 9 files" in out and "dropped 3 files" in out
    assert (
        main(
            [
                "manifest",
                "split",
                str(m),
                "--out-dir",
                str(tmp_path / "data"),
                "--group-by",
                "speaker",
                "--fractions",
                "train=0.6,dev=0.2,test=0.2",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    parts = {n: read_manifest(tmp_path / "data" / f"{n}.jsonl") for n in ("train", "dev", "test")}
    assert sum(len(p) for p in parts.values()) == 9
    spk = [{r["speaker"] for r in p} for p in parts.values()]
    assert not (spk[0] & spk[1] or spk[0] & spk[2] or spk[1] & spk[2])
    capsys.readouterr()
    assert main(["manifest", "info", str(m), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["records"] == 9 and info["labels"]["speaker"]["distinct"] == 8
    assert main(["manifest", "export", "--to", "kaldi", str(m), "--out", str(tmp_path / "k")]) == 0
    assert (
        main(
            ["manifest", "import", "--from", "kaldi", str(tmp_path / "k"), "--out", str(tmp_path / "k.jsonl")]
        )
        == 0
    )
    assert main(["manifest", "export", "--to", "tsv", str(m), "--out", str(tmp_path / "t.tsv")]) == 0
    assert (
        main(
            [
                "manifest",
                "import",
                "--from",
                "tsv",
                str(tmp_path / "t.tsv"),
                "--out",
                str(tmp_path / "t.jsonl"),
            ]
        )
        == 0
    )
    assert {r["id"] for r in read_manifest(tmp_path / "t.jsonl")} == {r["id"] for r in read_manifest(m)}
    k = read_manifest(tmp_path / "k.jsonl")
    assert sorted((r["path"], r["speaker"]) for r in k) == sorted(
        (r["path"], r["speaker"]) for r in read_manifest(m)
    )
    # nothing usable: exit 1 with a message
    (tmp_path / "empty").mkdir()
    assert main(["prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "e.jsonl")]) == 1
    assert "no audio files" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    write_manifest(k, bad)
    bad.write_text(bad.read_text() + "{oops\n")
    assert main(["manifest", "info", str(bad)]) == 1
    assert f"bad.jsonl:{len(k) + 1}: bad JSON" in capsys.readouterr().err


def test_prepare_formats_and_extension_case(tmp_path):
    d = tmp_path / "f"
    _write(d / "a.sph", 1.0, fmt="NIST")
    _write(d / "b.WAV", 1.0, fmt="WAV")
    _write(d / "c.mp3", 1.0)
    _write(d / "d.flac", 1.0, sr=44100)
    report = prepare_folder(d, tmp_path / "m.jsonl")
    recs = {r["id"]: r for r in read_manifest(tmp_path / "m.jsonl")}
    assert report.kept == 4 and set(recs) == {"a", "b", "c", "d"}
    assert recs["d"]["sample_rate"] == 44100 and recs["a"]["num_samples"] == 16000
    only_wav = prepare_folder(d, tmp_path / "w.jsonl", extensions=["wav"])
    assert only_wav.kept == 1 and only_wav.other_files == 3


def test_prepare_logs_progress_lines_without_a_terminal(corpus, tmp_path, monkeypatch, caplog):
    """A batch job's log sees where the header scan is (a line every 30 s), however few files there are."""
    import logging

    import speechssl.data.prepare as prepare

    monkeypatch.setattr(prepare, "PROGRESS_EVERY_SECONDS", 0.0)  # a line after every file
    with caplog.at_level(logging.INFO, logger="speechssl.data.prepare"):
        prepare_folder(corpus, tmp_path / "m.jsonl")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("prepare: reading headers: ")]
    assert len(lines) == 6 and lines[0].startswith("prepare: reading headers: 1/6 files (16.7%)")  # 6 audio files
    assert lines[-1].startswith("prepare: reading headers: 6/6 files (100.0%)")
