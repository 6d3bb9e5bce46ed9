"""Typed results of the downstream protocols, written as ``results.json``.

Each class lists the keys of its ``results.json`` in file order, so the schema is read here
rather than inferred from dict literals. ``to_dict()`` gives the JSON object; ``from_dict()``
reads one back (a resumed protocol reads finished runs). Results also keep dict-style read access
(``res["test"]["accuracy"]``, ``res.get("dev")``) so code written against ``results.json``
works on either.

* :class:`ExperimentResult` — one run (``run_experiment``; the selected run of a learning-rate
  sweep adds ``sweep``);
* :class:`KFoldResult` — ``run_kfold``;
* :class:`LabelEfficiencyRun` / :class:`LabelEfficiencyResult` — ``run_label_efficiency``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

RESULTS_FORMAT_VERSION = 1


class _Record(Mapping):
    """Dict-style read access over a dataclass's fields, in declared order; ``to_dict`` for JSON.
    Fields named in ``_OMIT_IF_NONE`` are left out of the dict (and of iteration) when None."""

    _OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ()

    def _keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)
                if not (f.name in self._OMIT_IF_NONE and getattr(self, f.name) is None)]

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def to_dict(self) -> dict:
        """The plain JSON object (nested records converted too)."""
        return {k: _plain(getattr(self, k)) for k in self._keys()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Read back what :meth:`to_dict` wrote; keys this version does not know are kept out."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _plain(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(kw_only=True, eq=True)
class ExperimentResult(_Record):
    """One downstream run: what was trained on what, and how it scored.

    Metrics (``dev``/``test``) are ``{"accuracy", "ua", "macro_f1", "num", "confusion_matrix", ...}``
    (see :func:`speechssl.downstream.metrics.classification_metrics`); ``summary`` is
    ``{metric: {"mean", "std", "n"}}`` of ``summary_split``."""

    _OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ("sweep",)

    format_version: int = RESULTS_FORMAT_VERSION
    task: dict  # {"label", "level": utterance | frame, "classes": [...]}
    encoder: dict  # the feature source's describe(): spec, options, layer_names, frame_shift, role, ...
    featurizer: dict  # featurizer config with the resolved "layers" and learned "weights" by layer
    head: dict
    protocol: dict
    hyperparameters: dict  # the whole resolved DownstreamConfig
    seeds: list[int]
    splits: dict  # {"hash", "sizes": {split: count}}
    best_step: int
    steps_run: int
    dev: dict | None
    test: dict | None
    summary: dict | None
    summary_split: str | None
    history: list
    speechssl_version: str
    git_revision: str | None
    seconds: float
    run_key: str | None
    sweep: list | None = None  # a learning-rate sweep's selected run: one entry per learning rate


@dataclasses.dataclass(kw_only=True, eq=True)
class KFoldResult(_Record):
    """Cross-validation: per-fold scores and their mean ± std (``summary``)."""

    format_version: int = RESULTS_FORMAT_VERSION
    task: dict
    encoder: dict
    featurizer: dict  # as in ExperimentResult, without the per-fold weights (those are in folds)
    head: dict
    protocol: dict
    hyperparameters: dict
    seeds: list[int]
    splits: dict
    folds: list[dict]  # {"fold", "test_groups", "test", "dev", "best_step", "layer_weights", "splits_hash"}
    summary: dict
    summary_split: str


@dataclasses.dataclass(kw_only=True, eq=True)
class LabelEfficiencyRun(_Record):
    """One (encoder, shots, seed) run of a label-efficiency protocol (a line of ``runs.jsonl``)."""

    encoder: str
    shots: int
    seed: int
    train_size: int
    train_hash: str
    test: dict  # test metrics without the confusion matrix
    layer_weights: dict


@dataclasses.dataclass(kw_only=True, eq=True)
class LabelEfficiencyResult(_Record):
    """Every run of a label-efficiency protocol and the curves they make (mean ± std over seeds)."""

    format_version: int = RESULTS_FORMAT_VERSION
    task: dict  # {"label"}
    encoders: dict  # name -> the source's describe()
    protocol: dict  # {"name": "label_efficiency", "shots", "metric"}
    hyperparameters: dict
    seeds: list[int]
    splits: dict  # {"hash", "sizes": {"pool", "dev", "test"}}
    curves: dict  # name -> {str(shots): {"mean", "std", "scores": [one per seed]}}
    runs: list[LabelEfficiencyRun]

    def table(self) -> str:
        """Markdown: one row per encoder, one column per shot count, ``mean ± std``."""
        shots = self.protocol["shots"]
        lines = ["| encoder | " + " | ".join(f"{n}/class" for n in shots) + " |", "|---|" + "---|" * len(shots)]
        for name, by_shot in self.curves.items():
            cells = [f"{by_shot[str(n)]['mean']:.3f} ± {by_shot[str(n)]['std']:.3f}" for n in shots]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
