"""K-means on a bounded random sample of frames: the cluster model behind HuBERT's targets.

The library call behind ``speechssl targets kmeans``::

    fit_kmeans("mfcc", None, "data/train.jsonl", "exp/km_mfcc", k=100, sample_hours=1.0)
    fit_kmeans("exp/hubert_it1/encoder", "layer_6", "data/train.jsonl", "exp/km_it2", k=500)

Why scikit-learn ``MiniBatchKMeans`` (and not faiss-cpu): it is what fairseq's
``examples/hubert/simple_kmeans/learn_kmeans.py`` uses with exactly these settings (k-means++ init,
``batch_size 10000``, ``n_init 20``, ``max_no_improvement 100``, ``reassignment_ratio 0``, ``tol 0``,
``init_size`` = the greater of 3 k and the batch size), so results compare with published HuBERT
targets; it is already a dependency, pure CPU, and deterministic for a seed; faiss would be faster on
millions of frames but adds a compiled wheel and its k-means differs in initialisation. Memory is
bounded by the sample, never by the corpus: whole utterances are drawn in a seeded random order until
``sample_hours`` of audio is reached (fairseq samples a percentage of utterances the same way), so the
frames of at most that many hours are ever held.

Output folder: ``centroids.npy`` ([k, dim] float32, loadable without pickle) and ``kmeans.json``
(format version, ``k``, ``hash``, the features' provenance, the training manifest's SHA-256, the sample
drawn, inertia). ``hash`` = SHA-256 of the centroids and the feature provenance (16 hex digits): every
label file carries it, so labels from another k-means are refused instead of silently mixed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from speechssl.data.manifest import read_manifest, record_duration
from speechssl.progress import AUDIO_SECONDS, PROGRESS_EVERY_SECONDS, Progress
from speechssl.targets.features import open_features, utterance_features
from speechssl.utils import atomic_path, atomic_write_json, file_sha256

log = logging.getLogger(__name__)

FORMAT_VERSION = 1




def kmeans_hash(centroids: np.ndarray, provenance: dict) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(centroids, dtype=np.float32).tobytes())
    digest.update(json.dumps(provenance, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def sample_records(records: list[dict], hours: float, seed: int) -> list[dict]:
    """Whole utterances in a seeded random order until ``hours`` of audio (all if the corpus is smaller)."""
    order = np.random.default_rng(seed).permutation(len(records))
    out, seconds = [], 0.0
    for i in order:
        if seconds >= hours * 3600:
            break
        out.append(records[int(i)])
        seconds += record_duration(records[int(i)])
    return out


def minibatch_kmeans(k: int, frames: int, seed: int = 0, batch_size: int = 10000, max_iter: int = 100,
                     n_init: int = 20):
    """The scikit-learn ``MiniBatchKMeans`` of :func:`fit_kmeans` (fairseq's settings) for ``frames`` frames."""
    from sklearn.cluster import MiniBatchKMeans

    return MiniBatchKMeans(n_clusters=k, init="k-means++", max_iter=max_iter, batch_size=batch_size, tol=0.0,
                           max_no_improvement=100, n_init=n_init, reassignment_ratio=0.0,
                           init_size=min(frames, max(3 * k, batch_size)), random_state=seed)


def fit_kmeans(features: str, layer: str | None, manifest: str | Path, out: str | Path, k: int = 100,
               sample_hours: float = 1.0, seed: int = 0, batch_size: int = 10000, max_iter: int = 100,
               n_init: int = 20, batch_seconds: float = 60.0, device: str = "cpu") -> dict[str, Any]:
    """Fit k-means on frames of ``features``/``layer`` from a random ``sample_hours`` of ``manifest``.

    Returns the ``kmeans.json`` contents. Raises ValueError for k < 2 or fewer sampled frames than k.
    """
    if k < 2:
        raise ValueError(f"--k must be >= 2, got {k}")
    if sample_hours <= 0:
        raise ValueError(f"--sample-hours must be > 0, got {sample_hours}")
    out = Path(out)
    records = read_manifest(manifest)
    source = open_features(features, layer, device)
    sample = sample_records(records, sample_hours, seed)
    t0 = time.monotonic()
    unreadable: list[tuple[str, str]] = []  # a bad file in the sample is left out, not fatal
    feats = []
    # an encoder layer on hours of audio: a bar on a terminal, else a line every 30 s
    bar = Progress(sum(map(record_duration, sample)), 0.0, bar=True, every_seconds=PROGRESS_EVERY_SECONDS,
                   main=True, desc="kmeans (encoding the sample)", counts=AUDIO_SECONDS, logger=log)
    try:
        for i, f in utterance_features(source, sample, batch_seconds, unreadable):
            if len(f):
                feats.append(f)
            bar.advance(record_duration(sample[i]))
    finally:
        bar.close()
    for uid, reason in unreadable:
        log.warning("kmeans: skipping %s: %s", uid, reason)
    x = np.concatenate(feats) if feats else np.zeros((0, 1), np.float32)
    if len(x) < k:
        raise ValueError(f"{manifest}: {len(x)} frames in the {len(sample)} sampled utterances, fewer than k={k}; "
                         "raise --sample-hours or lower --k")
    log.info("kmeans: %d frames of dim %d from %d utterances (%.2f h%s) in %.1f s; fitting k=%d", len(x), x.shape[1],
             len(sample) - len(unreadable), sum(map(record_duration, sample)) / 3600,
             f", {len(unreadable)} unreadable left out" if unreadable else "", time.monotonic() - t0, k)
    km = minibatch_kmeans(k, len(x), seed, batch_size, max_iter, n_init)
    km.fit(x)
    centroids = km.cluster_centers_.astype(np.float32)
    inertia = float(-km.score(x) / len(x))
    meta = {
        "format_version": FORMAT_VERSION,
        "k": int(k),
        "dim": int(x.shape[1]),
        "hash": kmeans_hash(centroids, source.provenance),
        "features": source.provenance,
        "train_manifest": {"path": str(Path(manifest).resolve()), "sha256": file_sha256(manifest)},
        "sample": {"hours_requested": sample_hours, "utterances": len(sample), "frames": int(len(x)),
                   "seed": seed, "hours": sum(map(record_duration, sample)) / 3600,
                   "unreadable": [uid for uid, _ in unreadable]},
        "mean_squared_distance": inertia,
        "fit_seconds": round(time.monotonic() - t0, 2),
        "sklearn": {"n_init": n_init, "batch_size": batch_size, "max_iter": max_iter},
    }
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "centroids.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, centroids)
    atomic_write_json(out / "kmeans.json", meta)
    log.info("kmeans: wrote %s (hash %s, mean squared distance %.4g)", out, meta["hash"], inertia)
    return meta


def load_kmeans(folder: str | Path) -> tuple[dict[str, Any], np.ndarray]:
    """(kmeans.json contents, centroids [k, dim]); errors name the folder and what is wrong."""
    folder = Path(folder)
    meta_path, cent_path = folder / "kmeans.json", folder / "centroids.npy"
    if not meta_path.is_file() or not cent_path.is_file():
        raise FileNotFoundError(f"{folder}: not a k-means folder (needs kmeans.json and centroids.npy from "
                                "`speechssl targets kmeans`)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    try:
        centroids = np.load(cent_path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{cent_path}: unreadable ({exc}); re-fit with `speechssl targets kmeans`") from None
    if centroids.shape != (meta["k"], meta["dim"]):
        raise ValueError(f"{cent_path}: shape {centroids.shape}, kmeans.json says k={meta['k']}, dim={meta['dim']}")
    if kmeans_hash(centroids, meta["features"]) != meta["hash"]:
        raise ValueError(f"{folder}: centroids.npy does not match the hash in kmeans.json ({meta['hash']}); "
                         "the folder was modified: re-fit with `speechssl targets kmeans`")
    return meta, centroids


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (squared Euclidean) of every row of ``x`` [N, dim] -> [N] int32."""
    import torch

    if len(x) == 0:
        return np.zeros(0, dtype=np.int32)
    xt, ct = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(centroids)
    dist = (ct * ct).sum(1)[None, :] - 2.0 * (xt @ ct.T)  # ||x||^2 is the same for every centroid
    return dist.argmin(1).numpy().astype(np.int32)
