"""Label every utterance of a manifest with its nearest k-means cluster, per frame: resumable, sharded.

The library call behind ``speechssl targets assign``::

    assign_labels("exp/km_mfcc", "data/train.jsonl", "exp/labels_it1")
    assign_labels("exp/km_mfcc", "data/dev.jsonl", "exp/labels_it1")      # same folder, same k-means

Layout of the output folder (one folder = one k-means model; several manifests may share it)::

    targets.json                    k, hash, frame shift, the features' provenance (written once)
    chunks/<manifest>-<c>.npz       ids, num_samples, counts, labels (concatenated int32) of up to
                                    ``chunk_size`` utterances; written atomically
    index.json                      the manifests labelled, their SHA-256 and chunk files
    report-<manifest>.json / .png   cluster report (:mod:`speechssl.targets.report`)

Chunks are the unit of work: chunk ``c`` belongs to rank ``c % world_size`` (``RANK`` /
``WORLD_SIZE`` under torchrun, as ``speechssl extract``), a chunk file that exists is done (a rerun
resumes), and rank 0 merges the index once every rank has left its marker (no process group
needed). The features are recomputed from the encoder recorded in the k-means model, and refused if
its weights or layer changed since the fit. Labelling into a folder that holds labels of another
k-means is an error: validation labels from a separately fitted k-means are a known HuBERT pitfall.
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

from speechssl.audio import AudioError
from speechssl.data.manifest import read_manifest
from speechssl.locks import hold_rank_lock
from speechssl.progress import PROGRESS_EVERY_SECONDS, Progress
from speechssl.targets.features import check_same_features, open_features, utterance_features
from speechssl.targets.kmeans import load_kmeans, nearest
from speechssl.targets.labels import read_chunk
from speechssl.utils import atomic_path, atomic_write_json, file_sha256

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclasses.dataclass
class AssignSummary:
    manifest_key: str  # the manifest's chunk prefix (first 12 hex digits of its SHA-256)
    utterances: int  # in the manifest
    labelled: int  # by this rank in this run
    skipped_chunks: int  # already done (resume)
    index: Path | None  # index.json (rank 0) or None
    report: Path | None


CHUNKS = ("{n:.0f}/{total:.0f} chunks done", "chunks/s")  # speechssl.progress counts: chunks of this rank


def _rank_world(rank: int | None, world: int | None) -> tuple[int, int]:
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world size {world}")
    return rank, world


def targets_meta(km: dict[str, Any]) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "k": km["k"], "hash": km["hash"],
            "frame_shift": km["features"]["frame_shift"], "features": km["features"],
            "train_manifest": km["train_manifest"]}


def _claim_folder(out: Path, meta: dict[str, Any], kmeans_dir: Path) -> None:
    path = out / "targets.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("hash") != meta["hash"]:
            raise ValueError(
                f"{out} holds labels of k-means {old.get('hash')} (features {old.get('features', {}).get('features')}), "
                f"not of {kmeans_dir} (hash {meta['hash']}): every manifest of one label folder (train and "
                "validation) must be labelled by the same k-means model; use another --out")
        return
    atomic_write_json(path, meta)


def _write_chunk(path: Path, ids: list[str], num_samples: list[int], labels: list[np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, ids=np.array(ids, dtype=str), num_samples=np.array(num_samples, dtype=np.int64),
                     counts=np.array([len(v) for v in labels], dtype=np.int64),
                     labels=np.concatenate(labels).astype(np.int32) if labels else np.zeros(0, np.int32))


def _chunk_ok(path: Path, ids: list[str]) -> bool:
    if not path.is_file():
        return False
    try:
        return read_chunk(path)["ids"].tolist() == ids
    except (OSError, ValueError):
        log.warning("%s is unreadable: labelling its utterances again", path)
        return False


def assign_labels(kmeans_dir: str | Path, manifest: str | Path, out: str | Path, chunk_size: int = 200,
                  batch_seconds: float = 60.0, device: str = "cpu", rank: int | None = None,
                  world_size: int | None = None, report_labels: list[str] | None = None,
                  merge_timeout_minutes: float = 24 * 60.0) -> AssignSummary:
    """Label every utterance of ``manifest`` into ``out`` (see the module docstring)."""
    kmeans_dir, out = Path(kmeans_dir), Path(out)
    rank, world = _rank_world(rank, world_size)
    km, centroids = load_kmeans(kmeans_dir)
    records = read_manifest(manifest)
    key = file_sha256(manifest, 12)
    source = open_features(km["features"]["features"], km["features"]["layer"], device)
    check_same_features(km["features"], source, str(kmeans_dir))
    out.mkdir(parents=True, exist_ok=True)
    with hold_rank_lock(out, rank, world, purpose="speechssl targets assign"):
        meta = targets_meta(km)
        _claim_folder(out, meta, kmeans_dir)
        (out / "chunks").mkdir(exist_ok=True)
        marker = out / f".{key}.rank{rank}.done"
        marker.unlink(missing_ok=True)
        chunks = [records[i: i + chunk_size] for i in range(0, len(records), chunk_size)]
        mine = [c for c in range(len(chunks)) if c % world == rank]
        paths = {c: out / "chunks" / f"{key}-{c:05d}.npz" for c in mine}
        todo = [c for c in mine if not _chunk_ok(paths[c], [r["id"] for r in chunks[c]])]  # a rerun resumes
        skipped, done, t0 = len(mine) - len(todo), 0, time.monotonic()
        # a bar on a terminal (one process: several ranks' bars would overwrite each other), else a
        # line every 30 s, so a long run (an encoder layer) says how far it is and how long is left
        bar = Progress(len(mine), skipped, bar=world == 1, every_seconds=PROGRESS_EVERY_SECONDS, main=True,
                       desc=f"targets assign[rank {rank}]", counts=CHUNKS, logger=log)
        try:
            for c in todo:
                chunk = chunks[c]
                labels: list[np.ndarray] = [np.zeros(0, np.int32)] * len(chunk)
                try:
                    for i, feats in utterance_features(source, chunk, batch_seconds):
                        labels[i] = nearest(feats, centroids)
                except AudioError as exc:  # labels must cover the manifest: no skipping here, but say what to do
                    raise AudioError(exc.path, f"{exc.reason}; every utterance of {manifest} needs labels: leave "
                                     "it out of the manifest (`speechssl prepare DIR --check-audio` drops "
                                     "unreadable files) and rerun; finished chunks are kept") from None
                _write_chunk(paths[c], [r["id"] for r in chunk], [int(r["num_samples"]) for r in chunk], labels)
                done += len(chunk)
                bar.set_postfix(labelled=f"{done} utterances")
                bar.advance(1)
        finally:
            bar.close()
        marker.write_text("done\n")
        log.info("rank %d: labelled %d utterances in %.1f s, %d chunks already done", rank, done,
                 time.monotonic() - t0, skipped)
        index = report = None
        if rank == 0:
            index = _merge_index(out, manifest, key, len(chunks), len(records), world, merge_timeout_minutes)
            from speechssl.targets.report import cluster_report

            report = cluster_report(out, manifest, report_labels)
        return AssignSummary(key, len(records), done, skipped, index, report)


def _merge_index(out: Path, manifest: str | Path, key: str, num_chunks: int, utterances: int, world: int,
                 timeout_min: float) -> Path:
    deadline = time.monotonic() + 60 * timeout_min
    markers = [out / f".{key}.rank{r}.done" for r in range(world)]
    while not all(m.is_file() for m in markers):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{out}: ranks did not finish in {timeout_min} minutes: missing "
                               f"{[m.name for m in markers if not m.is_file()]}")
        time.sleep(1.0)
    files = [f"chunks/{key}-{c:05d}.npz" for c in range(num_chunks)]
    missing = [f for f in files if not (out / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{out}: chunk files missing after every rank finished: {missing[:5]}")
    path = out / "index.json"
    index = json.loads(path.read_text()) if path.is_file() else {"format_version": FORMAT_VERSION, "manifests": {}}
    index.update({k: v for k, v in json.loads((out / "targets.json").read_text()).items() if k != "format_version"})
    index["manifests"][key] = {"path": str(Path(manifest).resolve()), "sha256": file_sha256(manifest),
                               "utterances": utterances, "chunks": files}
    atomic_write_json(path, index)
    for m in markers:
        m.unlink(missing_ok=True)
    return path
