"""Shared pieces of the corpus preparers: turning (id, path, labels) into manifest records.

Every ``prepare_<corpus>`` builds a list of candidate files with their labels, then calls
:func:`records_from_files`, which reads each file's header, drops what it cannot use with a
reason (unreadable, empty, too short) and returns a :class:`PrepareReport` to print.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from speechssl.audio import AudioError, AudioNotFoundError, EmptyAudioError, audio_info

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PrepareReport:
    """What a preparer kept and dropped, with per-reason counts (seconds are native durations)."""

    kept: int = 0
    kept_seconds: float = 0.0
    dropped: Counter = dataclasses.field(default_factory=Counter)
    dropped_seconds: float = 0.0
    examples: dict = dataclasses.field(default_factory=dict)  # reason -> first file seen

    def add_drop(self, reason: str, path: str | Path, seconds: float = 0.0) -> None:
        self.dropped[reason] += 1
        self.dropped_seconds += seconds
        self.examples.setdefault(reason, str(path))

    def summary(self, name: str = "") -> str:
        head = f"{name}: " if name else ""
        text = f"{head}kept {self.kept} files ({self.kept_seconds / 3600:.3f} h)"
        if self.dropped:
            reasons = ", ".join(f"{r}: {n} (e.g. {self.examples[r]})" for r, n in sorted(self.dropped.items()))
            text += f"; dropped {sum(self.dropped.values())} ({self.dropped_seconds / 3600:.3f} h) — {reasons}"
        else:
            text += "; dropped 0"
        return text


def records_from_files(
    items: Iterable[tuple[str, Path, dict]],
    min_seconds: float = 0.0,
    report: PrepareReport | None = None,
    desc: str = "reading headers",
) -> tuple[list[dict], PrepareReport]:
    """Build manifest records for ``(id, path, labels)`` items, dropping unusable files.

    Returns the records (absolute paths; ``write_manifest`` relativises them) and the report.
    """
    report = report or PrepareReport()
    records = []
    for utt_id, path, labels in tqdm(list(items), desc=desc, unit="file", leave=False, mininterval=1.0):
        try:
            info = audio_info(path)
        except AudioNotFoundError:
            report.add_drop("missing", path)
            continue
        except EmptyAudioError:
            report.add_drop("empty", path)
            continue
        except AudioError:
            report.add_drop("unreadable", path)
            continue
        if info.num_samples == 0:
            report.add_drop("empty", path)
            continue
        if info.duration < min_seconds:
            report.add_drop(f"shorter than {min_seconds:g} s", path, info.duration)
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
        report.kept_seconds += info.duration
    return records, report


def require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} is not a directory")
    return path
