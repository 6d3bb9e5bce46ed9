"""k-means targets (HuBERT iteration 1): fit + assign time for 1 h and 4 h of 39-dim MFCC-like frames.

Usage:
  .venv/bin/python tools/bench/run_all.py --only kmeans --out bench

* ``fit_assign(spec)``: for each length in ``hours`` (default 1 and 4), synthetic 39-dim frames at
  100 Hz (a mixture of ``sources`` Gaussian "phones" in 5-25-frame segments with a random walk of the
  mean, so neighbouring frames correlate as MFCC frames do; not real MFCCs, no audio is rendered),
  fitted with :func:`speechssl.targets.kmeans.minibatch_kmeans` (the estimator and settings of
  ``speechssl targets kmeans``: fairseq's MiniBatchKMeans, k-means++, batch 10,000, ``n_init`` 20)
  on every frame (``--sample-hours`` = the length), then every frame assigned with
  :func:`speechssl.targets.kmeans.nearest` in 100-s blocks (what ``speechssl targets assign`` calls per
  utterance). Records wall and CPU seconds and seconds per hour of audio; the ratio of the 4 h to
  the 1 h time is 4 for a linear cost. The fit is not: its 20 k-means++ initialisations run on a
  fixed 10,000-frame subsample and MiniBatchKMeans stops after 100 mini-batches without improvement,
  so its cost is bounded (sub-linear) in the corpus length; assignment is linear.
"""

from __future__ import annotations

import time

import numpy as np
import torch


def mfcc_like_frames(hours: float, dim: int = 39, sources: int = 60, seed: int = 0) -> np.ndarray:
    """``hours`` x 360,000 frames [N, dim] float32 (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n = int(round(hours * 3600 * 100))
    centres = rng.normal(0.0, 3.0, (sources, dim)).astype(np.float32)
    lengths = rng.integers(5, 26, n // 5 + 1)
    bounds = np.cumsum(lengths)
    segments = int(np.searchsorted(bounds, n)) + 1
    which = rng.integers(0, sources, segments)
    seg_of_frame = np.repeat(np.arange(segments), lengths[:segments])[:n]
    x = centres[which[seg_of_frame]]
    x += np.cumsum(rng.normal(0.0, 0.05, (n, dim)).astype(np.float32), axis=0) % 1.0  # slow drift
    x += rng.normal(0.0, 1.0, (n, dim)).astype(np.float32)
    return x


def fit_assign(spec: dict) -> dict:
    """spec: ``threads``, ``hours`` (list), ``k``, ``n_init``, ``seed``."""
    from speechssl.targets.kmeans import minibatch_kmeans, nearest

    torch.set_num_threads(spec["threads"])
    rows = {}
    for hours in spec["hours"]:
        x = mfcc_like_frames(hours, seed=spec.get("seed", 0))
        km = minibatch_kmeans(spec["k"], len(x), spec.get("seed", 0), n_init=spec["n_init"])
        t0, c0 = time.perf_counter(), time.process_time()
        km.fit(x)
        fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
        centroids = km.cluster_centers_.astype(np.float32)
        t0, c0 = time.perf_counter(), time.process_time()
        block = 100 * 100  # 100 s of 10 ms frames: an utterance-sized call
        labels = np.concatenate([nearest(x[i: i + block], centroids) for i in range(0, len(x), block)])
        assign_s, assign_cpu = time.perf_counter() - t0, time.process_time() - c0
        rows[f"{hours:g}h"] = {"hours": hours, "frames": len(x), "fit_s": round(fit_s, 4), "assign_s": round(assign_s, 4),
                               "fit_cpu_s": round(fit_cpu, 4), "assign_cpu_s": round(assign_cpu, 4),
                               "fit_s_per_hour": round(fit_s / hours, 2), "assign_s_per_hour": round(assign_s / hours, 2),
                               "minibatch_steps": int(km.n_steps_), "clusters_used": int(len(np.unique(labels)))}
        del x
    out = {"features": "synthetic 39-dim MFCC-like frames at 100 Hz (not real MFCCs)", "k": spec["k"],
           "n_init": spec["n_init"], "batch_size": 10000, "rows": rows}
    keys = list(rows)
    if len(keys) >= 2:
        first, last = rows[keys[0]], rows[keys[-1]]
        out["length_ratio"] = round(last["hours"] / first["hours"], 3)
        out["fit_time_ratio"] = round(last["fit_s"] / max(first["fit_s"], 1e-9), 3)
        out["assign_time_ratio"] = round(last["assign_s"] / max(first["assign_s"], 1e-9), 3)
        out["fit_cpu_ratio"] = round(last["fit_cpu_s"] / max(first["fit_cpu_s"], 1e-9), 3)
        out["assign_cpu_ratio"] = round(last["assign_cpu_s"] / max(first["assign_cpu_s"], 1e-9), 3)
    return out
