"""Any folder of audio plus a labels table: the recipe for people's own data.

The labels file is CSV or TSV (by extension, or sniffed) with a header row. One column names
the audio — ``path`` (relative to the corpus folder or absolute) or ``id`` (a file stem found
anywhere under the folder) — and every other column becomes a label field::

    path,emotion,speaker
    clips/a001.wav,happy,spk1

Writes ``OUT/all.jsonl``; split it with ``speechssl manifest split``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from speechssl.corpora.common import records_from_files, require_dir
from speechssl.data.manifest import write_manifest

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".sph", ".aiff", ".aif")


def read_label_table(path: Path) -> tuple[str, list[dict]]:
    """Return (key column, rows). Errors name the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise ValueError(f"{path}: labels file is empty")
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") or "\t" in text.splitlines()[0] else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    fields = reader.fieldnames or []
    key = "path" if "path" in fields else "id" if "id" in fields else None
    if key is None:
        raise ValueError(f"{path}:1: header needs a 'path' or 'id' column, got {fields}")
    if len(fields) < 2:
        raise ValueError(f"{path}:1: header has no label column besides {key!r}")
    rows = []
    for lineno, row in enumerate(reader, 2):
        if None in row or any(v is None for v in row.values()):
            raise ValueError(f"{path}:{lineno}: expected {len(fields)} columns: {row}")
        if not row[key].strip():
            raise ValueError(f"{path}:{lineno}: empty {key!r}")
        rows.append({k: v.strip() for k, v in row.items()})
    if not rows:
        raise ValueError(f"{path}: no rows under the header")
    return key, rows


def prepare_generic(
    corpus_dir: str | Path, labels_file: str | Path, out_dir: str | Path, min_seconds: float = 0.0
) -> dict[str, Path]:
    """Write ``OUT/all.jsonl`` for the files named in ``labels_file``; returns ``{"all": path}``."""
    corpus_dir = require_dir(corpus_dir, "audio folder")
    key, rows = read_label_table(Path(labels_file))
    by_stem: dict[str, Path] = {}
    if key == "id":
        for p in corpus_dir.rglob("*"):
            if p.suffix.lower() in AUDIO_EXTENSIONS:
                if p.stem in by_stem:
                    raise ValueError(f"file stem {p.stem!r} is ambiguous: {by_stem[p.stem]} and {p}; use a 'path' column")
                by_stem[p.stem] = p
    items, seen = [], set()
    for row in rows:
        ref = row[key]
        if key == "path":
            path = Path(ref) if Path(ref).is_absolute() else corpus_dir / ref
            utt_id = Path(ref).with_suffix("").as_posix().replace("/", "__")
        else:
            path = by_stem.get(ref, corpus_dir / ref)
            utt_id = ref
        if utt_id in seen:
            raise ValueError(f"{labels_file}: {ref!r} is listed twice")
        seen.add(utt_id)
        items.append((utt_id, path, {k: v for k, v in row.items() if k != key}))
    records, report = records_from_files(items, min_seconds=min_seconds, name=str(corpus_dir))
    print(report.summary())
    if not records:
        raise ValueError(f"none of the files in {labels_file} is usable audio under {corpus_dir}")
    out = Path(out_dir) / "all.jsonl"
    write_manifest(records, out)
    return {"all": out}
