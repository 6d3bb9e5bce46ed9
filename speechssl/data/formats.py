"""Import and export other toolkits' lists: fairseq wav2vec TSV and Kaldi data folders.

fairseq wav2vec TSV (``examples/wav2vec/wav2vec_manifest.py``)::

    /abs/root
    train/1089/134686/1089-134686-0000.flac<TAB>166960

The first line is the root folder (a relative root is taken from the current directory, as
fairseq does); each further line a path relative to it and its length in samples. Optional
line-aligned label files (fairseq's ``train.wrd`` / ``train.ltr``) map to label fields.

As fairseq's ``wav2vec_manifest.py ROOT`` does, the root line is the folder given (``root``),
written as given, not shortened to the deepest folder the files share. The TSV has no id
column, so export also writes ``train.ids`` next to ``train.tsv`` (``id<TAB>relative/path``
per entry, line-aligned; fairseq ignores it) and import takes ids from it, checking each path
against its TSV line. A TSV without one (e.g. written by fairseq) gets ids from its paths
(:func:`speechssl.data.prepare.make_ids`).

Kaldi data folder: ``wav.scp`` (``<recording-id> <path>``), optional ``segments``
(``<utt-id> <recording-id> <start> <end>``, seconds; end -1 = end of file), ``utt2spk``
(-> field ``speaker``), ``text`` (-> ``text``) and other ``utt2<x>`` files (-> field ``x``).
``wav.scp`` entries must be plain files: commands (``sox ... |``), stdin (``-``) and ark
offsets (``foo.ark:123``) are refused with the line named; convert those to audio files first.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from speechssl.audio import AudioError, audio_info
from speechssl.data.manifest import (
    ManifestError,
    read_manifest,
    record_duration,
    validate_record,
    write_manifest,
)
from speechssl.data.prepare import make_ids
from speechssl.utils import atomic_write_text

log = logging.getLogger(__name__)

#: Kaldi per-utterance files that are not labels.
_KALDI_NOT_LABELS = {"utt2dur", "utt2num_frames", "utt2uniq", "utt2spk"}


def _header(path: str, where: Path, line: int) -> tuple[int, int]:
    try:
        info = audio_info(path)
    except AudioError as exc:
        raise ManifestError(f"{exc.reason}: {path}", where, line) from None
    return info.num_samples, info.sample_rate


def label_file_path(tsv: str | Path, file: str | Path) -> Path:
    """Where a label file of a TSV lives: a bare file name (``train.wrd``) sits next to the TSV, as
    fairseq keeps ``train.tsv`` / ``train.wrd`` / ``train.ltr`` in one folder (and as the ``.ids``
    file); a path with a folder (``data/train.wrd``, absolute or relative to the working directory)
    is taken as given."""
    file = Path(file)
    return Path(tsv).parent / file if not file.is_absolute() and file.parent == Path(".") else file


def _read_label_files(
    label_files: Mapping[str, str | Path] | None, count: int, tsv: str | Path
) -> dict[str, list[str]]:
    out = {}
    for field, file in (label_files or {}).items():
        file = label_file_path(tsv, file)
        lines = Path(file).read_text(encoding="utf-8").splitlines()
        if len(lines) != count:
            raise ManifestError(
                f"has {len(lines)} lines but the TSV has {count} entries (they must align)", file
            )
        out[field] = lines
    return out


def ids_path(tsv: str | Path) -> Path:
    """The id file that travels with a TSV: ``train.tsv`` -> ``train.ids``."""
    return Path(tsv).with_suffix(".ids")


def _read_ids(file: Path, relpaths: Sequence[str]) -> list[str]:
    """Ids from an export's ``.ids`` file, each line checked against its TSV entry's path."""
    rows = file.read_text(encoding="utf-8").splitlines()
    rows = [row for row in rows if row.strip()]
    if len(rows) != len(relpaths):
        raise ManifestError(
            f"has {len(rows)} ids but the TSV has {len(relpaths)} entries (stale? delete it to "
            "take ids from the paths)",
            file,
        )
    ids = []
    for lineno, (row, rel) in enumerate(zip(rows, relpaths), start=1):
        parts = row.split("\t")
        if len(parts) != 2 or not parts[0]:
            raise ManifestError(f"expected 'id<TAB>relative/path', got {row!r}", file, lineno)
        if parts[1] != rel:
            raise ManifestError(
                f"path {parts[1]!r} differs from the TSV's entry {lineno} {rel!r} (stale? delete it "
                "to take ids from the paths)",
                file,
                lineno,
            )
        ids.append(parts[0])
    return ids


def read_tsv(
    path: str | Path, sample_rate: int | None = None, label_files: Mapping[str, str | Path] | None = None
) -> list[dict]:
    """Read a fairseq wav2vec TSV into manifest records.

    Ids come from the ``.ids`` file next to the TSV when there is one (:func:`write_tsv` writes
    it), otherwise from the relative paths.

    Args:
        path: the ``.tsv`` file.
        sample_rate: the rate of every file (fairseq data is 16000); None reads each file's
            header (also checks the files exist).
        label_files: ``{field: file}`` line-aligned with the TSV entries, e.g. ``{"text": "train.wrd"}``
            (a bare file name is read next to the TSV: :func:`label_file_path`).
    Raises:
        ManifestError: naming ``file:line`` (bad line, bad count, unreadable audio, an ``.ids``
            file that does not match the TSV).
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].strip():
        raise ManifestError("first line must be the root folder", path, 1)
    root = Path(lines[0].strip())
    entries: list[tuple[int, str, int]] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise ManifestError(f"expected 'relative/path<TAB>num_samples', got {line!r}", path, lineno)
        try:
            num = int(parts[1])
        except ValueError:
            raise ManifestError(f"num_samples must be an integer, got {parts[1]!r}", path, lineno) from None
        entries.append((lineno, parts[0], num))
    labels = _read_label_files(label_files, len(entries), path)
    id_file = ids_path(path)
    if id_file.is_file():
        ids = _read_ids(id_file, [rel for _, rel, _ in entries])
    else:
        ids = make_ids([Path(rel) for _, rel, _ in entries])
    records = []
    mismatched = 0
    for k, ((lineno, rel, num), utt_id) in enumerate(zip(entries, ids)):
        audio = os.path.abspath(root / rel)
        if sample_rate is None:
            header_num, sr = _header(audio, path, lineno)
            mismatched += header_num != num
            num = header_num
        else:
            sr = sample_rate
        rec = {"id": utt_id, "path": audio, "num_samples": num, "sample_rate": sr}
        rec.update({field: values[k] for field, values in labels.items()})
        records.append(validate_record(rec, path, lineno))
    if mismatched:
        log.warning(
            "%s: %d entries' num_samples differ from the file headers; the headers were used",
            path,
            mismatched,
        )
    return records


def _common_root(paths: Sequence[str]) -> str:
    folders = [os.path.dirname(os.path.abspath(p)) for p in paths]
    return os.path.commonpath(folders) if folders else "/"


def default_tsv_root(records: Sequence[Mapping[str, Any]], manifest_dir: str | Path | None = None) -> str:
    """The root line when none is given: the manifest's folder when it holds every file (the
    corpus folder, as with ``speechssl synth`` or ``corpus prepare``), else the deepest common folder."""
    paths = [os.path.abspath(r["path"]) for r in records]
    if manifest_dir is not None:
        folder = os.path.abspath(manifest_dir)
        if all(not os.path.relpath(p, folder).startswith(os.pardir) for p in paths):
            return folder
    return _common_root(paths)


def write_tsv(
    records: Sequence[Mapping[str, Any]],
    path: str | Path,
    root: str | Path | None = None,
    label_files: Mapping[str, str | Path] | None = None,
    manifest_dir: str | Path | None = None,
) -> Path:
    """Write records as a fairseq wav2vec TSV and its ``.ids`` file (both atomic).

    Args:
        root: the first line, written as given (fairseq's ``wav2vec_manifest.py ROOT``); default
            :func:`default_tsv_root` (``manifest_dir`` if it holds every file, else the deepest
            common folder).
        label_files: ``{field: file}`` to also write line-aligned label files (e.g. ``text`` -> ``.wrd``;
            a bare file name is written next to the TSV: :func:`label_file_path`).
        manifest_dir: the folder of the manifest the records came from (for the default root).
    Raises:
        ManifestError: a record is a segment (TSV cannot express start/duration), lacks a label
            field, or lies outside ``root``.
    """
    path = Path(path)
    if ids_path(path) == path:
        raise ManifestError("the TSV must not end in .ids (that name holds its ids)", path)
    for rec in records:
        if rec.get("start") is not None or rec.get("duration") is not None:
            raise ManifestError(
                f"record {rec['id']!r} is a segment (start/duration); the fairseq TSV "
                "cannot express segments",
                path,
            )
    root = os.path.abspath(root) if root is not None else default_tsv_root(records, manifest_dir)
    lines = [root]
    id_lines = []
    for rec in records:
        rel = os.path.relpath(os.path.abspath(rec["path"]), root)
        if rel.startswith(os.pardir):
            raise ManifestError(f"record {rec['id']!r} ({rec['path']}) is outside the root {root}", path)
        if "\t" in rel or "\n" in rel or "\t" in rec["id"] or "\n" in rec["id"]:
            raise ManifestError(f"record {rec['id']!r}: a tab or newline in its id or path cannot go in a TSV", path)
        lines.append(f"{rel}\t{rec['num_samples']}")
        id_lines.append(f"{rec['id']}\t{rel}\n")
    other_rates = sorted({r["sample_rate"] for r in records} - {16000})
    if other_rates:
        log.warning("%s: files at %s Hz; fairseq's audio datasets expect 16000 Hz", path, other_rates)
    for field, file in (label_files or {}).items():
        file = label_file_path(path, file)
        missing = [r["id"] for r in records if field not in r]
        if missing:
            raise ManifestError(
                f"{len(missing)} records lack label field {field!r} (e.g. {missing[0]!r})", file
            )
        atomic_write_text(file, "".join(f"{r[field]}\n" for r in records))
    # The ids first: a TSV is never left next to the ids of an earlier export.
    atomic_write_text(ids_path(path), "".join(id_lines))
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _kaldi_table(path: Path, min_fields: int = 2) -> list[tuple[int, str, str]]:
    """``(line, key, rest)`` for each non-empty line of a Kaldi text table."""
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(None, 1)
        if len(parts) < min_fields:
            raise ManifestError(f"expected '<key> <value>', got {line!r}", path, lineno)
        rows.append((lineno, parts[0], parts[1].strip() if len(parts) > 1 else ""))
    return rows


def _wav_scp_path(rest: str, where: Path, lineno: int) -> str:
    if rest.endswith("|") or rest.startswith("|"):
        raise ManifestError(
            f"{rest!r} is a command (pipe); speechssl reads audio files only: run the "
            "command once to write audio files and list those instead",
            where,
            lineno,
        )
    if rest == "-":
        raise ManifestError("'-' (stdin) is not a file", where, lineno)
    if not os.path.exists(rest):
        if re.search(r"\.ark:\d+$", rest):
            raise ManifestError(
                f"{rest!r} is an offset into an ark file; list plain audio files instead", where, lineno
            )
        if re.search(r"\s", rest):
            raise ManifestError(
                f"{rest!r} looks like a command, not a file; list plain audio files", where, lineno
            )
        raise ManifestError(
            f"file not found: {rest} (relative paths are taken from the current directory, as Kaldi does)",
            where,
            lineno,
        )
    return os.path.abspath(rest)


def read_kaldi_dir(data_dir: str | Path) -> list[dict]:
    """Read a Kaldi data folder (or a ``wav.scp`` path, siblings read from its folder).

    Raises:
        ManifestError: naming ``file:line`` (pipes/commands, missing files, bad segments).
        FileNotFoundError: no ``wav.scp``.
    """
    data_dir = Path(data_dir)
    wav_scp = data_dir if data_dir.is_file() else data_dir / "wav.scp"
    folder = wav_scp.parent
    if not wav_scp.is_file():
        raise FileNotFoundError(f"no wav.scp in {data_dir}")
    recordings: dict[str, tuple[str, int, int, int]] = {}  # rec -> (path, num_samples, sr, line)
    for lineno, rec_id, rest in _kaldi_table(wav_scp):
        if rec_id in recordings:
            raise ManifestError(
                f"duplicate recording id {rec_id!r} (first on line {recordings[rec_id][3]})", wav_scp, lineno
            )
        audio = _wav_scp_path(rest, wav_scp, lineno)
        num, sr = _header(audio, wav_scp, lineno)
        recordings[rec_id] = (audio, num, sr, lineno)
    records: list[dict] = []
    segments = folder / "segments"
    if segments.is_file():
        for lineno, utt, rest in _kaldi_table(segments):
            parts = rest.split()
            if len(parts) != 3:
                raise ManifestError(
                    f"expected '<utt> <recording> <start> <end>', got {utt} {rest!r}", segments, lineno
                )
            if parts[0] not in recordings:
                raise ManifestError(f"recording {parts[0]!r} is not in wav.scp", segments, lineno)
            try:
                start, end = float(parts[1]), float(parts[2])
            except ValueError:
                raise ManifestError(
                    f"start/end must be numbers, got {parts[1]!r} {parts[2]!r}", segments, lineno
                ) from None
            audio, num, sr, _ = recordings[parts[0]]
            rec: dict[str, Any] = {
                "id": utt,
                "path": audio,
                "num_samples": num,
                "sample_rate": sr,
                "start": start,
            }
            if end != -1:
                if end <= start:
                    raise ManifestError(f"end {end} <= start {start}", segments, lineno)
                rec["duration"] = round(min(end, num / sr) - start, 6)
            records.append(validate_record(rec, segments, lineno))
    else:
        records = [
            {"id": rec_id, "path": audio, "num_samples": num, "sample_rate": sr}
            for rec_id, (audio, num, sr, _) in recordings.items()
        ]
    by_id = {r["id"]: r for r in records}
    if len(by_id) != len(records):
        raise ManifestError("duplicate utterance ids", segments)
    label_files = {"speaker": folder / "utt2spk", "text": folder / "text"}
    for extra in sorted(folder.glob("utt2*")):
        if extra.name not in _KALDI_NOT_LABELS:
            label_files[extra.name[len("utt2") :]] = extra
    for field, file in label_files.items():
        if not file.is_file():
            continue
        unknown = 0
        for _, utt, value in _kaldi_table(file, min_fields=1 if field == "text" else 2):
            if utt in by_id:
                by_id[utt][field] = value
            else:
                unknown += 1
        if unknown:
            log.warning("%s: %d entries for utterances not in wav.scp/segments were ignored", file, unknown)
    return records


def _check_token(value: str, what: str, rec_id: str) -> str:
    if not value or re.search(r"\s", value):
        raise ManifestError(
            f"record {rec_id!r}: {what} {value!r} is empty or contains whitespace, "
            "which Kaldi tables cannot hold"
        )
    return value


def write_kaldi_dir(
    records: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    speaker_field: str = "speaker",
    text_field: str = "text",
) -> Path:
    """Write a Kaldi data folder: ``wav.scp``, ``utt2spk``, ``spk2utt``, and ``segments`` /
    ``text`` when needed. Files are sorted by key; utterances without a speaker are their own
    speaker (the Kaldi convention). Every file is written atomically.

    Raises:
        ManifestError: an id or speaker contains whitespace.
    """
    out_dir = Path(out_dir)
    recs = sorted(records, key=lambda r: r["id"])
    for rec in recs:
        _check_token(rec["id"], "id", rec["id"])
    has_segments = any(r.get("start") is not None or r.get("duration") is not None for r in recs)
    files: dict[str, list[str]] = {}
    if has_segments:
        paths = sorted({os.path.abspath(r["path"]) for r in recs})
        root = _common_root(paths)
        rec_ids = dict(zip(paths, make_ids([Path(os.path.relpath(p, root)) for p in paths])))
        files["wav.scp"] = sorted(f"{rec_ids[p]} {p}" for p in paths)
        files["segments"] = []
        for r in recs:
            start = float(r.get("start") or 0.0)
            end = start + record_duration(r)
            files["segments"].append(f"{r['id']} {rec_ids[os.path.abspath(r['path'])]} {start:.3f} {end:.3f}")
    else:
        files["wav.scp"] = [f"{r['id']} {os.path.abspath(r['path'])}" for r in recs]
    spk = {r["id"]: _check_token(str(r.get(speaker_field, r["id"])), speaker_field, r["id"]) for r in recs}
    files["utt2spk"] = [f"{u} {s}" for u, s in spk.items()]
    spk2utt: dict[str, list[str]] = {}
    for u, s in spk.items():
        spk2utt.setdefault(s, []).append(u)
    files["spk2utt"] = [f"{s} {' '.join(us)}" for s, us in sorted(spk2utt.items())]
    if any(text_field in r for r in recs):
        files["text"] = [f"{r['id']} {r.get(text_field, '')}".rstrip() for r in recs]
    if any(not os.path.abspath(r["path"]).lower().endswith(".wav") for r in recs):
        log.warning(
            "%s: some files are not .wav; Kaldi binaries need wav (convert, or add pipes by hand)", out_dir
        )
    if sorted(spk.values()) != [spk[u] for u in spk]:
        log.warning(
            "%s: utterance ids are not prefixed by speaker ids; Kaldi's validate_data_dir.sh "
            "may ask for utils/fix_data_dir.sh",
            out_dir,
        )
    for name, lines in files.items():
        atomic_write_text(out_dir / name, "".join(line + "\n" for line in lines))
    return out_dir


def import_manifest(
    fmt: Literal["tsv", "kaldi"],
    source: str | Path,
    out: str | Path,
    sample_rate: int | None = None,
    label_files: Mapping[str, str | Path] | None = None,
) -> list[dict]:
    """``speechssl manifest import``: read a fairseq TSV or a Kaldi data folder, write ``out`` as JSONL.

    Args:
        fmt: ``"tsv"`` (:func:`read_tsv`) or ``"kaldi"`` (:func:`read_kaldi_dir`).
        source: the ``.tsv`` file, or the Kaldi data folder / ``wav.scp``.
        out: the manifest to write (atomically, :func:`~speechssl.data.write_manifest`).
        sample_rate: tsv only: the rate of every file (None reads each header).
        label_files: tsv only: ``{field: file}`` line-aligned with the TSV entries.
    Returns:
        The records written.
    Raises:
        ValueError: an unknown ``fmt``, tsv-only options with ``kaldi``, or a source with no
            entries (nothing is written then).
        ManifestError: a bad line of the source, named by file and line.
    """
    if fmt == "tsv":
        records = read_tsv(source, sample_rate=sample_rate, label_files=label_files)
    elif fmt == "kaldi":
        if label_files or sample_rate:
            raise ValueError(
                "--labels/--sample-rate apply to --from tsv only (Kaldi labels come from "
                "utt2spk, text and utt2* files)"
            )
        records = read_kaldi_dir(source)
    else:
        raise ValueError(f"unknown manifest format {fmt!r}; choices: kaldi, tsv")
    if not records:
        raise ValueError(f"{source}: no entries")
    write_manifest(records, out)
    return records


def export_manifest(
    fmt: Literal["tsv", "kaldi"],
    manifest: str | Path,
    out: str | Path,
    root: str | Path | None = None,
    label_files: Mapping[str, str | Path] | None = None,
    speaker_field: str = "speaker",
) -> list[dict]:
    """``speechssl manifest export``: write a JSONL manifest as a fairseq TSV or a Kaldi data folder.

    Args:
        fmt: ``"tsv"`` (:func:`write_tsv`; its default root is found from the manifest's folder)
            or ``"kaldi"`` (:func:`write_kaldi_dir`).
        manifest: the JSONL manifest to export.
        out: the ``.tsv`` file, or the Kaldi data folder.
        root: tsv: the root line (default: see :func:`write_tsv`).
        label_files: tsv: ``{field: file}`` line-aligned label files to write too.
        speaker_field: kaldi: the field written to ``utt2spk``.
    Returns:
        The manifest's records.
    Raises:
        ValueError: an unknown ``fmt``.
        ManifestError: a record the format cannot express (see the writers).
    """
    records = read_manifest(manifest)
    if fmt == "tsv":
        write_tsv(records, out, root=root, label_files=label_files, manifest_dir=Path(manifest).parent)
    elif fmt == "kaldi":
        write_kaldi_dir(records, out, speaker_field=speaker_field)
    else:
        raise ValueError(f"unknown manifest format {fmt!r}; choices: kaldi, tsv")
    return records
