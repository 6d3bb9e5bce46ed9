"""Downstream labels: class names <-> indices (:class:`LabelMap`, fixed by the training set) and
frame-level label sequences mapped onto encoder frames (:func:`frame_targets`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class LabelMap:
    """Class names <-> indices, fixed from the training set (sorted names)."""

    def __init__(self, labels: Sequence[str]):
        self.labels = [str(x) for x in labels]
        self.index = {name: i for i, name in enumerate(self.labels)}

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_records(cls, records: Sequence[dict], field: str, where: str = "train") -> LabelMap:
        values: set[str] = set()
        for rec in records:
            values.update(_label_values(rec, field, where))
        if len(values) < 2:
            raise ValueError(f"{where}: label {field!r} needs at least 2 classes, found {sorted(values)}")
        return cls(sorted(values))

    def check(self, records: Sequence[dict], field: str, where: str) -> None:
        """Raise naming every label of ``records`` that the training set did not have."""
        unseen: dict[str, list[str]] = {}
        for rec in records:
            for value in _label_values(rec, field, where):
                if value not in self.index:
                    unseen.setdefault(value, []).append(rec["id"])
        if unseen:
            detail = "; ".join(f"{k!r} ({len(v)} utt., e.g. {v[0]})" for k, v in sorted(unseen.items()))
            raise ValueError(
                f"{where}: label(s) of {field!r} unseen in train: {detail}. Train labels: {self.labels}"
            )

    def encode(self, rec: dict, field: str, where: str) -> int | list[int]:
        value = rec.get(field)
        if isinstance(value, (list, tuple)):
            return [self.index[str(v)] for v in value]
        return self.index[str(value)]


def _label_values(rec: dict, field: str, where: str) -> list[str]:
    if field not in rec or rec[field] is None:
        raise KeyError(f"{where}: utterance {rec.get('id')!r} has no label field {field!r}; fields: {sorted(rec)}")
    value = rec[field]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def frame_targets(labels: Sequence[int], num_frames: int, frame_shift: int, label_shift: int) -> torch.Tensor:
    """Map a frame-label sequence (one label every ``label_shift`` samples) to ``num_frames``
    encoder frames (one every ``frame_shift`` samples); frames past the labels get -100 (ignored)."""
    label_shift = label_shift or frame_shift
    idx = (torch.arange(num_frames) * frame_shift) // label_shift
    lab = torch.as_tensor(list(labels), dtype=torch.long)
    out = torch.full((num_frames,), -100, dtype=torch.long)
    ok = idx < lab.numel()
    out[ok] = lab[idx[ok]]
    return out
