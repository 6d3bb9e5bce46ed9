"""CPC's InfoNCE: the gathered negatives against dense scores, side by side in one process.

Usage:
  .venv/bin/python tools/bench/run_all.py --only infonce --out bench

``run(spec)`` times, per shape ``[batch, frames, K, N, dim]``, the forward and backward of
``speechssl.modules.infonce.infonce`` on the same predictions, latents and negatives (drawn from the
whole batch) along its two paths, interleaved, median after warm-up:

* ``gathered``: each query's N negatives copied out of the latents (``index_select``), then ``bmm``;
* ``dense``: every query scored against every frame of the batch in one matmul, then each query's
  N scores picked (``gather``).

Each row records both times, their ratio, the largest difference of the loss and of the gradients
(the two paths compute the same sums in another order), and which path ``infonce`` takes for that
shape (``DENSE_SCORES_RATIO``), so a run on another CPU shows whether the rule still picks the faster.
"""

from __future__ import annotations

import time

import torch
from common import median

# the rule's choice "took the faster" when within this fraction of the faster path's time (measured
# 2026-11-29, AVX-512 AMD EPYC: N = 32 ran 29.3 vs 28.9 ms, the break-even shape the rule sits on)
TIE = 0.05


def _step(nce, dense: bool, pred: torch.Tensor, z: torch.Tensor, lengths: torch.Tensor, neg: torch.Tensor):
    """One forward + backward along the chosen path: (loss, grad of pred, grad of z)."""
    nce.DENSE_SCORES_RATIO, nce.DENSE_SCORES_MAX = (1 << 30, 1 << 62) if dense else (0, 0)
    pred.grad = z.grad = None
    out = nce.infonce(pred, z, lengths, neg)
    out.loss.backward()
    return out.loss.item(), pred.grad.clone(), z.grad.clone()


def run(spec: dict) -> dict:
    """spec: ``shapes`` ([B, T, K, N, D] lists), ``repeats``, ``threads``."""
    import speechssl.modules.infonce as nce

    torch.set_num_threads(spec["threads"])
    rule = nce.DENSE_SCORES_RATIO, nce.DENSE_SCORES_MAX
    rows = {}
    try:
        for batch, frames, steps, num_neg, dim in spec["shapes"]:
            nce.DENSE_SCORES_RATIO, nce.DENSE_SCORES_MAX = rule  # _step switches the path
            chosen = nce.dense_scores(batch, frames, steps, num_neg)
            gen = torch.Generator().manual_seed(0)
            args = (torch.randn(batch, frames, steps, dim, generator=gen, requires_grad=True),
                    torch.randn(batch, frames, dim, generator=gen, requires_grad=True),
                    torch.full((batch,), frames))
            args += (nce.sample_negatives(args[2], frames, num_neg, "batch", generator=gen),)
            times: dict[bool, list[float]] = {False: [], True: []}
            results = {}
            for _ in range(spec["repeats"]):  # interleaved: a change of load hits both paths alike
                for dense in (False, True):
                    results[dense] = _step(nce, dense, *args)  # warm-up, and the values compared
                    t0 = time.perf_counter()
                    _step(nce, dense, *args)
                    times[dense].append(time.perf_counter() - t0)
            (loss_g, pg, zg), (loss_d, pd, zd) = results[False], results[True]
            t_g, t_d = median(times[False]), median(times[True])
            rows[f"{batch}x{frames} K={steps} N={num_neg} D={dim}"] = {
                "gathered_ms": round(1e3 * t_g, 2), "dense_ms": round(1e3 * t_d, 2),
                "dense_speedup": round(t_g / t_d, 3), "frames_per_negative": batch * frames / num_neg,
                "rule_takes": "dense" if chosen else "gathered",
                # within TIE of the faster counts: at the break-even shape the two paths are a coin toss
                "rule_took_faster": (t_d if chosen else t_g) <= (1 + TIE) * min(t_d, t_g),
                "loss_abs_diff": abs(loss_g - loss_d),
                "grad_max_abs_diff": float(max((pg - pd).abs().max(), (zg - zd).abs().max())),
            }
    finally:
        nce.DENSE_SCORES_RATIO, nce.DENSE_SCORES_MAX = rule
    return {"rows": rows, "dense_scores_ratio": rule[0], "threads": spec["threads"]}
