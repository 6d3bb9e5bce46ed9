"""Training logs: ``metrics.jsonl`` (one JSON object per log step), TensorBoard events and a
loss-curve PNG. Only rank 0 creates a :class:`MetricsLogger`.

``metrics.jsonl`` lines::

    {"split": "train", "step": 10, "epoch": 0, "lr": 0.0001, "loss": 1.23, "l1": 1.23,
     "seconds_per_second": 412.5, "time": 3.2}
    {"split": "valid", "step": 100, "epoch": 1, "loss": 1.10, "l1": 1.10}
    {"split": "probe", "step": 100, "probe/speaker/context": 0.83, "health/context/eff_rank": 41.2, ...}

TensorBoard tags are ``<split>/<key>``, except keys that already hold a ``/`` (``probe/speaker/context``,
``grad_norm/encoder``, ``health/context/std_mean``): those are their own tags.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class MetricsLogger:
    """Appends to ``exp/metrics.jsonl`` and writes TensorBoard scalars to ``exp/tensorboard/``."""

    def __init__(self, exp_dir: str | Path, tensorboard: bool = True, purge_step: int | None = None):
        self.exp_dir = Path(exp_dir)
        self.path = self.exp_dir / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.exp_dir / "tensorboard"), purge_step=purge_step or None)

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines logged after the checkpoint's ``step`` (they will be redone)."""
        if not self.path.is_file():
            return
        kept = [json.dumps(r) for r in read_metrics(self.path) if r["step"] <= step]  # also drops cut lines
        from speechssl.utils import atomic_write_text

        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: (float(v) if isinstance(v, float) and math.isfinite(v) else v) for k, v in record.items()}
        for k, v in clean.items():
            if isinstance(v, float) and not math.isfinite(v):
                clean[k] = str(v)  # JSON has no NaN/Infinity
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.writer is not None:
            split = record.get("split", "train")
            for k, v in record.items():
                if k in ("split", "step", "epoch") or not isinstance(v, (int, float)) or isinstance(v, bool):
                    continue
                tag = k if "/" in k else f"{split}/{k}"
                self.writer.add_scalar(tag, v, global_step=int(record["step"]))
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a line that is not a JSON record with a ``step`` (cut
    short when a run was killed mid-write) is skipped with a warning naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            log.warning("%s line %d: not a metrics record (cut short by a killed run?), ignored: %.60s",
                        path, number, line)
            continue
        records.append(record)
    return records


def probe_curves(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{label: {layer: [(step, accuracy)]}}`` from the probe records of ``metrics.jsonl``."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for r in records:
        if r.get("split") != "probe":
            continue
        for k, v in r.items():
            parts = k.split("/")
            if len(parts) == 3 and parts[0] == "probe" and isinstance(v, (int, float)):
                curves.setdefault(parts[1], {}).setdefault(parts[2], []).append((int(r["step"]), float(v)))
    return curves


def plot_loss_curve(metrics_path: str | Path, out_png: str | Path) -> Path | None:
    """Train and valid loss against step (matplotlib Agg); with probe records, a second panel shows
    the probe accuracy per label (best layer and the last, context layer) against step.
    Returns the PNG path, or None if no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from speechssl.utils import atomic_path

    records = read_metrics(metrics_path)
    series = {}
    for split in ("train", "valid"):
        pts = [(r["step"], r["loss"]) for r in records if r.get("split") == split and isinstance(r.get("loss"), float)]
        if pts:
            series[split] = pts
    curves = probe_curves(records)
    if not series and not curves:
        return None
    fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(11 if curves else 6, 4), squeeze=False)
    ax = axes[0][0]
    for split, pts in series.items():
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o" if split == "valid" else None, markersize=3, label=split)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(Path(metrics_path).parent.name)
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    if curves:
        _plot_probe_panel(axes[0][1], curves, records)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out_png


def _plot_probe_panel(ax, curves: dict[str, dict[str, list[tuple[int, float]]]], records: list[dict]) -> None:
    """Per label: the layer with the best last accuracy (solid) and the last layer (dashed), plus chance."""
    colors = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7"]
    for i, (label, layers) in enumerate(curves.items()):
        color = colors[i % len(colors)]
        last_layer = list(layers)[-1]
        best = max(layers, key=lambda name: (layers[name][-1][1], name == last_layer))
        shown = [best] if best == last_layer else [best, last_layer]
        for name in shown:
            xs, ys = zip(*layers[name])
            ax.plot(xs, ys, color=color, marker="o", markersize=3, linestyle="-" if name == best else "--",
                    label=f"{label}: {name}" + (" (best)" if name == best else ""))
        chance = [r.get(f"probe_chance/{label}") for r in records if r.get("split") == "probe"]
        chance = [c for c in chance if isinstance(c, float)]
        if chance:
            ax.axhline(chance[-1], color=color, linestyle=":", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("probe accuracy (held out)")
    ax.set_ylim(0.0, 1.02)
    ax.set_title("live probe (dotted: chance)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def merge_train_windows(parts: list[dict[str, Any]], elapsed: float) -> dict[str, float]:
    """One train record from every rank's logging window (``loss``, ``metrics``, ``gn`` lists and
    ``seconds`` of audio): means over all ranks' steps, the grad norm of this rank's steps (equal on
    every rank after all-reduce) and audio seconds per wall second over ``elapsed``."""
    losses = [x for p in parts for x in p["loss"]]
    record = {"loss": sum(losses) / max(1, len(losses))}
    for k in parts[0]["metrics"]:
        vals = [x for p in parts for x in p["metrics"].get(k, [])]
        record[k] = sum(vals) / max(1, len(vals))
    gn = parts[0]["gn"]
    record["grad_norm"] = sum(gn) / max(1, len(gn))
    record["seconds_per_second"] = sum(p["seconds"] for p in parts) / elapsed
    return record
