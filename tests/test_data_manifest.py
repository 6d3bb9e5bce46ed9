"""Manifest schema, errors with file:line, splits and k-fold."""

from __future__ import annotations

import json

import pytest

from speechssl.data import (
    ManifestError,
    kfold_records,
    manifest_summary,
    parse_fractions,
    read_manifest,
    record_duration,
    split_records,
    write_manifest,
)


def _rec(i: int, speaker: str = "s0", seconds: float = 1.0, path: str | None = None) -> dict:
    return {
        "id": f"u{i:03d}",
        "path": path or f"/data/u{i:03d}.wav",
        "num_samples": int(seconds * 16000),
        "sample_rate": 16000,
        "speaker": speaker,
    }


def test_round_trip_relative_and_absolute_paths(tmp_path):
    (tmp_path / "audio").mkdir()
    inside = {**_rec(1), "path": str(tmp_path / "audio" / "a.wav"), "emotion": "happy"}
    outside = {**_rec(2), "path": "/elsewhere/b.flac", "start": 0.5, "duration": 0.25}
    out = tmp_path / "m.jsonl"
    write_manifest([inside, outside], out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["path"] == "audio/a.wav"  # relative to the manifest folder
    assert lines[1]["path"] == "/elsewhere/b.flac"
    assert list(lines[1])[:6] == ["id", "path", "num_samples", "sample_rate", "start", "duration"]
    back = read_manifest(out)
    assert back == [inside, outside]
    assert record_duration(back[1]) == 0.25
    assert record_duration(back[0]) == 1.0
    assert record_duration({**_rec(3, seconds=2.0), "start": 0.5}) == 1.5


def test_write_is_atomic_on_invalid_record(tmp_path):
    out = tmp_path / "m.jsonl"
    write_manifest([_rec(1)], out)
    before = out.read_text()
    with pytest.raises(ManifestError, match="record 2.*'num_samples'"):
        write_manifest([_rec(2), {**_rec(3), "num_samples": "12"}], out)
    assert out.read_text() == before
    with pytest.raises(ManifestError, match="duplicate id 'u001'"):
        write_manifest([_rec(1), _rec(1)], out)
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]  # no temp files left


@pytest.mark.parametrize(
    "line,match",
    [
        ('{"id": "a", "path": "a.wav", "num_samples": 10', r"m\.jsonl:2: bad JSON"),
        ('["a"]', r"m\.jsonl:2: expected a JSON object, got list"),
        ('{"path": "a.wav", "num_samples": 10, "sample_rate": 16000}', r"m\.jsonl:2: missing field 'id'"),
        ('{"id": "b", "num_samples": 10, "sample_rate": 16000}', r"m\.jsonl:2: missing field 'path'"),
        ('{"id": "b", "path": "a.wav", "sample_rate": 16000}', r"m\.jsonl:2: missing field 'num_samples'"),
        ('{"id": "b", "path": "a.wav", "num_samples": 10}', r"m\.jsonl:2: missing field 'sample_rate'"),
        (
            '{"id": "b", "path": "a.wav", "num_samples": 1.5, "sample_rate": 16000}',
            r"m\.jsonl:2: field 'num_samples' must be int, got float 1.5",
        ),
        (
            '{"id": 7, "path": "a.wav", "num_samples": 10, "sample_rate": 16000}',
            r"m\.jsonl:2: field 'id' must be str, got int",
        ),
        (
            '{"id": "b", "path": "a.wav", "num_samples": 10, "sample_rate": true}',
            r"m\.jsonl:2: field 'sample_rate' must be int, got bool",
        ),
        ('{"id": "b", "path": "a.wav", "num_samples": 10, "sample_rate": 0}', r"'sample_rate' must be > 0"),
        (
            '{"id": "b", "path": "a.wav", "num_samples": 16000, "sample_rate": 16000, "start": "x"}',
            r"m\.jsonl:2: field 'start' must be a number",
        ),
        (
            '{"id": "b", "path": "a.wav", "num_samples": 16000, "sample_rate": 16000, "start": 0.9, "duration": 0.5}',
            r"m\.jsonl:2: segment .* ends after the file",
        ),
        (
            '{"id": "a", "path": "b.wav", "num_samples": 10, "sample_rate": 16000}',
            r"m\.jsonl:2: duplicate id 'a' \(first on line 1\)",
        ),
    ],
)
def test_read_errors_name_file_line_and_key(tmp_path, line, match):
    m = tmp_path / "m.jsonl"
    m.write_text('{"id": "a", "path": "a.wav", "num_samples": 10, "sample_rate": 16000}\n' + line + "\n")
    with pytest.raises(ManifestError, match=match):
        read_manifest(m)


def test_read_missing_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(ManifestError, match="no records"):
        read_manifest(tmp_path / "e.jsonl")
    assert read_manifest(tmp_path / "e.jsonl", allow_empty=True) == []


def test_summary_counts_labels():
    recs = [_rec(i, speaker=f"s{i % 3}", seconds=1.0 + i) for i in range(6)]
    s = manifest_summary(recs)
    assert s["records"] == 6 and s["seconds_max"] == 6.0
    assert s["hours"] == pytest.approx(21 / 3600, abs=1e-4)
    assert s["labels"]["speaker"] == {"distinct": 3, "missing": 0, "top": {"s0": 2, "s1": 2, "s2": 2}}


def test_grouped_split_never_shares_a_speaker_and_is_deterministic():
    recs = [_rec(i, speaker=f"spk{i % 17}", seconds=1.0 + (i % 5)) for i in range(200)]
    fr = parse_fractions("train=0.8,dev=0.1,test=0.1")
    a = split_records(recs, fr, group_by="speaker", seed=3)
    b = split_records(list(reversed(recs)), fr, group_by="speaker", seed=3)
    assert {k: sorted(r["id"] for r in v) for k, v in a.items()} == {
        k: sorted(r["id"] for r in v) for k, v in b.items()
    }  # independent of input order
    speakers = {k: {r["speaker"] for r in v} for k, v in a.items()}
    assert not speakers["train"] & speakers["dev"] and not speakers["train"] & speakers["test"]
    assert not speakers["dev"] & speakers["test"]
    assert sum(len(v) for v in a.values()) == 200 and all(a.values())
    total = sum(record_duration(r) for r in recs)
    train_share = sum(record_duration(r) for r in a["train"]) / total
    assert 0.7 < train_share < 0.9
    c = split_records(recs, fr, group_by="speaker", seed=4)
    assert {r["id"] for r in c["dev"]} != {r["id"] for r in a["dev"]}


def test_ungrouped_split_and_errors():
    recs = [_rec(i) for i in range(10)]
    parts = split_records(recs, {"train": 0.8, "dev": 0.1, "test": 0.1})
    assert [len(parts[k]) for k in ("train", "dev", "test")] == [8, 1, 1]
    with pytest.raises(ValueError, match="sum to 1"):
        split_records(recs, {"train": 0.8, "dev": 0.1})
    with pytest.raises(ValueError, match="cannot split 2 speaker values into 3 parts"):
        split_records([_rec(0, "a"), _rec(1, "b")], {"a": 0.5, "b": 0.25, "c": 0.25}, group_by="speaker")
    with pytest.raises(KeyError, match="has no field 'gender'"):
        split_records(recs, {"a": 0.5, "b": 0.5}, group_by="gender")
    with pytest.raises(ValueError, match="expected name=number"):
        parse_fractions("train=0.8,dev")


def test_kfold_by_group_covers_each_record_once():
    recs = [_rec(i, speaker=f"s{i % 7}") for i in range(70)]
    folds = kfold_records(recs, 5, group_by="speaker", seed=1)
    tested = [r["id"] for _, test in folds for r in test]
    assert sorted(tested) == sorted(r["id"] for r in recs)
    for train, test in folds:
        assert test and not {r["speaker"] for r in train} & {r["speaker"] for r in test}
        assert len(train) + len(test) == 70
    assert kfold_records(recs, 5, group_by="speaker", seed=1) == folds
    with pytest.raises(ValueError, match="cannot make 8 folds from 7 speaker values"):
        kfold_records(recs, 8, group_by="speaker")
