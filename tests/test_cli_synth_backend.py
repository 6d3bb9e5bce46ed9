"""``speechssl synth`` defaults to ``--backend auto`` and says which backend ran."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from speechssl.cli.main import main
from speechssl.corpora import espeak
from speechssl.data import read_manifest


def test_default_is_auto_and_uses_espeak_when_installed(tmp_path: Path, capsys):
    exe = shutil.which("espeak-ng")
    assert exe, "espeak-ng is installed here and in CI (tools/setup.sh installs it)"
    out = tmp_path / "e"
    assert main(["synth", "--out", str(out), "--speakers", "1", "--utts-per-speaker", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out.resolve() / "manifest.jsonl")
    assert f"speechssl synth: backend espeak (auto: espeak-ng found at {exe})" in captured.err
    assert [r["backend"] for r in read_manifest(out / "manifest.jsonl")] == ["espeak"]


def test_auto_falls_back_to_formant_and_explicit_backend_is_named(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(espeak, "espeak_binary", lambda: None)
    out = tmp_path / "f"
    assert main(["synth", "--out", str(out), "--speakers", "1", "--utts-per-speaker", "1"]) == 0
    assert "speechssl synth: backend formant (auto: espeak-ng not installed)" in capsys.readouterr().err
    assert [r["backend"] for r in read_manifest(out / "manifest.jsonl")] == ["formant"]
    assert main(["synth", "--backend", "formant", "--out", str(out), "--speakers", "1", "--utts-per-speaker", "1"]) == 0
    assert "speechssl synth: backend formant (--backend)" in capsys.readouterr().err


def test_help_names_the_default(capsys):
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    assert "auto (default): espeak-ng if installed, else formant" in " ".join(capsys.readouterr().out.split())
