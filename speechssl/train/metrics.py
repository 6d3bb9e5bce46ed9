"""Training logs: ``metrics.jsonl`` (one JSON object per log step), TensorBoard events and a
loss-curve PNG. Only rank 0 creates a :class:`MetricsLogger`.

``metrics.jsonl`` lines::

    {"split": "train", "step": 10, "epoch": 0, "lr": 0.0001, "loss": 1.23, "l1": 1.23,
     "seconds_per_second": 412.5, "time": 3.2}
    {"split": "valid", "step": 100, "epoch": 1, "loss": 1.10, "l1": 1.10}
"""

from __future__ import annotations

import json
import logging
import math
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
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
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
                self.writer.add_scalar(f"{split}/{k}", v, global_step=int(record["step"]))
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curve(metrics_path: str | Path, out_png: str | Path) -> Path | None:
    """Train and valid loss against step (matplotlib Agg). Returns the PNG path, or None if no data."""
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
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for split, pts in series.items():
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o" if split == "valid" else None, markersize=3, label=split)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(Path(metrics_path).parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out_png
