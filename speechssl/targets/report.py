"""Cluster-quality report of a label folder on one manifest: usage, entropy, purity and PNMI.

Written by ``speechssl targets assign`` (rank 0) as ``report-<manifest>.json`` and ``.png``::

    {"utterances": 1900, "frames": 270000, "k": 100, "used_clusters": 100,
     "entropy_bits": 6.4, "perplexity": 84.1, "max_cluster_share": 0.04,
     "labels": {"speaker": {"classes": 16, "cluster_purity": 0.21, "label_purity": 0.08, "pnmi": 0.11}, ...}}

Every frame takes its utterance's label (speaker, style, word...). ``cluster_purity`` = frame share
of each cluster's majority label (HuBERT paper, section 4: "cluster purity"), ``label_purity`` = frame
share of each label's majority cluster ("phone purity"), ``pnmi`` = I(label; cluster) / H(label),
the share of the label's uncertainty the clusters remove (0: independent, 1: the clusters determine
the label). With utterance-level labels these measure how much speaker / word information the units
carry; frame-level phone labels would give the paper's numbers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from speechssl.data.manifest import RESERVED_FIELDS, read_manifest
from speechssl.utils import atomic_write_json, file_sha256

log = logging.getLogger(__name__)


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def label_agreement(clusters: np.ndarray, labels: np.ndarray, k: int) -> dict[str, float]:
    """clusters, labels: [frames] ints (labels already 0..C-1) -> purity and PNMI."""
    classes = int(labels.max()) + 1
    joint = np.zeros((k, classes))
    np.add.at(joint, (clusters, labels), 1.0)
    joint /= joint.sum()
    pc, pl = joint.sum(1), joint.sum(0)
    h_label = _entropy(pl)
    mutual = h_label + _entropy(pc) - _entropy(joint.ravel())
    return {"classes": classes, "cluster_purity": float(joint.max(1).sum()), "label_purity": float(joint.max(0).sum()),
            "pnmi": float(mutual / h_label) if h_label > 0 else 0.0}


def auto_label_fields(records: Sequence[dict]) -> list[str]:
    """String fields with 2..1000 distinct values that every record has (speaker, style, word...)."""
    fields = []
    for key in sorted(set(records[0]) - set(RESERVED_FIELDS) - {"text"}) if records else []:
        values = [r.get(key) for r in records]
        if all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values) and 2 <= len(set(values)) <= 1000:
            fields.append(key)
    return fields


def cluster_report(folder: str | Path, manifest: str | Path, label_fields: Sequence[str] | None = None,
                   png: bool = True) -> Path:
    """Write ``report-<manifest key>.json`` (+ ``.png``) in ``folder``; returns the JSON path.

    ``label_fields`` None: every field :func:`auto_label_fields` finds.
    """
    from speechssl.targets.labels import LabelFolder

    folder = Path(folder)
    labels = LabelFolder(folder)
    records = read_manifest(manifest)
    fields = auto_label_fields(records) if label_fields is None else list(label_fields)
    for field in fields:
        if any(field not in r for r in records):
            raise KeyError(f"{manifest}: --report-labels {field!r}: not every record has it")
    kept = [r for r in records if r["id"] in labels.labels and len(labels.labels[r["id"]])]
    if not kept:
        raise ValueError(f"{folder}: no labels for any utterance of {manifest}")
    clusters = np.concatenate([labels.labels[r["id"]] for r in kept]).astype(np.int64)
    counts = np.bincount(clusters, minlength=labels.k)
    p = counts / counts.sum()
    report: dict[str, Any] = {
        "folder": str(folder.resolve()), "manifest": str(Path(manifest).resolve()), "kmeans_hash": labels.hash,
        "features": labels.meta["features"].get("features"), "layer": labels.meta["features"].get("layer"),
        "frame_rate": 16000 / labels.frame_shift, "utterances": len(kept), "frames": int(counts.sum()),
        "k": labels.k, "used_clusters": int((counts > 0).sum()), "entropy_bits": _entropy(p) / np.log(2),
        "perplexity": float(np.exp(_entropy(p))), "max_cluster_share": float(p.max()),
        "cluster_counts": counts.tolist(), "labels": {},
    }
    for field in fields:
        names = sorted({str(r[field]) for r in kept})
        code = {n: i for i, n in enumerate(names)}
        per_frame = np.concatenate([np.full(len(labels.labels[r["id"]]), code[str(r[field])]) for r in kept])
        report["labels"][field] = label_agreement(clusters, per_frame, labels.k)
    if report["used_clusters"] < labels.k:
        log.warning("%s: %d of %d clusters never used on %s", folder, labels.k - report["used_clusters"], labels.k,
                    manifest)
    key = file_sha256(manifest, 12)
    path = folder / f"report-{key}.json"
    atomic_write_json(path, report)
    if png:
        _plot(report, folder / f"report-{key}.png")
    log.info("cluster report %s: %d/%d clusters used, entropy %.2f bits; %s", path, report["used_clusters"],
             labels.k, report["entropy_bits"],
             ", ".join(f"{f} purity {v['cluster_purity']:.3f} PNMI {v['pnmi']:.3f}" for f, v in report["labels"].items()))
    return path


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from speechssl.utils import atomic_path

    counts = np.array(report["cluster_counts"])
    order = np.argsort(-counts)
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.bar(np.arange(len(counts)), counts[order] / counts.sum(), width=1.0)
    ax.axhline(1.0 / len(counts), color="k", lw=0.8, ls="--", label="uniform")
    ax.set_xlabel("cluster (sorted by use)")
    ax.set_ylabel("share of frames")
    extra = "; ".join(f"{f}: purity {v['cluster_purity']:.2f}, PNMI {v['pnmi']:.2f}" for f, v in report["labels"].items())
    ax.set_title(f"k={report['k']}, {report['used_clusters']} used, entropy {report['entropy_bits']:.2f} bits\n{extra}",
                 fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def read_report(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
