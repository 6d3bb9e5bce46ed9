"""Shared pieces of the corpus preparers: turning (id, path, labels) into manifest records.

Every ``prepare_<corpus>`` lists candidate files with their labels, then calls
:func:`records_from_files`, which reads each header with the same checks as
``speechssl prepare`` (:func:`speechssl.data.prepare.probe_file`), drops what it cannot use
with a reason and returns the :class:`~speechssl.data.prepare.PrepareReport` to print.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from speechssl.data.prepare import PrepareReport, probe_file


def records_from_files(
    items: Iterable[tuple[str, Path, dict]],
    min_seconds: float = 0.0,
    report: PrepareReport | None = None,
    name: str = "",
) -> tuple[list[dict], PrepareReport]:
    """Build manifest records for ``(id, path, labels)`` items, dropping unusable files."""
    report = report or PrepareReport(folder=name)
    records = []
    for utt_id, path, labels in tqdm(list(items), desc=f"{name} headers", unit="file", leave=False, mininterval=1.0):
        info = probe_file(Path(path), report, min_seconds)
        if info is None:
            continue
        records.append(
            {
                "id": utt_id,
                "path": str(Path(path).resolve()),
                "num_samples": int(info.num_samples),
                "sample_rate": int(info.sample_rate),
                **labels,
            }
        )
        report.kept += 1
        report.seconds_kept += info.duration
    return records, report


def require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} is not a directory")
    return path
