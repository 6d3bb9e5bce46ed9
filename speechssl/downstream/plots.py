"""PNG plots: confusion matrix, featurizer layer weights, label-efficiency curves, comparisons.

All files are written atomically; matplotlib runs headless (Agg).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from speechssl.utils import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_confusion_matrix(cm, labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix with counts; rows = reference, columns = predicted."""
    plt = _pyplot()
    cm = np.asarray(cm, dtype=np.float64)
    n = len(labels)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(4.0, 0.45 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of reference class")
    ax.set_xticks(range(n), labels=list(labels), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(labels))
    ax.set_xlabel("predicted label")
    ax.set_ylabel("reference label")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    colour = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", color=colour, fontsize=8)
    ax.set_title(title or "confusion matrix")
    return _save(fig, path)


def plot_layer_weights(weights: Mapping[str, float], path: str | Path, title: str = "") -> Path:
    """Bar chart of the featurizer's softmax layer weights, one bar per layer."""
    plt = _pyplot()
    names = list(weights)
    values = [weights[k] for k in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 3.5))
    ax.bar(range(len(names)), values, color="tab:blue")
    ax.axhline(1.0 / max(len(names), 1), color="grey", linestyle="--", linewidth=1, label="uniform")
    ax.set_xticks(range(len(names)), labels=names, rotation=45, ha="right")
    ax.set_xlabel("encoder layer")
    ax.set_ylabel("softmax weight")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "featurizer layer weights")
    return _save(fig, path)


def plot_label_efficiency(
    curves: Mapping[str, Mapping[int, Sequence[float]]], path: str | Path, metric: str = "accuracy", title: str = "",
    chance: float | None = None,
) -> Path:
    """``{encoder: {shots: [score per seed]}}`` -> mean ± std curve per encoder (log2 x axis);
    ``chance``: a dashed line at that score (1 / classes for accuracy)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
    for name, by_shot in curves.items():
        shots = sorted(by_shot)
        means = [float(np.mean(by_shot[s])) for s in shots]
        stds = [float(np.std(by_shot[s])) for s in shots]
        ax.errorbar(shots, means, yerr=stds, marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    all_shots = sorted({s for by_shot in curves.values() for s in by_shot})
    ax.set_xticks(all_shots, labels=[str(s) for s in all_shots])
    ax.set_xlabel("labelled utterances per class")
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "label efficiency (mean ± std over seeds)")
    return _save(fig, path)


def plot_comparison(
    rows: Sequence[tuple[str, Mapping[str, float]]], metrics: Sequence[str], path: str | Path, errors=None
) -> Path:
    """Grouped bars: one group per metric, one bar per experiment. ``errors``: same shape or None."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(metrics) + 2), 4))
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(metrics))
    for i, (name, values) in enumerate(rows):
        heights = [values.get(m, np.nan) for m in metrics]
        yerr = None
        if errors is not None and any(errors[i][1].get(m, 0.0) for m in metrics):
            yerr = [errors[i][1].get(m, 0.0) for m in metrics]
        ax.bar(x + i * width - 0.4 + width / 2, heights, width, yerr=yerr, capsize=3, label=name)
    ax.set_xticks(x, labels=list(metrics))
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("downstream comparison")
    return _save(fig, path)
