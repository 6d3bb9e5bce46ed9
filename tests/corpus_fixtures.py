"""Tiny fabricated corpus trees with each real corpus's layout and file-name patterns."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import soundfile as sf


def write_noise_wav(path: Path, seconds: float = 0.5, sr: int = 16000, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    sf.write(path, 0.1 * rng.standard_normal(int(seconds * sr)).astype("float32"), sr, format=fmt)
    return path


def make_librispeech(root: Path, seconds: float = 0.5) -> Path:
    base = root / "LibriSpeech"
    (base).mkdir(parents=True)
    (base / "SPEAKERS.TXT").write_text(";ID |SEX| SUBSET |MINUTES| NAME\n19 | F | train-clean-100 | 25 | Kara\n")
    for subset, spk, chap in (("train-clean-100", "19", "198"), ("dev-clean", "84", "121123")):
        d = base / subset / spk / chap
        lines = []
        for utt in range(3):
            stem = f"{spk}-{chap}-{utt:04d}"
            write_noise_wav(d / f"{stem}.flac", seconds=seconds, fmt="FLAC")
            lines.append(f"{stem} HELLO WORLD {utt}")
        (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    (base / "dev-clean" / "84" / "121123" / "84-121123-0002.flac").write_bytes(b"not audio")
    return root


def make_iemocap(root: Path, seconds: float = 0.5) -> Path:
    base = root / "IEMOCAP_full_release"
    labels = {"Ses0{k}F_impro01_F000": "neu", "Ses0{k}F_impro01_M001": "exc", "Ses0{k}F_impro01_F002": "fru",
              "Ses0{k}F_impro01_M003": "ang", "Ses0{k}F_impro01_F004": "sad"}
    for k in (1, 2, 3):
        s = base / f"Session{k}"
        lines = ["% header", ""]
        for i, (utt, lab) in enumerate(labels.items()):
            utt = utt.format(k=k)
            write_noise_wav(s / "sentences" / "wav" / f"Ses0{k}F_impro01" / f"{utt}.wav", seconds=seconds)
            lines.append(f"[{i}.0000 - {i}.5000]\t{utt}\t{lab}\t[2.5000, 2.5000, 2.5000]")
        (s / "dialog" / "EmoEvaluation").mkdir(parents=True)
        (s / "dialog" / "EmoEvaluation" / f"Ses0{k}F_impro01.txt").write_text("\n".join(lines) + "\n")
    return root


def make_voxceleb1(root: Path, seconds: float = 0.5) -> Path:
    lines = []
    for spk in ("id10001", "id10002"):
        for split, vid in (("1", "aaa"), ("1", "bbb"), ("2", "ccc"), ("3", "ddd")):
            rel = f"{spk}/{vid}/00001.wav"
            write_noise_wav(root / "wav" / rel, seconds=seconds)
            lines.append(f"{split} {rel}")
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    return root
