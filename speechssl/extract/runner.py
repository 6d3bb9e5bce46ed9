"""Batched, chunked, resumable, sharded feature extraction with a frozen encoder.

Usage (the library call behind ``speechssl extract``)::

    from speechssl.extract import ExtractConfig, extract_features
    summary = extract_features("exp/apc/encoder", "data/wavs", "feats/",
                               ExtractConfig(layers="context,latent", format="npy"))

* utterances are sorted by length and encoded by :func:`speechssl.extract.encode.encode_records`
  (batches under ``batch_seconds`` of padded audio; files longer than ``chunk_seconds`` in
  overlapping chunks, :mod:`speechssl.extract.chunking`);
* one output per utterance (or one ark / HDF5 file, see :mod:`speechssl.extract.writers`) and
  ``index.tsv`` with columns ``id path frames frame_rate layers dim``;
* a rerun skips utterances already in the index whose output is intact;
* unreadable or too-short files go to ``errors.tsv`` (``id path reason``) and the run goes on;
* under ``torchrun`` (``RANK``/``WORLD_SIZE``) each rank takes its share of the utterances
  (balanced by seconds of audio, :func:`shard_items`) and rank 0 merges the per-rank indexes
  when all ranks are done (marker files, so no process group is needed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from speechssl.extract.chunking import long_file_method
from speechssl.extract.config import ExtractConfig
from speechssl.extract.encode import EncodePolicy, encode_records
from speechssl.extract.inputs import Item, read_inputs
from speechssl.extract.writers import FeatureWriter, KaldiWriter, UtteranceSink, check_format, make_writer
from speechssl.locks import hold_rank_lock, remove_stale_temporaries
from speechssl.progress import AUDIO_SECONDS, PROGRESS_EVERY_SECONDS, Progress
from speechssl.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
INDEX_COLUMNS = ("id", "path", "frames", "frame_rate", "layers", "dim")
ERROR_COLUMNS = ("id", "path", "reason")


@dataclasses.dataclass
class ExtractSummary:
    written: int  # utterances extracted in this run
    skipped: int  # already done by an earlier run
    failed: int  # listed in errors.tsv (by this rank)
    seconds: float  # audio seconds extracted in this run
    wall_seconds: float
    index: Path | None  # index.tsv (rank 0) or None


def _tsv_rows(path: Path, columns: tuple[str, ...]) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) != len(columns) or parts[0] == columns[0]:
            continue  # header, or a line cut by a crash
        rows.append(dict(zip(columns, parts)))
    return rows


def _tsv_text(rows: list[dict], columns: tuple[str, ...]) -> str:
    clean = [{c: str(r[c]).replace("\t", " ").replace("\n", " ") for c in columns} for r in rows]
    return "\t".join(columns) + "\n" + "".join("\t".join(r[c] for c in columns) + "\n" for r in clean)


class _Appender:
    """Append-only TSV part file; each line is flushed so a crash loses at most the line being written."""

    def __init__(self, path: Path, columns: tuple[str, ...], rows: list[dict]):
        self.columns = columns
        atomic_write_text(path, _tsv_text(rows, columns))
        self.f = open(path, "a", encoding="utf-8")

    def add(self, row: dict) -> None:
        self.f.write("\t".join(str(row[c]).replace("\t", " ").replace("\n", " ") for c in self.columns) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def shard_items(items: list[Item], world: int) -> list[list[Item]]:
    """Split items over ranks by seconds of audio: longest first, each to the least loaded rank.

    Every rank computes the same split from the same input list (no communication needed).
    """
    shards: list[list[Item]] = [[] for _ in range(world)]
    load = [0.0] * world
    for item in sorted(items, key=lambda i: (-i.seconds, i.id)):
        r = min(range(world), key=lambda k: (load[k], k))
        shards[r].append(item)
        load[r] += item.seconds
    return shards


class _IndexedSink:
    """A writer's sink whose commit also adds the utterance's line to ``index.tsv``."""

    def __init__(self, run: _Extraction, item: Item, sink: UtteranceSink):
        self.run, self.item, self.sink, self.frames = run, item, sink, 0

    def append(self, arrays: list[np.ndarray]) -> None:
        self.sink.append(arrays)
        self.frames += int(arrays[0].shape[0])

    def commit(self) -> str:
        loc = self.sink.commit()
        run = self.run
        run.index.add({"id": self.item.id, "path": loc, "frames": self.frames, "frame_rate": run.frame_rate,
                       "layers": run.layers, "dim": ",".join(map(str, run.dims))})
        run.written += 1
        run.seconds += self.item.seconds
        return loc

    def abort(self) -> None:
        self.sink.abort()


class _Extraction:
    """Where :func:`~speechssl.extract.encode.encode_records` puts features during an extraction:
    the writer and ``index.tsv``, failures in ``errors.tsv``, progress in seconds of audio."""

    def __init__(self, encoder, writer: FeatureWriter, index: _Appender, errors: _Appender, bar):
        self.writer, self.index, self.errors, self.bar = writer, index, errors, bar
        self.written = self.failed_count = 0
        self.seconds = 0.0
        self.dims = encoder.hidden_sizes
        self.layers = ",".join(encoder.layer_names)
        self.frame_rate = f"{SAMPLE_RATE / encoder.frame_shift:g}"

    def begin(self, item: Item, layer_names: list[str], frame_shift: int) -> _IndexedSink:
        return _IndexedSink(self, item, self.writer.begin(item.id, self.dims))

    def failed(self, item: Item, reason: str) -> None:
        log.warning("%s (%s): %s", item.id, item.path, reason)
        self.errors.add({"id": item.id, "path": item.path, "reason": reason})
        self.failed_count += 1

    def finished(self, items: list[Item]) -> None:
        self.bar.advance(sum(i.seconds for i in items))


def _rank_world(cfg: ExtractConfig) -> tuple[int, int]:
    rank = cfg.rank if cfg.rank is not None else int(os.environ.get("RANK", 0))
    world = cfg.world_size if cfg.world_size is not None else int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world size {world}")
    return rank, world


def _check_meta(out: Path, meta: dict) -> None:
    """Resuming into ``out`` must not mix features of another encoder, weights, layers, format,
    dtype, precision or long-file chunking (``chunk_seconds`` / ``overlap_seconds`` decide the
    frames of long files); keys an older extract.json lacks are not compared."""
    path = out / "extract.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON ({exc}); delete the folder or use another --out") from None
        always = ("encoder", "layers", "format", "dtype")
        newer = ("precision", "chunk_seconds", "overlap_seconds", "weights_sha256")
        diff = [k for k in always if old.get(k) != meta.get(k)]
        diff += [k for k in newer if k in old and old[k] != meta.get(k)]
        if diff == ["weights_sha256"]:
            raise ValueError(
                f"{out} holds features of other weights than those of {meta.get('encoder')!r} now "
                f"(weights_sha256 {str(old.get('weights_sha256'))[:12]}... vs {str(meta.get('weights_sha256'))[:12]}...: "
                "the encoder was trained or released again since); use another --out or delete it"
            )
        if diff:
            raise ValueError(
                f"{out} holds features made with a different {', '.join(diff)} "
                f"({', '.join(f'{k}={old.get(k)!r}' for k in diff)}); use another --out or delete it"
            )


def _merge(out: Path, world: int, ids: list[str], fmt: str, layers: list[str], timeout_min: float) -> Path:
    deadline = time.time() + timeout_min * 60
    markers = [out / f".rank{r}.done" for r in range(world)]
    while not all(m.is_file() for m in markers):
        if time.time() > deadline:
            missing = [m.name for m in markers if not m.is_file()]
            raise TimeoutError(f"ranks did not finish in {timeout_min} minutes: missing {missing}")
        time.sleep(1.0)
    wanted = set(ids)
    rows: dict[str, dict] = {r["id"]: r for r in _tsv_rows(out / "index.tsv", INDEX_COLUMNS) if r["id"] in wanted}
    errors: dict[str, dict] = {}
    for r in range(world):
        for row in _tsv_rows(out / f"index.part{r}.tsv", INDEX_COLUMNS):
            if row["id"] in wanted:
                rows[row["id"]] = row
        for row in _tsv_rows(out / f"errors.part{r}.tsv", ERROR_COLUMNS):
            errors[row["id"]] = row
    order = {u: i for i, u in enumerate(ids)}
    ordered = sorted(rows.values(), key=lambda r: order[r["id"]])
    atomic_write_text(out / "index.tsv", _tsv_text(ordered, INDEX_COLUMNS))
    failed = [e for e in sorted(errors.values(), key=lambda r: order.get(r["id"], -1)) if e["id"] not in rows]
    atomic_write_text(out / "errors.tsv", _tsv_text(failed, ERROR_COLUMNS))
    if fmt == "kaldi":
        KaldiWriter.write_scps(out, ordered, layers)
    for path in [*markers, *out.glob("index.part*.tsv"), *out.glob("errors.part*.tsv")]:
        path.unlink(missing_ok=True)  # index.tsv / errors.tsv now hold everything
    return out / "index.tsv"


def extract_features(encoder, source: str | Path, out: str | Path, cfg: ExtractConfig | None = None,
                     **encoder_options: Any) -> ExtractSummary:
    """Extract features of every utterance of ``source`` into ``out`` (see the module docstring).

    Args:
        encoder: an :class:`~speechssl.upstream.Encoder` or anything :func:`load_encoder` accepts.
        source: a folder, ``*.jsonl`` manifest, ``wav.scp`` or one audio file.
        out: output folder.
    """
    from speechssl.upstream import Encoder, load_encoder

    cfg = cfg or ExtractConfig()
    check_format(cfg.format, cfg.dtype)
    policy = EncodePolicy(batch_seconds=cfg.batch_seconds, chunk_seconds=cfg.chunk_seconds,
                          overlap_seconds=cfg.overlap_seconds, errors="skip")
    rank, world = _rank_world(cfg)
    source_name = encoder.source if isinstance(encoder, Encoder) else str(encoder)
    if not isinstance(encoder, Encoder):
        encoder = load_encoder(encoder, layers=cfg.layers, device=cfg.device, precision=cfg.precision, **encoder_options)
    elif encoder_options:
        raise TypeError(f"encoder options {sorted(encoder_options)} need an encoder path or name, not an Encoder")
    elif cfg.layers not in (None, "all"):
        encoder = Encoder(encoder.backbone, dataclasses.replace(encoder.options, layers=cfg.layers),
                          source=encoder.source, kind=encoder.kind)
    if cfg.compile:
        from speechssl.compilation import compile_model

        compile_model(encoder.backbone)
    out = Path(out)
    # One writer per folder: each rank of one torchrun job holds its own lock (speechssl/locks.py).
    with hold_rank_lock(out, rank, world):
        if int(os.environ.get("LOCAL_WORLD_SIZE", world)) == world:  # all ranks here: pids are checkable
            remove_stale_temporaries(out)
        return _extract_locked(encoder, source, out, cfg, policy, rank, world, source_name)


def _extract_locked(encoder, source: str | Path, out: Path, cfg: ExtractConfig, policy: EncodePolicy, rank: int,
                    world: int, source_name: str) -> ExtractSummary:
    start_time = time.time()

    items, unreadable = read_inputs(source)
    seen: dict[str, str] = {}
    for item in items:
        if item.id in seen:
            raise ValueError(f"{source}: duplicate utterance id {item.id!r} ({seen[item.id]} and {item.path})")
        seen[item.id] = item.path
    meta = {"encoder": source_name, "kind": encoder.kind, "layers": encoder.layer_names, "format": cfg.format,
            "dtype": cfg.dtype, "frame_shift": encoder.frame_shift,
            "chunk_seconds": cfg.chunk_seconds, "overlap_seconds": cfg.overlap_seconds,
            "precision": cfg.precision, "weights_sha256": encoder.weights_sha256(),
            "long_files": long_file_method(encoder)}  # how files over chunk_seconds are cut, and its error
    _check_meta(out, meta)  # before the encoder first runs (hidden_sizes): a refused rerun does no work
    meta["hidden_sizes"] = encoder.hidden_sizes
    # What the encoder says about itself, so the folder alone answers it (read by
    # speechssl.downstream.source_info): aliases found structurally, not by comparing values,
    # and the role without looking up a released encoder that may have moved.
    meta["layer_aliases"] = encoder.layer_aliases
    meta.update(encoder.role_info())  # role, control_of, architecture
    if rank == 0:
        atomic_write_json(out / "extract.json", meta)
    (out / f".rank{rank}.done").unlink(missing_ok=True)

    mine = shard_items(items, world)[rank]
    mine_ids = {i.id for i in mine}
    writer = make_writer(cfg.format, out, encoder.layer_names, cfg.dtype, rank=rank, world_size=world)
    previous: dict[str, dict] = {}
    for path in [out / "index.tsv"] + sorted(out.glob("index.part*.tsv")):
        for row in _tsv_rows(path, INDEX_COLUMNS):
            if row["id"] in mine_ids:
                previous[row["id"]] = row
    done = writer.recover({u: r["path"] for u, r in previous.items()})
    index = _Appender(out / f"index.part{rank}.tsv", INDEX_COLUMNS, [previous[u] for u in sorted(done)])
    errors = _Appender(out / f"errors.part{rank}.tsv", ERROR_COLUMNS, [])
    todo = [i for i in mine if i.id not in done]
    # a bar on a terminal; a redirected stderr (a batch job's log) gets a line every 30 s instead
    bar = Progress(sum(i.seconds for i in todo), 0.0, cfg.progress, PROGRESS_EVERY_SECONDS, main=True,
                   desc=f"extract[rank {rank}]", counts=AUDIO_SECONDS, logger=log)
    run = _Extraction(encoder, writer, index, errors, bar)
    if rank == 0:
        for utt, path, reason in unreadable:
            run.failed(Item(utt, path, 0.0), reason)
    try:
        encode_records(encoder, todo, policy, run)
    finally:
        bar.close()
        index.close()
        errors.close()
        writer.close()
    (out / f".rank{rank}.done").write_text("done\n")
    log.info("rank %d: %d extracted (%.1f s of audio), %d already done, %d failed", rank, run.written,
             run.seconds, len(done), run.failed_count)
    index_path = None
    if rank == 0:
        all_ids = [i.id for i in items]
        index_path = _merge(out, world, all_ids, cfg.format, encoder.layer_names, cfg.merge_timeout_minutes)
    return ExtractSummary(run.written, len(done), run.failed_count, run.seconds, time.time() - start_time, index_path)
