"""What to extract: a folder, a JSONL manifest, a Kaldi ``wav.scp`` or one audio file.

Each input becomes :class:`Item` records with an id, a path, an optional segment and a duration
(read from the header only, so listing 100k files is cheap). Files whose header cannot be read
are returned separately as ``(id, path, reason)`` so the run records them in ``errors.tsv``
and goes on.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".sph", ".au", ".w64")


@dataclasses.dataclass
class Item:
    """One utterance to extract."""

    id: str
    path: str
    seconds: float  # duration at 16 kHz after segmenting
    start: float | None = None  # segment start (s) inside the file
    duration: float | None = None  # segment duration (s)
    sample_rate: int = 16000  # native rate of the file
    key: Any = None  # the caller's handle for this utterance (the downstream cache's record key)


def safe_id_path(utt_id: str) -> str:
    """An utterance id as a relative output path; ``/`` makes sub-folders, ``..`` is refused."""
    parts = [p for p in utt_id.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise ValueError(f"utterance id {utt_id!r} cannot be used as an output file name")
    return "/".join(parts)


def _from_files(files: list[tuple[str, str]]) -> tuple[list[Item], list[tuple[str, str, str]]]:
    from speechssl.audio import audio_info

    items, bad = [], []
    for utt_id, path in files:
        try:
            info = audio_info(path)
        except (ValueError, OSError) as exc:
            bad.append((utt_id, path, str(exc)))
            continue
        items.append(Item(utt_id, path, info.duration, sample_rate=info.sample_rate))
    return items, bad


def scan_folder(folder: Path) -> list[tuple[str, str]]:
    """Audio files under ``folder`` (recursive, sorted); the id is the path without suffix."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(AUDIO_SUFFIXES) and not name.startswith("."):
                full = Path(root) / name
                rel = full.relative_to(folder).with_suffix("")
                found.append((rel.as_posix(), str(full)))
    return found


def read_wav_scp(path: Path) -> list[tuple[str, str]]:
    """Kaldi ``wav.scp``: ``<id> <path>`` per line. Pipes (``... |``) are refused: run them first."""
    out = []
    base = path.resolve().parent
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected '<id> <path>', got {line.strip()!r}")
        utt_id, wav = parts
        if wav.endswith("|"):
            raise ValueError(f"{path}:{lineno}: command pipes are not supported ({wav!r}); write the audio to files")
        out.append((utt_id, wav if os.path.isabs(wav) else str(base / wav)))
    return out


def read_inputs(source: str | Path) -> tuple[list[Item], list[tuple[str, str, str]]]:
    """Items to extract from a folder, ``*.jsonl`` manifest, ``wav.scp`` / ``*.scp`` or one file.

    Returns:
        (items, unreadable) where ``unreadable`` lists ``(id, path, reason)``.
    Raises:
        FileNotFoundError: ``source`` does not exist; ValueError: a malformed list or no audio found.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"extract input not found: {source}")
    if source.is_dir():
        files = scan_folder(source)
        if not files:
            raise ValueError(f"{source}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found")
        return _from_files(files)
    if source.suffix == ".jsonl":
        from speechssl.data.manifest import read_manifest, record_duration

        items = [
            Item(rec["id"], rec["path"], record_duration(rec), rec.get("start"), rec.get("duration"),
                 int(rec["sample_rate"]))
            for rec in read_manifest(source)
        ]
        return items, []
    if source.suffix == ".scp" or source.name == "wav.scp":
        return _from_files(read_wav_scp(source))
    if source.suffix.lower() in AUDIO_SUFFIXES:
        return _from_files([(source.stem, str(source))])
    raise ValueError(
        f"{source}: not a folder, a .jsonl manifest, a wav.scp or an audio file ({', '.join(AUDIO_SUFFIXES)})"
    )
