"""Batched, chunked, resumable, sharded feature extraction with a frozen encoder.

Usage (the library call behind ``speechssl extract``)::

    from speechssl.extract import ExtractConfig, extract_features
    summary = extract_features("exp/apc/encoder", "data/wavs", "feats/",
                               ExtractConfig(layers="context,latent", format="npy"))

* utterances are sorted by length and batched under ``batch_seconds`` of padded audio, then
  encoded under ``torch.inference_mode``;
* files longer than ``chunk_seconds`` go through :mod:`speechssl.extract.chunking`;
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

import torch
from tqdm import tqdm

from speechssl.extract.chunking import encode_chunked
from speechssl.extract.inputs import Item, read_inputs
from speechssl.extract.writers import FeatureWriter, KaldiWriter, check_format, make_writer
from speechssl.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
INDEX_COLUMNS = ("id", "path", "frames", "frame_rate", "layers", "dim")
ERROR_COLUMNS = ("id", "path", "reason")


@dataclasses.dataclass
class ExtractConfig:
    layers: Any = "all"  # "all", "context,latent" or a list of names / indices
    format: str = "npy"  # npy | pt | kaldi | hdf5
    dtype: str = "float32"  # storage dtype: float32 | float16 (the encoder always runs in fp32)
    batch_seconds: float = 30.0  # padded seconds of audio per forward pass (keeps wav2vec2 Base, all layers, < 2 GiB)
    chunk_seconds: float = 30.0  # longer files are encoded in overlapping chunks of this length
    overlap_seconds: float = 2.0  # context on each side of a chunk (>= the receptive field)
    device: str = "cpu"  # cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast; much faster where the CPU/GPU has bf16 units)
    progress: bool = True  # tqdm bar on stderr
    rank: int | None = None  # default: $RANK (0)
    world_size: int | None = None  # default: $WORLD_SIZE (1)
    merge_timeout_minutes: float = 24 * 60.0  # rank 0 waits this long for the other ranks


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


MAX_PADDING = 0.1  # a batch grows only while padding stays under this fraction of its padded audio


def _batches(items: list[Item], budget: float, max_padding: float = MAX_PADDING) -> list[list[Item]]:
    """Consecutive runs of length-sorted items whose padded size (max * count) fits ``budget``.

    A batch also stops growing where padding would pass ``max_padding`` of it: padded frames cost
    as much as real ones, and on a CPU one utterance per call already keeps the matmuls efficient
    (wav2vec2 Base, tools/bench, 60 s batches of 2-15 s clips: RTF 0.100 without this cap, 0.059 with it
    and the skipped random init at load).
    """
    out: list[list[Item]] = []
    cur: list[Item] = []
    real = 0.0
    for item in items:
        longest = max([item.seconds] + [i.seconds for i in cur])
        padded = longest * (len(cur) + 1)
        if cur and (padded > budget or 1.0 - (real + item.seconds) / padded > max_padding):
            out.append(cur)
            cur, real = [], 0.0
        cur.append(item)
        real += item.seconds
    if cur:
        out.append(cur)
    return out


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


def _load(item: Item) -> torch.Tensor:
    from speechssl.audio import load_audio

    return load_audio(item.path, start=item.start, duration=item.duration)


class _Run:
    def __init__(self, encoder, writer: FeatureWriter, index: _Appender, errors: _Appender, bar):
        self.encoder, self.writer, self.index, self.errors, self.bar = encoder, writer, index, errors, bar
        self.written = self.failed = 0
        self.seconds = 0.0
        self.dims = encoder.hidden_sizes
        self.layers = ",".join(encoder.layer_names)
        self.frame_rate = f"{SAMPLE_RATE / encoder.frame_shift:g}"

    def fail(self, item: Item, reason: str) -> None:
        log.warning("%s (%s): %s", item.id, item.path, reason)
        self.errors.add({"id": item.id, "path": item.path, "reason": reason})
        self.failed += 1

    def _commit(self, item: Item, arrays_chunks, frames: int) -> None:
        self.index.add({"id": item.id, "path": arrays_chunks, "frames": frames, "frame_rate": self.frame_rate,
                        "layers": self.layers, "dim": ",".join(map(str, self.dims))})
        self.written += 1
        self.seconds += item.seconds

    def write_one(self, item: Item, arrays: list) -> None:
        sink = self.writer.begin(item.id, self.dims)
        try:
            sink.append(arrays)
            loc = sink.commit()
        except BaseException:
            sink.abort()
            raise
        self._commit(item, loc, int(arrays[0].shape[0]))

    def batch(self, items: list[Item]) -> None:
        wavs, ok = [], []
        for item in items:
            try:
                wavs.append(_load(item))
                ok.append(item)
            except (ValueError, OSError) as exc:
                self.fail(item, str(exc))
                self.bar.update(item.seconds)
        if not ok:
            return
        lengths = torch.tensor([w.numel() for w in wavs])
        padded = torch.zeros(len(wavs), int(lengths.max()))
        for i, w in enumerate(wavs):
            padded[i, : w.numel()] = w
        try:
            with torch.inference_mode():
                out = self.encoder(padded, lengths)
        except (RuntimeError, ValueError) as exc:  # out of memory, or an utterance the model refuses
            if len(ok) == 1:
                self.fail(ok[0], f"encoder failed: {str(exc)[:300]}")
                self.bar.update(ok[0].seconds)
                return
            log.warning("batch of %d failed (%s); retrying one by one", len(ok), str(exc)[:200])
            for item in ok:
                self.batch([item])
            return
        for i, item in enumerate(ok):
            n = int(out.lengths[i])
            if n <= 0:
                self.fail(item, f"too short: {int(lengths[i])} samples give no frame with this encoder")
            else:
                try:
                    self.write_one(item, [h[i, :n].float().cpu().numpy() for h in out.hidden_states])
                except (ValueError, OSError) as exc:
                    self.fail(item, f"cannot write features: {exc}")
            self.bar.update(item.seconds)

    def long(self, item: Item, chunk: int, overlap: int) -> None:
        from speechssl.audio import audio_info, load_audio

        try:
            info = audio_info(item.path)
            base = float(item.start or 0.0)
            if info.sample_rate == SAMPLE_RATE:
                total = int(round((item.duration or (info.duration - base)) * SAMPLE_RATE))

                def read(ws: int, we: int) -> torch.Tensor:
                    return load_audio(item.path, start=base + ws / SAMPLE_RATE, duration=(we - ws) / SAMPLE_RATE)
            else:  # resample once; slicing a resampled whole avoids misaligned chunk edges
                whole = _load(item)
                total = whole.numel()

                def read(ws: int, we: int) -> torch.Tensor:
                    return whole[ws:we]
        except (ValueError, OSError) as exc:
            self.fail(item, str(exc))
            self.bar.update(item.seconds)
            return
        sink = self.writer.begin(item.id, self.dims)
        try:
            frames = encode_chunked(self.encoder, read, total, chunk, overlap, sink.append)
            if frames <= 0:
                raise ValueError(f"too short: {total} samples give no frame with this encoder")
            loc = sink.commit()
        except (ValueError, OSError, RuntimeError) as exc:
            sink.abort()
            self.fail(item, str(exc)[:300])
        else:
            self._commit(item, loc, frames)
        self.bar.update(item.seconds)


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
    if cfg.chunk_seconds <= 0 or cfg.batch_seconds <= 0 or cfg.overlap_seconds < 0:
        raise ValueError(
            f"chunk_seconds ({cfg.chunk_seconds}) and batch_seconds ({cfg.batch_seconds}) must be > 0, "
            f"overlap_seconds ({cfg.overlap_seconds}) >= 0"
        )
    rank, world = _rank_world(cfg)
    source_name = encoder.source if isinstance(encoder, Encoder) else str(encoder)
    if not isinstance(encoder, Encoder):
        encoder = load_encoder(encoder, layers=cfg.layers, device=cfg.device, precision=cfg.precision, **encoder_options)
    elif encoder_options:
        raise TypeError(f"encoder options {sorted(encoder_options)} need an encoder path or name, not an Encoder")
    elif cfg.layers not in (None, "all"):
        encoder = Encoder(encoder.backbone, dataclasses.replace(encoder.options, layers=cfg.layers),
                          source=encoder.source, kind=encoder.kind)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start_time = time.time()

    items, unreadable = read_inputs(source)
    seen: dict[str, str] = {}
    for item in items:
        if item.id in seen:
            raise ValueError(f"{source}: duplicate utterance id {item.id!r} ({seen[item.id]} and {item.path})")
        seen[item.id] = item.path
    meta = {"encoder": source_name, "kind": encoder.kind, "layers": encoder.layer_names, "format": cfg.format,
            "dtype": cfg.dtype, "frame_shift": encoder.frame_shift, "hidden_sizes": encoder.hidden_sizes,
            "chunk_seconds": cfg.chunk_seconds, "overlap_seconds": cfg.overlap_seconds,
            "precision": cfg.precision, "weights_sha256": encoder.weights_sha256()}
    _check_meta(out, meta)
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
    bar = tqdm(total=sum(i.seconds for i in todo), desc=f"extract[rank {rank}]", disable=not cfg.progress,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of audio [{elapsed}<{remaining}]",
               dynamic_ncols=True)
    run = _Run(encoder, writer, index, errors, bar)
    if rank == 0:
        for utt, path, reason in unreadable:
            run.fail(Item(utt, path, 0.0), reason)
    try:
        long_items = [i for i in todo if i.seconds > cfg.chunk_seconds]
        short_items = [i for i in todo if i.seconds <= cfg.chunk_seconds]
        chunk = int(cfg.chunk_seconds * SAMPLE_RATE)
        overlap = int(cfg.overlap_seconds * SAMPLE_RATE)
        for item in long_items:
            run.long(item, chunk, overlap)
        for batch in _batches(short_items, cfg.batch_seconds):
            run.batch(batch)
    finally:
        bar.close()
        index.close()
        errors.close()
        writer.close()
    (out / f".rank{rank}.done").write_text("done\n")
    log.info("rank %d: %d extracted (%.1f s of audio), %d already done, %d failed", rank, run.written,
             run.seconds, len(done), run.failed)
    index_path = None
    if rank == 0:
        all_ids = [i.id for i in items]
        index_path = _merge(out, world, all_ids, cfg.format, encoder.layer_names, cfg.merge_timeout_minutes)
    return ExtractSummary(run.written, len(done), run.failed, run.seconds, time.time() - start_time, index_path)
