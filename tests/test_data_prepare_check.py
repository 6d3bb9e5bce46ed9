"""``speechssl prepare --check-audio``: decode every file, drop non-finite and silent ones with reasons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import speechssl.data.prepare as prepare_mod
from speechssl.cli.main import main
from speechssl.data import read_manifest
from speechssl.data.prepare import prepare_folder


def _write(path: Path, samples: np.ndarray, subtype: str = "FLOAT") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples.astype(np.float32), 16000, subtype=subtype)


@pytest.fixture()
def corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    t = np.arange(16000) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    _write(root / "good.wav", tone, subtype="PCM_16")
    _write(root / "faint.wav", 1e-3 * np.sin(2 * np.pi * 220 * t))  # quiet, not silent
    _write(root / "all_nan.wav", np.full(16000, np.nan))
    late_inf = tone.copy()
    late_inf[12345] = np.inf
    _write(root / "late_inf.wav", late_inf)
    _write(root / "zeros.wav", np.zeros(16000), subtype="PCM_16")
    _write(root / "hiss.wav", np.full(16000, 1e-6))
    return root


def test_default_reads_headers_and_keeps_bad_samples(corpus, tmp_path):
    report = prepare_folder(corpus, tmp_path / "all.jsonl")
    assert report.kept == 6 and report.dropped == {}


def test_check_audio_drops_non_finite_and_silent_with_reasons(corpus, tmp_path, monkeypatch):
    # Small blocks so the inf sits in a later block than the first: its frame must still be exact.
    monkeypatch.setattr(prepare_mod, "_CHECK_BLOCK_FRAMES", 4096)
    out = tmp_path / "checked.jsonl"
    report = prepare_folder(corpus, out, check_audio=True)
    assert [r["id"] for r in read_manifest(out)] == ["faint", "good"]
    assert report.dropped == {"non_finite": 2, "silent": 2}
    assert report.seconds_dropped["silent"] == pytest.approx(2.0)
    examples = {e.split(":")[0]: e for r in report.examples.values() for e in r}
    assert "frame 0" in examples["all_nan.wav"] and "NaN/inf" in examples["all_nan.wav"]
    assert "frame 12345" in examples["late_inf.wav"]
    assert "peak |sample| 0 <" in examples["zeros.wav"] and "peak |sample| 1e-06 <" in examples["hiss.wav"]
    # A higher threshold also drops the faint file; the report says which threshold was used.
    report = prepare_folder(corpus, out, check_audio=True, silence_peak=0.01)
    assert report.dropped["silent"] == 3 and [r["id"] for r in read_manifest(out)] == ["good"]


def test_check_audio_reports_undecodable_samples(tmp_path):
    root = tmp_path / "corpus"
    _write(root / "ok.wav", 0.3 * np.ones(16000))
    _write(root / "cut.flac", 0.3 * np.sin(np.arange(64000) / 10.0), subtype="PCM_16")
    data = (root / "cut.flac").read_bytes()
    (root / "cut.flac").write_bytes(data[: len(data) // 3])  # header intact, frames missing
    header_only = prepare_folder(root, tmp_path / "a.jsonl")
    checked = prepare_folder(root, tmp_path / "b.jsonl", check_audio=True)
    assert header_only.kept == 2
    assert checked.kept == 1 and checked.dropped == {"unreadable": 1}
    assert checked.examples["unreadable"][0].startswith("cut.flac: ")


def test_cli_check_audio_and_help(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--check-audio" in help_text and "the default reads headers only" in help_text
    out = tmp_path / "cli.jsonl"
    assert main(["prepare", str(corpus), "--out", str(out), "--check-audio"]) == 0
    text = capsys.readouterr().out
    assert "kept 2 files" in text and "non_finite: 2 files" in text and "silent: 2 files" in text
    assert "all_nan.wav: non-finite (NaN/inf) sample at frame 0" in text
