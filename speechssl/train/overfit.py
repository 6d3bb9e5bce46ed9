"""Can this recipe fit one batch? ``speechssl pretrain ... --overfit-one-batch STEPS``.

The first check when a loss is stuck or NaN (fairseq #3661, #3718, #4948): train the recipe's own
model, optimiser, precision and targets (the :class:`~speechssl.train.trainer.Trainer`'s, built the
same way) on one fixed batch, at the recipe's peak learning rate held constant, with no warm-up.
A model, objective and data pipeline that work drive that loss down; one that cannot fit a single
batch has a bug or a learning rate far off, and no long run will fix it.

Writes ``EXP/overfit_one_batch/{overfit.json, overfit.png}`` (and the Trainer's own
``config.yaml``), never checkpoints, so the experiment folder's real run is not touched. The
verdict: the last loss (mean of the last tenth of the steps) at most ``fit_ratio`` (0.5) of the
first; the two are not comparable for objectives whose loss can be negative, which is said.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

from speechssl.progress import Progress
from speechssl.train.batches import micro_batch_stream
from speechssl.train.config import PretrainConfig
from speechssl.utils import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

FOLDER = "overfit_one_batch"


def overfit_one_batch(cfg: PretrainConfig, train_manifest: str | Path, exp_dir: str | Path, steps: int = 200,
                      fit_ratio: float = 0.5, progress: bool = True) -> dict[str, Any]:
    """Train ``steps`` optimiser steps on the first batch of ``train_manifest`` (see the module
    docstring); returns the verdict also written to ``EXP/overfit_one_batch/overfit.json``.

    Raises:
        ValueError: ``steps`` < 2 or ``fit_ratio`` outside (0, 1); the Trainer's own errors (bad
            config, unreadable manifest) as :func:`speechssl.train.trainer.pretrain` raises them.
    """
    from speechssl.train.trainer import Trainer

    if steps < 2:
        raise ValueError(f"--overfit-one-batch needs at least 2 steps, got {steps}")
    if not 0.0 < fit_ratio < 1.0:
        raise ValueError(f"fit_ratio must be in (0, 1), got {fit_ratio}")
    # a copy with two sections changed: dataclasses.replace would resolve the model's name again from its
    # config class, which fails for a class registered under several names
    cfg = copy.copy(cfg)
    cfg.optim = dataclasses.replace(cfg.optim, schedule="constant", warmup_steps=0)
    cfg.train = dataclasses.replace(cfg.train, max_steps=steps)
    out = Path(exp_dir) / FOLDER
    trainer = Trainer(cfg, train_manifest, None, out)
    try:
        stream = micro_batch_stream(trainer.train_loader, trainer.min_samples)
        micro = [next(stream) for _ in range(trainer.accumulation)]  # one effective batch, reused every step
        errors = [b["error"] for b in micro if "error" in b]
        if errors:
            raise ValueError(f"{train_manifest}: the first batch does not load: {errors[0]}")
        ids = [i for b in micro for i in b["ids"]]
        bar = Progress(steps, 0, progress, 10.0, trainer.dist.is_main, desc="overfit one batch", logger=log)
        losses: list[float | None] = []
        for step in range(1, steps + 1):
            res = trainer.train_step(micro)
            loss = sum(res["losses"]) / len(res["losses"]) if res.get("losses") else None
            losses.append(loss)
            if loss is not None:
                bar.set_postfix(loss=f"{loss:.4g}")
            bar.update(step)
        bar.close()
    finally:
        trainer.close()
    verdict = _verdict(losses, fit_ratio)
    result = {"model": cfg.model_name, "steps": steps, "lr": cfg.optim.lr, "batch_ids": ids,
              "batch_seconds": sum(float(b["lengths"].sum()) / 16000.0 for b in micro),
              "losses": losses, **verdict}
    atomic_write_json(out / "overfit.json", result)
    _plot(losses, out / "overfit.png", f"{cfg.model_name}: one batch, lr {cfg.optim.lr:g}")
    return result


def _verdict(losses: list[float | None], fit_ratio: float) -> dict[str, Any]:
    finite = [x for x in losses if x is not None and x == x and abs(x) != float("inf")]
    skipped = len(losses) - len(finite)
    if len(finite) < 2:
        return {"fits": False, "first": None, "last": None, "skipped_steps": skipped,
                "message": f"{skipped} of {len(losses)} steps gave no finite loss: look at the data and optim.lr"}
    tail = finite[-max(1, len(finite) // 10):]
    first, last = finite[0], sum(tail) / len(tail)
    if first <= 0:
        return {"fits": None, "first": first, "last": last, "skipped_steps": skipped,
                "message": f"loss {first:.4g} -> {last:.4g}: this objective's loss is not positive, so the "
                           "ratio says nothing; look at the curve (overfit.png)"}
    fits = last <= fit_ratio * first
    advice = ("the model, objective and data can fit a batch" if fits else
              f"the loss did not fall below {fit_ratio:g} x its first value: try another optim.lr, more steps, "
              "or look for a bug in the data or the model")
    return {"fits": fits, "first": first, "last": last, "ratio": last / first, "skipped_steps": skipped,
            "message": f"loss {first:.4g} -> {last:.4g} ({last / first:.2f} x): {advice}"
                       + (f"; {skipped} steps skipped (non-finite)" if skipped else "")}


def _plot(losses: list[float | None], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(losses) + 1), [float("nan") if x is None else x for x in losses])
    ax.set_xlabel("step (the same batch every step)")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
