"""Deterministic train/dev/test splits and k folds, optionally grouped (e.g. by speaker).

Units (records, or groups of records sharing ``group_by``) are sorted by key, shuffled with
``random.Random(seed)`` and dealt one by one to the split furthest below its target share of
audio (in seconds). The result depends only on the set of records, the fractions and the seed,
not on the input order. With ``group_by`` no group value appears in two splits, which gives
speaker-independent evaluation.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from speechssl.data.manifest import group_records, record_duration


def parse_fractions(text: str) -> dict[str, float]:
    """Parse ``"train=0.8,dev=0.1,test=0.1"`` into a dict.

    Raises:
        ValueError: a part is not ``name=number``.
    """
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name or number is None:
            raise ValueError(
                f"bad fraction {part!r} in {text!r}: expected name=number, e.g. train=0.8,dev=0.1"
            )
        if name in out:
            raise ValueError(f"split {name!r} given twice in {text!r}")
        out[name] = number
    return out


def _check_fractions(fractions: Mapping[str, float]) -> None:
    if not fractions:
        raise ValueError("fractions is empty; give e.g. {'train': 0.8, 'dev': 0.1, 'test': 0.1}")
    bad = {k: v for k, v in fractions.items() if not v > 0}
    if bad:
        raise ValueError(f"fractions must be > 0, got {bad}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-3:
        raise ValueError(f"fractions must sum to 1, got {total:g} from {dict(fractions)}")


def _units(records: Sequence[Mapping[str, Any]], group_by: str | None) -> list[tuple[str, list]]:
    if group_by is None:
        units = [(str(r["id"]), [r]) for r in records]
    else:
        units = [(str(k), v) for k, v in group_records(records, group_by).items()]
    units.sort(key=lambda u: u[0])
    return units


def _deal(units: list[tuple[str, list]], targets: dict[str, float], seed: int) -> dict[str, list]:
    """Give each unit (in seeded random order) to the bin with the largest unmet share."""
    order = list(units)
    random.Random(seed).shuffle(order)
    total = sum(record_duration(r) for _, recs in order for r in recs) or 1.0
    filled = {name: 0.0 for name in targets}
    bins: dict[str, list] = {name: [] for name in targets}
    for unit in order:
        seconds = sum(record_duration(r) for r in unit[1])
        name = max(targets, key=lambda n: targets[n] * total - filled[n])
        bins[name].append(unit)
        filled[name] += seconds
    # Every bin gets at least one unit when there are enough: move the smallest unit of the
    # bin with the most units into an empty one.
    for name in targets:
        if not bins[name]:
            donor = max(bins, key=lambda n: len(bins[n]))
            if len(bins[donor]) < 2:
                break
            smallest = min(bins[donor], key=lambda u: (len(u[1]), u[0]))
            bins[donor].remove(smallest)
            bins[name].append(smallest)
    return bins


def split_records(
    records: Sequence[Mapping[str, Any]],
    fractions: Mapping[str, float],
    group_by: str | None = None,
    seed: int = 0,
) -> dict[str, list]:
    """Split records into named parts by share of audio duration.

    Args:
        records: manifest records.
        fractions: e.g. ``{"train": 0.8, "dev": 0.1, "test": 0.1}`` (each > 0, sum 1).
        group_by: a label field (e.g. ``"speaker"``) whose values never straddle two parts.
        seed: changes which units go where; same seed, same split.
    Returns:
        ``{name: [records]}`` in the order of ``fractions``; records keep their input order.
    Raises:
        ValueError: bad fractions, or fewer records/groups than parts.
        KeyError: a record lacks ``group_by``.
    """
    _check_fractions(fractions)
    units = _units(records, group_by)
    if len(units) < len(fractions):
        what = f"{group_by} values" if group_by else "records"
        raise ValueError(f"cannot split {len(units)} {what} into {len(fractions)} parts {list(fractions)}")
    bins = _deal(units, dict(fractions), seed)
    position = {id(r): i for i, r in enumerate(records)}
    return {
        name: sorted((r for _, recs in bins[name] for r in recs), key=lambda r: position[id(r)])
        for name in fractions
    }


def kfold_records(
    records: Sequence[Mapping[str, Any]], k: int, group_by: str | None = None, seed: int = 0
) -> list[tuple[list, list]]:
    """``k`` folds of (train, test) record lists; each record is in exactly one test fold.

    With ``group_by`` a group's records are all in the same fold (speaker-independent k-fold,
    e.g. leave-one-session-out style for IEMOCAP with ``group_by="session"`` and k=5).

    Raises:
        ValueError: k < 2 or fewer units than folds.
    """
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    units = _units(records, group_by)
    if len(units) < k:
        what = f"{group_by} values" if group_by else "records"
        raise ValueError(f"cannot make {k} folds from {len(units)} {what}")
    names = [f"fold{i}" for i in range(k)]
    bins = _deal(units, {n: 1.0 / k for n in names}, seed)
    position = {id(r): i for i, r in enumerate(records)}
    folds = []
    for name in names:
        test_ids = {id(r) for _, recs in bins[name] for r in recs}
        test = sorted((r for r in records if id(r) in test_ids), key=lambda r: position[id(r)])
        train = [r for r in records if id(r) not in test_ids]
        folds.append((train, test))
    return folds


def split_manifest(manifest: str | Path, out_dir: str | Path, fractions: Mapping[str, float],
                   group_by: str | None = None, seed: int = 0) -> dict[str, tuple[Path, list]]:
    """:func:`split_records` of a manifest file, each part written to ``out_dir/<name>.jsonl``
    (atomically). Returns ``{name: (path, records)}``."""
    from speechssl.data.manifest import read_manifest, write_manifest

    parts = split_records(read_manifest(manifest), fractions, group_by=group_by, seed=seed)
    return {name: (write_manifest(part, Path(out_dir) / f"{name}.jsonl"), part) for name, part in parts.items()}
