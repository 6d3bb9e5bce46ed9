"""Is one encoder's margin over another more than seed-to-seed noise? A paired one-sided t-test.

In a label-efficiency result (:func:`speechssl.downstream.protocols.compute_label_efficiency`) every
encoder is trained, for a given seed, on the same labelled subset (``sample_per_class(pool, label,
n, seed)``) with the same head seed, and scored on the same test set. The per-seed scores of two
encoders are therefore pairs, and their differences cancel what both share (which utterances were
drawn). The verdict asks a one-sided question, "does the encoder score higher?", so the test is
``scipy.stats.ttest_rel(mine, other, alternative="greater")`` over the seeds, reported with the mean
of the paired differences and its standard error (std with ddof=1 over sqrt(pairs)).

Results without per-seed scores (written before ``curves.<enc>.<n>.scores`` existed), with one seed,
or whose runs were drawn on different subsets cannot be tested: the comparison keeps the difference
of the means and its significance is unknown (``p_value`` None).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_ALPHA = 0.05
TEST_NAME = "paired one-sided t-test over seeds (H1: the encoder scores higher)"
# Differences this close to constant are constant: float rounding of a-b must not decide the test.
_CONSTANT = 1e-12


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """An encoder vs another (``against``) on one task and label budget."""

    against: str
    mean_diff: float  # mean of the paired differences (encoder - against); difference of means if unpaired
    stderr: float | None  # standard error of mean_diff; None under two pairs
    n_pairs: int  # seeds paired; 0 when the scores could not be paired
    p_value: float | None  # one-sided; None = unknown
    significant: bool | None  # p_value < alpha; None = unknown
    unknown_because: str = ""  # why p_value is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def paired_scores(result: Mapping[str, Any], encoder: str, other: str, shots: int) -> tuple[list, list] | str:
    """The per-seed scores of ``encoder`` and ``other`` at ``shots`` in a label-efficiency
    ``result`` (a loaded results.json), in seed order, or why they cannot be paired.

    Scores pair by position (both lists follow ``result["seeds"]``); when the runs record the hash
    of their labelled subset (``train_hash``), pairs drawn on different subsets are refused."""
    curves = result.get("curves") or {}
    a = (curves.get(encoder) or {}).get(str(shots)) or {}
    b = (curves.get(other) or {}).get(str(shots)) or {}
    xs, ys = a.get("scores"), b.get("scores")
    if not xs or not ys:
        return "no per-seed scores in results.json"
    if len(xs) != len(ys):
        return f"{len(xs)} scores for {encoder} but {len(ys)} for {other}"
    hashes: dict[str, list] = {}
    for run in result.get("runs") or []:
        if isinstance(run, dict) and run.get("shots") == shots and run.get("encoder") in (encoder, other):
            hashes.setdefault(run["encoder"], []).append((run.get("seed"), run.get("train_hash")))
    if len(hashes) == 2 and hashes[encoder] != hashes[other]:
        return f"{encoder} and {other} were trained on different labelled subsets"
    return [float(x) for x in xs], [float(y) for y in ys]


def paired_test(mine: Sequence[float], other: Sequence[float], against: str,
                alpha: float = DEFAULT_ALPHA, two_sided: bool = False) -> PairedComparison:
    """One-sided paired t-test of ``mine`` > ``other`` (scores of the same seeds, in the same order);
    ``two_sided``: of ``mine`` != ``other`` (an ablation can move either way).

    Pairs with a non-finite score are dropped. With one pair the p-value is unknown. When every
    difference is the same, the t statistic is +-inf or 0/0: p = 0 for a constant positive
    difference (the limit of the test), 1 for a constant zero or negative one (nothing speaks for
    "higher"); scipy would return NaN with a warning. Two-sided: p = 0 for any constant non-zero
    difference.
    """
    if len(mine) != len(other):
        raise ValueError(f"paired scores need equal lengths, got {len(mine)} and {len(other)}")
    x, y = np.asarray(mine, dtype=float), np.asarray(other, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n == 0:
        return PairedComparison(against, math.nan, None, 0, None, None, "no finite scores")
    diff = x - y
    mean = float(diff.mean())
    if n == 1:
        return PairedComparison(against, mean, None, 1, None, None, "one seed")
    sd = float(diff.std(ddof=1))
    scale = max(1.0, float(np.abs(x).max()), float(np.abs(y).max()))
    if sd <= _CONSTANT * scale:
        p = 0.0 if (abs(mean) if two_sided else mean) > _CONSTANT * scale else 1.0
        return PairedComparison(against, mean, 0.0, n, p, p < alpha)
    from scipy.stats import ttest_rel

    p = float(ttest_rel(x, y, alternative="two-sided" if two_sided else "greater").pvalue)
    return PairedComparison(against, mean, sd / math.sqrt(n), n, p, p < alpha)


def compare(result: Mapping[str, Any], encoder: str, other: str, shots: int,
            alpha: float = DEFAULT_ALPHA) -> PairedComparison:
    """:func:`paired_test` of ``encoder`` vs ``other`` at ``shots``, or, when the scores cannot be
    paired (:func:`paired_scores`), the difference of their means with an unknown p-value."""
    pairs = paired_scores(result, encoder, other, shots)
    if isinstance(pairs, str):
        means = [result["curves"][e][str(shots)]["mean"] for e in (encoder, other)]
        return PairedComparison(other, float(means[0] - means[1]), None, 0, None, None, pairs)
    return paired_test(*pairs, against=other, alpha=alpha)


def format_p(p: float) -> str:
    """``p<0.001``, ``p=0.012``, ``p=0.48``."""
    if p < 0.001:
        return "p<0.001"
    return f"p={p:.3f}" if p < 0.1 else f"p={p:.2f}"


def mark(test: PairedComparison | None) -> str:
    """What follows a margin in the verdict: `` (p=0.48, within noise)`` for a positive margin that
    is not significant, `` (p=0.003)`` otherwise, nothing when the p-value is unknown."""
    if test is None or test.p_value is None:
        return ""
    noise = ", within noise" if test.mean_diff > 0 and not test.significant else ""
    return f" ({format_p(test.p_value)}{noise})"


def seeds_phrase(tests: Sequence[PairedComparison]) -> str:
    """``5 seeds`` (or ``3-5 seeds`` when tasks differ) over the tests with a p-value."""
    counts = sorted({t.n_pairs for t in tests if t.p_value is not None})
    if not counts:
        return "seeds"
    return f"{counts[0]} seeds" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} seeds"
