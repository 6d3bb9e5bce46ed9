"""The JSONL manifest: one utterance per line.

A line looks like this (keys after ``sample_rate`` are optional)::

    {"id": "1089_134686_1089-134686-0000", "path": "train/1089/134686/1089-134686-0000.flac",
     "num_samples": 166960, "sample_rate": 16000, "speaker": "1089"}

Fields:

- ``id`` (str, unique in the file): the utterance name used in batches, features and results.
- ``path`` (str): the audio file, absolute or relative to the manifest's folder.
- ``num_samples`` (int >= 0): length of the whole file in samples at its native rate.
- ``sample_rate`` (int > 0): the file's native sample rate (audio is resampled to 16 kHz on load).
- ``start`` / ``duration`` (seconds, optional): a segment of the file instead of all of it.
- anything else (``speaker``, ``emotion``, ``language``, ``text``, ...) is a label field.

:func:`read_manifest` resolves paths to absolute ones; :func:`write_manifest` writes them back
relative to the manifest's folder when they lie under it, so a data folder can be moved whole.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from speechssl.utils import atomic_path

#: Keys every record must have, with the type each must be.
REQUIRED_FIELDS: dict[str, type] = {"id": str, "path": str, "num_samples": int, "sample_rate": int}
#: Keys with a fixed meaning that are not labels.
RESERVED_FIELDS: tuple[str, ...] = ("id", "path", "num_samples", "sample_rate", "start", "duration")


class ManifestError(ValueError):
    """A manifest line is invalid. The message names ``file:line`` and the offending key."""

    def __init__(
        self, message: str, path: str | Path | None = None, line: int | None = None, key: str | None = None
    ):
        where = (
            f"{path}:{line}: "
            if path is not None and line is not None
            else (f"{path}: " if path is not None else "")
        )
        super().__init__(f"{where}{message}")
        self.path = None if path is None else str(path)
        self.line = line
        self.key = key


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def validate_record(rec: Any, where: str | Path | None = None, line: int | None = None) -> dict:
    """Check one record's fields and types; return it unchanged.

    Raises:
        ManifestError: naming ``where:line`` and the key that is missing or has the wrong type.
    """
    if not isinstance(rec, dict):
        raise ManifestError(f"expected a JSON object, got {_type_name(rec)}", where, line)
    for key, typ in REQUIRED_FIELDS.items():
        if key not in rec:
            raise ManifestError(
                f"missing field {key!r} (required: {', '.join(REQUIRED_FIELDS)}; got keys {sorted(rec)})",
                where,
                line,
                key,
            )
        value = rec[key]
        if typ is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, typ)
        if not ok:
            raise ManifestError(
                f"field {key!r} must be {typ.__name__}, got {_type_name(value)} {value!r}", where, line, key
            )
    if not rec["id"]:
        raise ManifestError("field 'id' is empty", where, line, "id")
    if not rec["path"]:
        raise ManifestError("field 'path' is empty", where, line, "path")
    if rec["num_samples"] < 0:
        raise ManifestError(
            f"field 'num_samples' must be >= 0, got {rec['num_samples']}", where, line, "num_samples"
        )
    if rec["sample_rate"] <= 0:
        raise ManifestError(
            f"field 'sample_rate' must be > 0, got {rec['sample_rate']}", where, line, "sample_rate"
        )
    for key, minimum in (("start", 0.0), ("duration", 0.0)):
        if key in rec and rec[key] is not None:
            value = rec[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ManifestError(
                    f"field {key!r} must be a number of seconds, got {_type_name(value)} {value!r}",
                    where,
                    line,
                    key,
                )
            if value < minimum or (key == "duration" and value == 0):
                raise ManifestError(
                    f"field {key!r} must be {'> 0' if key == 'duration' else '>= 0'}, got {value}",
                    where,
                    line,
                    key,
                )
    if rec.get("start") is not None:
        file_seconds = rec["num_samples"] / rec["sample_rate"]
        end = rec["start"] + (rec.get("duration") or 0.0)
        # Allow one sample of rounding slack for segments written from other tools.
        if end > file_seconds + 1.0 / rec["sample_rate"] + 1e-6:
            raise ManifestError(
                f"segment start={rec['start']} duration={rec.get('duration')} ends after "
                f"the file ({file_seconds:.3f} s)",
                where,
                line,
                "start",
            )
    return rec


def _resolve(path: str, folder: Path) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(folder, path))


def iter_manifest(path: str | Path) -> Iterator[dict]:
    """Yield validated records of a manifest one at a time (paths resolved to absolute).

    Blank lines are skipped. Duplicate ids are an error naming both lines.

    Raises:
        ManifestError: bad JSON, a missing field, a wrong type or a duplicate id (``file:line``).
        FileNotFoundError: the manifest does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    folder = Path(os.path.abspath(path)).parent
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(
                    f"bad JSON ({exc.msg} at column {exc.colno}): {line.strip()[:80]!r}", path, lineno
                ) from None
            validate_record(rec, path, lineno)
            if rec["id"] in seen:
                raise ManifestError(
                    f"duplicate id {rec['id']!r} (first on line {seen[rec['id']]})", path, lineno, "id"
                )
            seen[rec["id"]] = lineno
            rec["path"] = _resolve(rec["path"], folder)
            yield rec


def read_manifest(path: str | Path, allow_empty: bool = False) -> list[dict]:
    """Read a JSONL manifest into a list of dicts with absolute paths.

    Args:
        path: the ``.jsonl`` file.
        allow_empty: if False (default) a manifest without records is an error.

    Raises:
        ManifestError: naming ``file:line`` and what was wrong.
    """
    records = list(iter_manifest(path))
    if not records and not allow_empty:
        raise ManifestError("manifest has no records", path)
    return records


def _ordered(rec: Mapping[str, Any], path: str) -> dict:
    out = {
        "id": rec["id"],
        "path": path,
        "num_samples": rec["num_samples"],
        "sample_rate": rec["sample_rate"],
    }
    for key in ("start", "duration"):
        if rec.get(key) is not None:
            out[key] = rec[key]
    for key, value in rec.items():
        if key not in RESERVED_FIELDS:
            out[key] = value
    return out


def write_manifest(records: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write records as JSONL, atomically (a crash leaves any old file intact).

    Relative record paths are taken relative to the current directory. Paths under the
    manifest's folder are written relative to it; others are written absolute.

    Raises:
        ManifestError: a record is invalid or an id repeats (named by its position, 1-based).
    """
    path = Path(path)
    folder = Path(os.path.abspath(path)).parent
    seen: set[str] = set()
    lines = []
    for i, rec in enumerate(records, start=1):
        validate_record(dict(rec), f"record {i} for {path}", None)
        if rec["id"] in seen:
            raise ManifestError(f"duplicate id {rec['id']!r} in record {i}", path, key="id")
        seen.add(rec["id"])
        abs_path = os.path.abspath(rec["path"])
        try:
            rel = os.path.relpath(abs_path, folder)
        except ValueError:  # a different drive on Windows
            rel = None
        out_path = abs_path if rel is None or rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel
        lines.append(json.dumps(_ordered(rec, out_path.replace(os.sep, "/")), ensure_ascii=False))
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def record_duration(rec: Mapping[str, Any]) -> float:
    """Seconds of audio a record stands for: its ``duration``, else the file from ``start`` to the end."""
    if rec.get("duration") is not None:
        return float(rec["duration"])
    total = rec["num_samples"] / rec["sample_rate"]
    return max(0.0, total - float(rec.get("start") or 0.0))


def total_hours(records: Iterable[Mapping[str, Any]]) -> float:
    """Total duration of the records in hours."""
    return sum(record_duration(r) for r in records) / 3600.0


def label_fields(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Label field names present in any record (everything but the reserved keys), sorted."""
    names: set[str] = set()
    for rec in records:
        names.update(k for k in rec if k not in RESERVED_FIELDS)
    return sorted(names)


def label_counts(records: Iterable[Mapping[str, Any]], field: str) -> Counter:
    """How many records carry each value of ``field`` (records without it count under ``None``)."""
    return Counter(_hashable(rec.get(field)) for rec in records)


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def group_records(records: Iterable[dict], field: str) -> dict[Any, list[dict]]:
    """Records grouped by the value of ``field``, groups in first-seen order.

    Raises:
        KeyError: a record lacks the field (the message names the record id).
    """
    groups: dict[Any, list[dict]] = {}
    for rec in records:
        if field not in rec:
            raise KeyError(f"record {rec.get('id')!r} has no field {field!r} (fields: {sorted(rec)})")
        groups.setdefault(_hashable(rec[field]), []).append(rec)
    return groups


def manifest_summary(records: list[Mapping[str, Any]], max_values: int = 10) -> dict:
    """A JSON-able summary: count, hours, duration range, sample rates, label distributions.

    Label fields with many distinct values (e.g. ``text``) only report how many there are.
    """
    durations = [record_duration(r) for r in records]
    summary: dict[str, Any] = {
        "records": len(records),
        "hours": round(sum(durations) / 3600.0, 4),
        "seconds_min": round(min(durations), 3) if durations else 0.0,
        "seconds_mean": round(sum(durations) / len(durations), 3) if durations else 0.0,
        "seconds_max": round(max(durations), 3) if durations else 0.0,
        "sample_rates": dict(sorted(Counter(r["sample_rate"] for r in records).items())),
        "segments": sum(1 for r in records if r.get("start") is not None or r.get("duration") is not None),
        "labels": {},
    }
    for field in label_fields(records):
        counts = label_counts(records, field)
        entry: dict[str, Any] = {"distinct": len(counts), "missing": counts.pop(None, 0)}
        if len(counts) <= max_values or len(counts) <= len(records) // 2:
            entry["top"] = {str(k): v for k, v in counts.most_common(max_values)}
        summary["labels"][field] = entry
    return summary


def merge_manifests(manifests: Iterable[str | Path], out: str | Path) -> list[dict]:
    """Concatenate manifests, in order, into ``out`` (written atomically); returns the records.

    Raises:
        ManifestError: an id is in two manifests (both are named); nothing is written then.
    """
    merged: list[dict] = []
    first_seen: dict[str, str] = {}
    for manifest in manifests:
        for rec in read_manifest(manifest):
            if rec["id"] in first_seen:
                raise ManifestError(f"id {rec['id']!r} is in both {first_seen[rec['id']]} and {manifest}",
                                    manifest, key="id")
            first_seen[rec["id"]] = str(manifest)
            merged.append(rec)
    write_manifest(merged, out)
    return merged


def format_summary(summary: Mapping[str, Any], name: str) -> str:
    """:func:`manifest_summary` as the indented text ``speechssl manifest info`` prints."""
    lines = [
        f"{name}: {summary['records']} utterances, {summary['hours']:.3f} h",
        f"  seconds: min {summary['seconds_min']}, mean {summary['seconds_mean']}, max {summary['seconds_max']}",
        f"  sample rates: {', '.join(f'{k} Hz x{v}' for k, v in summary['sample_rates'].items())}",
    ]
    if summary["segments"]:
        lines.append(f"  segments: {summary['segments']}")
    for field, entry in summary["labels"].items():
        line = f"  {field}: {entry['distinct']} distinct"
        if entry["missing"]:
            line += f", {entry['missing']} missing"
        if "top" in entry:
            line += ": " + ", ".join(f"{k} x{v}" for k, v in entry["top"].items())
            if entry["distinct"] > len(entry["top"]):
                line += ", ..."
        lines.append(line)
    return "\n".join(lines)
