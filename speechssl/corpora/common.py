"""Shared pieces of the corpus preparers: turning (id, path, labels) into manifest records.

Every ``prepare_<corpus>`` lists candidate files with their labels, then calls
:func:`records_from_files`, which reads each header with the same checks as
``speechssl prepare`` (:func:`speechssl.data.prepare.probe_file`), drops what it cannot use
with a reason and returns the :class:`~speechssl.data.prepare.PrepareReport` to print.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from speechssl.data.prepare import PrepareReport, probe_file
from speechssl.progress import FILES, PROGRESS_EVERY_SECONDS, Progress

log = logging.getLogger(__name__)


def records_from_files(
    items: Iterable[tuple[str, Path, dict]],
    min_seconds: float = 0.0,
    report: PrepareReport | None = None,
    name: str = "",
) -> tuple[list[dict], PrepareReport]:
    """Build manifest records for ``(id, path, labels)`` items, dropping unusable files."""
    report = report or PrepareReport(folder=name)
    records = []
    items = list(items)
    # a bar on a terminal; a redirected stderr (a batch job's log) gets a line every 30 s instead
    bar = Progress(len(items), 0, bar=True, every_seconds=PROGRESS_EVERY_SECONDS, main=True,
                   desc=f"{name} headers", counts=FILES, logger=log, leave=False)
    for utt_id, path, labels in items:
        info = probe_file(Path(path), report, min_seconds)
        bar.advance(1)
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
    bar.close()
    return records, report


def require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} is not a directory")
    return path
