"""Scan an audio folder into a manifest: ``speechssl prepare DIR --out data/train.jsonl``.

No layout is assumed: every file under DIR (recursively, hidden files skipped) whose extension
is in ``extensions`` is a candidate. By default durations come from the file headers only, so
scanning is fast but a file of NaN samples or digital silence is kept; ``check_audio=True``
(``--check-audio``) also decodes every file, in blocks, to catch those. Each file ends up kept or
dropped for a reason:

- ``unreadable``: the header cannot be read (corrupt, unsupported codec, e.g. shorten ``.sph``),
  or, with ``check_audio``, the samples cannot be decoded (truncated data);
- ``empty``: zero samples;
- ``too_short``: shorter than ``min_seconds``;
- ``non_finite`` (``check_audio`` only): a decoded sample is NaN or infinite;
- ``silent`` (``check_audio`` only): no sample reaches ``silence_peak`` in absolute value;
- ``no_label_match``: a ``label_from_path`` regex did not match the file, or its template names a
  folder the file does not have (``{parent}`` of a file at the top of DIR).

Ids are the path relative to DIR without the extension, ``/`` and whitespace replaced by ``_``
(``train/1089/134686/1089-134686-0000.flac`` -> ``train_1089_134686_1089-134686-0000``), so
they are stable across re-runs. Files differing only by extension get it appended to the id.

Labels from paths (``label_from_path``), each pattern one of:

- ``FIELD=TEMPLATE``: the template may use ``{parent}`` (the folder holding the file),
  ``{grandparent}``, ``{parentN}`` (N folders up, ``{parent1}`` is ``{parent}``), ``{stem}``
  (file name without extension), ``{name}`` (with extension) and ``{top}`` (first folder under
  DIR). Example: ``speaker={parent}``, ``language={top}``, ``corpus=mine``.
- a regular expression with named groups, searched in the file stem, or in the relative path
  without extension when the pattern contains ``/``. Each group becomes a field. Example for
  LibriSpeech names: ``(?P<speaker>\\d+)-(?P<chapter>\\d+)-\\d+``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import string
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from speechssl.audio import AudioError, AudioInfo, AudioNotFoundError, EmptyAudioError, audio_info
from speechssl.data.manifest import write_manifest
from speechssl.data.prepare_defaults import DEFAULT_EXTENSIONS, DEFAULT_SILENCE_PEAK
from speechssl.progress import FILES, PROGRESS_EVERY_SECONDS, Progress

log = logging.getLogger(__name__)

_TEMPLATE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
_PARENT_N = re.compile(r"^parent(\d+)$")
_EXAMPLES_PER_REASON = 5
# ``check_audio`` decodes this many frames at a time so a long file never sits whole in memory.
_CHECK_BLOCK_FRAMES = 1 << 20


class PrepareError(ValueError):
    """Nothing usable was found; ``.report`` holds what was scanned."""

    def __init__(self, message: str, report: PrepareReport):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass
class PrepareReport:
    """What ``prepare_folder`` kept and dropped."""

    folder: str
    manifest: str | None = None  # None when nothing was written
    kept: int = 0
    seconds_kept: float = 0.0
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> files
    seconds_dropped: dict[str, float] = dataclasses.field(
        default_factory=dict
    )  # reason -> seconds (0 if unknown)
    examples: dict[str, list[str]] = dataclasses.field(
        default_factory=dict
    )  # reason -> first few "path: why"
    other_files: int = 0  # files with other extensions
    label_fields: list[str] = dataclasses.field(default_factory=list)

    @property
    def hours_kept(self) -> float:
        return self.seconds_kept / 3600.0

    @property
    def hours_dropped(self) -> float:
        return sum(self.seconds_dropped.values()) / 3600.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "hours_kept": self.hours_kept,
            "hours_dropped": self.hours_dropped,
        }

    def summary(self) -> str:
        """Human-readable lines: hours kept, dropped per reason with examples."""
        lines = [
            f"kept {self.kept} files, {_hours(self.seconds_kept)}"
            + (f" -> {self.manifest}" if self.manifest else "")
        ]
        total = sum(self.dropped.values())
        if total:
            lines.append(f"dropped {total} files, {_hours(sum(self.seconds_dropped.values()))}:")
            for reason in sorted(self.dropped):
                seconds = self.seconds_dropped.get(reason, 0.0)
                lines.append(
                    f"  {reason}: {self.dropped[reason]} files" + (f", {_hours(seconds)}" if seconds else "")
                )
                lines.extend(f"    e.g. {ex}" for ex in self.examples.get(reason, []))
        if self.label_fields:
            lines.append(f"label fields: {', '.join(self.label_fields)}")
        return "\n".join(lines)

    def drop(self, reason: str, seconds: float, example: str) -> None:
        """Count one dropped file (``example`` is kept for the first few of each reason)."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.seconds_dropped[reason] = self.seconds_dropped.get(reason, 0.0) + seconds
        examples = self.examples.setdefault(reason, [])
        if len(examples) < _EXAMPLES_PER_REASON:
            examples.append(example)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 3600:.4f} h ({seconds:.1f} s)"


# path relative to DIR -> its labels, or why the file has none (a reason, reported with the file)
LabelRule = Callable[[Path], "dict[str, str] | str"]


def _path_values(rel: Path) -> dict[str, str]:
    parents = rel.parent.parts
    values = {"stem": rel.stem, "name": rel.name, "top": parents[0] if parents else ""}
    for n in range(1, len(parents) + 1):
        values[f"parent{n}"] = parents[-n]
    values["parent"] = values.get("parent1", "")
    values["grandparent"] = values.get("parent2", "")
    return values


def _template_rule(pattern: str, field: str, template: str) -> LabelRule:
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    for name in names:
        if name not in ("parent", "grandparent", "stem", "name", "top") and not _PARENT_N.match(name):
            raise ValueError(
                f"--label-from-path {pattern!r}: unknown placeholder {{{name}}}; use "
                "{parent}, {grandparent}, {parentN}, {stem}, {name} or {top}"
            )

    def rule(rel: Path) -> dict[str, str] | str:
        values = _path_values(rel)
        missing = [n for n in names if n not in values or values[n] == ""]
        if missing:
            where = "the top of DIR" if not rel.parent.parts else f"{len(rel.parent.parts)} folder(s) deep"
            return (f"{pattern!r} needs {', '.join('{' + n + '}' for n in missing)}, but the file sits at {where}: "
                    "move it into a folder or use another --label-from-path")
        return {field: template.format(**values)}

    return rule


def _regex_rule(pattern: str) -> LabelRule:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(
            f"--label-from-path {pattern!r} is neither FIELD=TEMPLATE nor a valid regex ({exc})"
        ) from None
    if not regex.groupindex:
        raise ValueError(
            f"--label-from-path {pattern!r}: a regex needs named groups, e.g. "
            r"'(?P<speaker>\d+)-(?P<chapter>\d+)-\d+'; or use FIELD=TEMPLATE like speaker={parent}"
        )
    on_path = "/" in pattern

    def rule(rel: Path) -> dict[str, str] | str:
        text = rel.with_suffix("").as_posix() if on_path else rel.stem
        match = regex.search(text)
        if match is None:
            return f"does not match {pattern!r}"
        return {k: v for k, v in match.groupdict().items() if v is not None}

    return rule


def parse_label_patterns(patterns: Iterable[str]) -> list[tuple[str, LabelRule]]:
    """Turn ``--label-from-path`` strings into rules (see the module docstring).

    Raises:
        ValueError: an unknown placeholder, an invalid regex, or a regex without named groups.
    """
    rules = []
    for pattern in patterns:
        m = _TEMPLATE.match(pattern)
        if m and "(?P<" not in pattern:
            rules.append((pattern, _template_rule(pattern, m.group(1), m.group(2))))
        else:
            rules.append((pattern, _regex_rule(pattern)))
    return rules


def scan_audio_files(folder: Path, extensions: Sequence[str]) -> tuple[list[Path], int]:
    """Audio files under ``folder`` (sorted relative paths) and how many other files were seen."""
    exts = {"." + e.lower().lstrip(".") for e in extensions}
    found: list[Path] = []
    others = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in exts:
                found.append(Path(root, name).relative_to(folder))
            else:
                others += 1
    found.sort(key=lambda p: p.as_posix())
    return found, others


def make_ids(relpaths: Sequence[Path]) -> list[str]:
    """Stable unique ids from relative paths (see the module docstring)."""

    def base(rel: Path) -> str:
        return re.sub(r"[/\\\s]+", "_", rel.with_suffix("").as_posix())

    bases = [base(r) for r in relpaths]
    counts: dict[str, int] = {}
    for b in bases:
        counts[b] = counts.get(b, 0) + 1
    ids = [f"{b}_{r.suffix.lstrip('.').lower()}" if counts[b] > 1 else b for b, r in zip(bases, relpaths)]
    seen: dict[str, int] = {}
    unique = []
    for i in ids:
        n = seen.get(i, 0)
        seen[i] = n + 1
        unique.append(i if n == 0 else f"{i}-{n + 1}")
    return unique


def check_samples(
    path: Path, info: AudioInfo, silence_peak: float = DEFAULT_SILENCE_PEAK
) -> tuple[str, str] | None:
    """Decode every sample of ``path`` in blocks; return ``(reason, why)`` when it is unusable.

    ``reason`` is ``non_finite`` (NaN/inf, with the first bad frame), ``silent`` (absolute peak
    below ``silence_peak``) or ``unreadable`` (decoding fails or stops short of the header's
    length); None when the file is fine. Memory stays at one block whatever the file's length.
    """
    peak = 0.0
    seen = 0
    try:
        with sf.SoundFile(str(path)) as f:
            while True:
                block = f.read(frames=_CHECK_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                finite = np.isfinite(block)
                if not finite.all():
                    first = seen + int(np.argmin(finite.all(axis=1)))
                    return "non_finite", f"non-finite (NaN/inf) sample at frame {first}"
                peak = max(peak, float(np.abs(block).max()))
                seen += block.shape[0]
    except (RuntimeError, OSError, ValueError, TypeError, EOFError) as exc:
        return (
            "unreadable",
            f"cannot decode samples after frame {seen} ({str(exc).strip() or type(exc).__name__})",
        )
    if seen == 0:
        return "unreadable", f"header announces {info.num_samples} samples but none could be decoded"
    if peak < silence_peak:
        return "silent", f"peak |sample| {peak:.3g} < {silence_peak:g} over {seen} frames"
    return None


def probe_file(
    path: Path,
    report: PrepareReport,
    min_seconds: float = 0.0,
    display: str | None = None,
    check_audio: bool = False,
    silence_peak: float = DEFAULT_SILENCE_PEAK,
) -> AudioInfo | None:
    """Read ``path``'s header; return its AudioInfo, or None after recording why it is dropped
    (``missing``/``unreadable``, ``empty``, ``too_short``) in ``report``. With ``check_audio``
    the samples are decoded too (:func:`check_samples`: ``non_finite``, ``silent``, ``unreadable``)."""
    display = display or str(path)
    try:
        info = audio_info(path)
    except EmptyAudioError as exc:
        report.drop("empty", 0.0, f"{display}: {exc.reason}")
        return None
    except AudioNotFoundError as exc:
        report.drop("missing", 0.0, f"{display}: {exc.reason}")
        return None
    except AudioError as exc:
        report.drop("unreadable", 0.0, f"{display}: {exc.reason}")
        return None
    if info.num_samples == 0:
        report.drop("empty", 0.0, f"{display}: 0 samples")
        return None
    if info.duration < min_seconds:
        report.drop("too_short", info.duration, f"{display}: {info.duration:.3f} s < {min_seconds} s")
        return None
    if check_audio:
        problem = check_samples(path, info, silence_peak)
        if problem is not None:
            reason, why = problem
            report.drop(reason, info.duration, f"{display}: {why}")
            return None
    return info


def prepare_folder(
    folder: str | Path,
    out: str | Path,
    label_from_path: str | Sequence[str] | None = None,
    min_seconds: float = 0.0,
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    check_audio: bool = False,
    silence_peak: float = DEFAULT_SILENCE_PEAK,
) -> PrepareReport:
    """Scan ``folder`` for audio and write the manifest ``out``.

    Args:
        folder: the folder to scan recursively.
        out: the ``.jsonl`` manifest to write (atomic; overwritten on re-runs).
        label_from_path: pattern(s) deriving label fields from each path (module docstring).
        min_seconds: files shorter than this are dropped as ``too_short``.
        extensions: file extensions to consider (case-insensitive, without the dot).
        check_audio: decode every file and drop ``non_finite`` and ``silent`` ones (slower: reads
            all the audio instead of the headers only).
        silence_peak: with ``check_audio``, files whose absolute peak stays below this are ``silent``.
    Returns:
        PrepareReport with counts and hours kept and dropped per reason.
    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: a bad label pattern.
        PrepareError: no audio files found, or none usable (nothing is written then).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    patterns = [label_from_path] if isinstance(label_from_path, str) else list(label_from_path or [])
    rules = parse_label_patterns(patterns)
    report = PrepareReport(folder=str(folder))
    relpaths, report.other_files = scan_audio_files(folder, extensions)
    ext_text = ", ".join("." + e.lstrip(".") for e in extensions)
    if not relpaths:
        raise PrepareError(
            f"no audio files ({ext_text}) found under {folder} ({report.other_files} other files)", report
        )
    records = []
    fields: set[str] = set()
    # a bar on a terminal; a redirected stderr (a batch job's log) gets a line every 30 s instead
    bar = Progress(len(relpaths), 0, bar=True, every_seconds=PROGRESS_EVERY_SECONDS, main=True,
                   desc="prepare: reading audio" if check_audio else "prepare: reading headers", counts=FILES,
                   logger=log, leave=False)
    for rel, utt_id in zip(relpaths, make_ids(relpaths)):
        path = folder / rel
        info = probe_file(
            path, report, min_seconds, display=str(rel), check_audio=check_audio, silence_peak=silence_peak
        )
        bar.advance(1)
        if info is None:
            continue
        labels: dict[str, str] = {}
        unmatched = None
        for _, rule in rules:
            got = rule(rel)
            if isinstance(got, str):
                unmatched = got
                break
            labels.update(got)
        if unmatched is not None:
            report.drop("no_label_match", info.duration, f"{rel}: {unmatched}")
            continue
        fields.update(labels)
        records.append(
            {
                "id": utt_id,
                "path": os.path.abspath(path),
                "num_samples": info.num_samples,
                "sample_rate": info.sample_rate,
                **labels,
            }
        )
        report.kept += 1
        report.seconds_kept += info.duration
    bar.close()
    report.label_fields = sorted(fields)
    if not records:
        raise PrepareError(
            f"none of the {len(relpaths)} audio files under {folder} is usable; nothing "
            f"written\n{report.summary()}",
            report,
        )
    write_manifest(records, out)
    report.manifest = str(out)
    log.debug("prepare: %s", report.summary().replace("\n", "; "))
    return report
