"""Evaluation splits: stratified splits, k-fold by group (one fold per group by default), n-per-class
sampling for label-efficiency curves, and a hash that identifies a split.

All functions are deterministic for a given seed and never depend on input order (records are
sorted by id first). Group-independent (speaker-independent) train/dev/test splits come from
:func:`speechssl.data.split_records` with ``group_by``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)


def _by_id(records: Sequence[dict]) -> list[dict]:
    return sorted(records, key=lambda r: str(r["id"]))


def _field(rec: dict, field: str, what: str) -> str:
    if field not in rec or rec[field] is None:
        raise KeyError(f"{what}: utterance {rec.get('id')!r} has no field {field!r}; fields: {sorted(rec)}")
    return str(rec[field])


def splits_hash(splits: Mapping[str, Sequence[dict]]) -> str:
    """sha256 (16 hex digits) of the sorted utterance ids of every named split."""
    ids = {name: sorted(str(r["id"]) for r in recs) for name, recs in sorted(splits.items())}
    return hashlib.sha256(json.dumps(ids, sort_keys=True).encode()).hexdigest()[:16]


def warn_shared_audio(splits: Mapping[str, Sequence[dict]], scored: Sequence[str] = ("dev", "test"),
                      fitted: str = "train") -> dict[str, int]:
    """Warn when utterances of a ``scored`` split are also in the ``fitted`` split (the same audio:
    path and segment, whatever their ids), since their score is then not held-out. Returns
    ``{split: number shared}`` for the splits that share any."""
    def audio(rec: dict) -> tuple:
        return (str(rec.get("path")), rec.get("start"), rec.get("duration"))

    seen = {audio(r) for r in splits.get(fitted) or ()}
    shared = {}
    for name in scored:
        ids = [str(r["id"]) for r in splits.get(name) or () if audio(r) in seen]
        if ids:
            shared[name] = len(ids)
            logger.warning("%d of the %d %s utterances are also in %s (same audio), e.g. %s: their scores are "
                           "not held-out", len(ids), len(splits[name]), name, fitted, ids[:3])
    return shared


def group_by(records: Sequence[dict], field: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for rec in _by_id(records):
        out.setdefault(_field(rec, field, "group_by"), []).append(rec)
    return out


def stratified_split(
    records: Sequence[dict], label: str, fractions: Mapping[str, float], seed: int = 0
) -> dict[str, list[dict]]:
    """Split every class in the given proportions (e.g. ``{"train": .8, "dev": .1, "test": .1}``).

    Each class keeps at least one utterance in the first split; later splits get
    ``round(fraction * n)`` utterances of the class, so every split sees the same classes when
    classes are large enough.
    """
    names = list(fractions)
    total = sum(fractions.values())
    if total <= 0:
        raise ValueError(f"split fractions must be positive, got {dict(fractions)}")
    out: dict[str, list[dict]] = {name: [] for name in names}
    for cls, recs in sorted(group_by(records, label).items()):
        rng = random.Random(f"{seed}:{cls}")
        recs = list(recs)
        rng.shuffle(recs)
        n = len(recs)
        counts = [int(round(fractions[nm] / total * n)) for nm in names[1:]]
        while sum(counts) > n - 1 and any(counts):
            counts[counts.index(max(counts))] -= 1
        first = n - sum(counts)
        out[names[0]] += recs[:first]
        start = first
        for nm, c in zip(names[1:], counts):
            out[nm] += recs[start : start + c]
            start += c
    return out


def kfold_by_group(records: Sequence[dict], group_field: str, k: int | None = None) -> list[dict[str, list[dict]]]:
    """k folds over groups: fold i tests on its groups and trains on all the others.

    With ``k`` None (or equal to the number of groups) each group is one fold (IEMOCAP: Session k
    held out). Otherwise groups (sorted) are dealt round-robin into ``k`` folds. No group ever
    appears in both the train and test part of a fold. Returns ``[{"train": [...], "test": [...]}]``.
    """
    groups = group_by(records, group_field)
    keys = sorted(groups)
    k = len(keys) if k is None else int(k)
    if k < 2 or k > len(keys):
        raise ValueError(f"k-fold by {group_field!r}: k={k} needs 2 <= k <= number of groups ({len(keys)}: {keys[:10]})")
    fold_groups = [keys[i::k] for i in range(k)]
    folds = []
    for held in fold_groups:
        test = [r for g in held for r in groups[g]]
        train = [r for g in keys if g not in held for r in groups[g]]
        folds.append({"train": train, "test": test, "test_groups": held})
    return folds


def sample_per_class(records: Sequence[dict], label: str, n: int, seed: int) -> list[dict]:
    """``n`` utterances of every class, drawn without replacement with ``seed``.

    Deterministic for (records, n, seed) whatever the input order; a class with fewer than ``n``
    utterances contributes all it has (logged). Samples for a larger ``n`` do not contain those
    for a smaller one (independent draws).
    """
    if n < 1:
        raise ValueError(f"shots must be >= 1, got {n}")
    out: list[dict] = []
    short = []
    for cls, recs in sorted(group_by(records, label).items()):
        rng = random.Random(f"{seed}:{cls}")
        if len(recs) < n:
            short.append(cls)
        if len(recs) <= n:
            out += recs
        else:
            out += rng.sample(recs, n)
    if short:
        logger.warning("%d class(es) have fewer than %d utterances and contribute all: %s", len(short), n, short[:10])
    return out
