"""LibriSpeech (Panayotov et al. 2015): pretraining manifests from a local copy.

Layout read (any subset folders, e.g. ``train-clean-100``, ``dev-clean``)::

    CORPUS/[LibriSpeech/]<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    CORPUS/[LibriSpeech/]<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
    CORPUS/[LibriSpeech/]SPEAKERS.TXT          (optional: gender)

Writes ``OUT/<subset>.jsonl`` with labels ``speaker``, ``chapter``, ``text`` and ``gender``.
The lhotse equivalent is ``lhotse.recipes.librispeech.prepare_librispeech``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from speechssl.corpora.common import records_from_files, require_dir
from speechssl.data.manifest import write_manifest

log = logging.getLogger(__name__)

_UTT = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def _root(corpus_dir: Path) -> Path:
    inner = corpus_dir / "LibriSpeech"
    return inner if inner.is_dir() else corpus_dir


def _speaker_genders(root: Path) -> dict[str, str]:
    path = root / "SPEAKERS.TXT"
    genders: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(";") or "|" not in line:
                continue
            fields = [f.strip() for f in line.split("|")]
            if len(fields) >= 2 and fields[1] in ("M", "F"):
                genders[fields[0]] = fields[1]
    return genders


def _transcripts(chapter_dir: Path) -> dict[str, str]:
    texts: dict[str, str] = {}
    for trans in chapter_dir.glob("*.trans.txt"):
        for line in trans.read_text(errors="replace").splitlines():
            if line.strip():
                utt, _, text = line.partition(" ")
                texts[utt] = text.strip()
    return texts


def prepare_librispeech(
    corpus_dir: str | Path,
    out_dir: str | Path,
    subsets: list[str] | None = None,
    min_seconds: float = 0.0,
) -> dict[str, Path]:
    """Write one manifest per subset folder; returns ``{subset: manifest path}``. Safe to re-run."""
    root = _root(require_dir(corpus_dir, "LibriSpeech corpus"))
    out_dir = Path(out_dir)
    available = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*/*/*.flac")))
    if not available:
        raise FileNotFoundError(f"no LibriSpeech subset (speaker/chapter/*.flac) found under {root}")
    if subsets:
        unknown = sorted(set(subsets) - set(available))
        if unknown:
            raise ValueError(f"LibriSpeech subsets {unknown} not found under {root}; found: {available}")
    genders = _speaker_genders(root)
    written: dict[str, Path] = {}
    for subset in subsets or available:
        items = []
        for chapter_dir in sorted((root / subset).glob("*/*")):
            if not chapter_dir.is_dir():
                continue
            texts = _transcripts(chapter_dir)
            for flac in sorted(chapter_dir.glob("*.flac")):
                m = _UTT.match(flac.stem)
                if not m:
                    log.warning("skipping %s: name is not <speaker>-<chapter>-<utt>", flac)
                    continue
                labels = {"speaker": m.group(1), "chapter": m.group(2)}
                if flac.stem in texts:
                    labels["text"] = texts[flac.stem]
                if m.group(1) in genders:
                    labels["gender"] = genders[m.group(1)]
                items.append((flac.stem, flac, labels))
        records, report = records_from_files(items, min_seconds=min_seconds, name=f"librispeech/{subset}")
        print(f"librispeech/{subset}: {report.summary()}")
        if records:
            written[subset] = out_dir / f"{subset}.jsonl"
            write_manifest(records, written[subset])
    if not written:
        raise ValueError(f"no usable LibriSpeech audio under {root}")
    return written
