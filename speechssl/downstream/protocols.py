"""Evaluation protocols built on :func:`run_experiment`, all sharing one feature cache:

* ``run_kfold``: k-fold cross-validation by a group field (IEMOCAP: session), mean ± std;
* ``run_lr_sweep``: one run per learning rate, the best on dev is kept and reported on test;
* ``run_label_efficiency``: n labelled utterances per class x several seeds x several encoders,
  same dev and test sets, one curve per encoder.

All three resume: rerun the same command after an interruption and the runs already finished
with the same encoder (files unchanged), splits, hyper-parameters and speechssl version are
read back instead of trained again (``resume=False`` / ``--restart`` trains everything).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from speechssl.config import to_dict
from speechssl.downstream.experiment import (
    finished_run,
    run_experiment,
    run_key,
    summarize,
)
from speechssl.downstream.model import DownstreamConfig
from speechssl.downstream.plots import plot_label_efficiency
from speechssl.downstream.results import (
    ExperimentResult,
    KFoldResult,
    LabelEfficiencyResult,
    LabelEfficiencyRun,
)
from speechssl.downstream.sources import FeatureSource, source_from_config
from speechssl.downstream.splits import (
    kfold_by_group,
    sample_per_class,
    splits_hash,
    stratified_split,
    warn_shared_audio,
)
from speechssl.downstream.training import reuse_pooled_inputs
from speechssl.utils import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)


def _with_seed(cfg: DownstreamConfig, seed: int) -> DownstreamConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))


def _with_lr(cfg: DownstreamConfig, lr: float) -> DownstreamConfig:
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=lr))


def carve_dev(records: Sequence[dict], label: str, fraction: float, seed: int = 0) -> tuple[list, list]:
    """Stratified (train, dev) split of ``records``; dev gets ``fraction`` of every class."""
    parts = stratified_split(records, label, {"train": 1.0 - fraction, "dev": fraction}, seed=seed)
    return parts["train"], parts["dev"]


def superb_splits(label: str, seed: int = 0, *, data: str | Path | None = None, train: str | Path | None = None,
                  valid: str | Path | None = None, test: str | Path | None = None, split_by: str | None = None,
                  fractions: Mapping[str, float] | None = None,
                  dev_fraction: float = 0.0) -> tuple[dict[str, list], dict]:
    """The splits of a SUPERB-style run and the protocol entry that records how they were made.

    Either ``data`` (one manifest split into ``fractions``: by ``split_by`` groups, e.g. speaker,
    or stratified by ``label``), or ``train`` (+ optional ``valid`` and ``test``) manifests; without
    ``valid``, ``dev_fraction`` > 0 carves a stratified dev set out of ``train``.

    Returns:
        (``{"train", "dev", "test"}`` record lists (dev/test may be empty), protocol dict)
    """
    from speechssl.data import read_manifest, split_records

    if data:
        if train or valid or test:
            raise ValueError("give either --data (to split) or --train/--valid/--test, not both")
        records = read_manifest(data)
        fractions = dict(fractions or {"train": 0.8, "dev": 0.1, "test": 0.1})
        if split_by:
            splits = split_records(records, fractions, group_by=split_by, seed=seed)
        else:
            splits = stratified_split(records, label, fractions, seed=seed)
        protocol = {"name": "superb", "split": {"from": str(Path(data).resolve()), "group_by": split_by,
                                                "fractions": fractions, "seed": seed}}
        return splits, protocol
    if not train:
        raise ValueError("--train (or --data) is required")
    splits = {"train": read_manifest(train), "dev": read_manifest(valid) if valid else [],
              "test": read_manifest(test) if test else []}
    if not valid and dev_fraction > 0:
        splits["train"], splits["dev"] = carve_dev(splits["train"], label, dev_fraction, seed)
    protocol = {"name": "superb", "manifests": {k: str(Path(v).resolve()) for k, v in
                                                (("train", train), ("dev", valid), ("test", test)) if v}}
    return splits, protocol


def run_superb(source: FeatureSource, splits: Mapping[str, Sequence[dict]], protocol: Mapping[str, Any], label: str,
               cfg: DownstreamConfig, exp_dir: str | Path, lrs: Sequence[float] | None = None,
               progress: bool = True, resume: bool = True) -> ExperimentResult:
    """One SUPERB-style run (:func:`run_experiment`), or a learning-rate sweep when ``lrs`` are
    given (:func:`run_lr_sweep`). Returns the results written to ``exp_dir/results.json``."""
    for name, recs in splits.items():
        logger.info("%s: %d utterances", name, len(recs))
    warn_shared_audio(splits)
    if lrs:
        return run_lr_sweep(source, splits, label, cfg, lrs, exp_dir, progress, resume=resume)
    results, _ = run_experiment(source, splits, label, cfg, exp_dir, protocol, progress)
    return results


def label_efficiency_splits(pool: Sequence[dict], label: str, dev: Sequence[dict] | None = None,
                            dev_per_class: int = 0) -> tuple[list, list]:
    """(pool, dev) of a label-efficiency protocol: ``dev`` when given; else ``dev_per_class``
    utterances per class taken out of the pool, the same for every encoder, shot count and seed
    (drawn with seed -1, which never trains); else no dev (the last step is kept)."""
    if dev:
        return list(pool), list(dev)
    if dev_per_class > 0:
        dev = sample_per_class(pool, label, dev_per_class, seed=-1)
        taken = {r["id"] for r in dev}
        return [r for r in pool if r["id"] not in taken], list(dev)
    return list(pool), []


def parse_encoder_list(text: str) -> dict[str, str]:
    """``"logmel,apc=exp/apc/encoder"`` -> ``{"logmel": "logmel", "apc": "exp/apc/encoder"}``
    (NAME=PATH names an encoder; a bare item is its own name). A repeated name is an error."""
    out: dict[str, str] = {}
    for item in (e.strip() for e in text.split(",") if e.strip()):
        name, _, path = item.partition("=") if "=" in item else (item, "", item)
        if not name or not path:
            raise ValueError(f"--encoders: expected NAME or NAME=PATH, got {item!r}")
        if name in out:
            raise ValueError(f"--encoders: {name!r} is given twice")
        out[name] = path
    return out


def run_kfold(source: FeatureSource, records: Sequence[dict], label: str, group_field: str, cfg: DownstreamConfig,
              exp_dir: str | Path, k: int | None = None, dev_fraction: float = 0.1, progress: bool = True,
              resume: bool = True) -> KFoldResult:
    """Fold i: test = the utterances of fold i's groups; dev = ``dev_fraction`` of the other folds
    (stratified by label); train = the rest. Each fold's artifacts go to ``exp_dir/fold_<i>``;
    a fold finished by an earlier identical run is read back (``resume``)."""
    exp = Path(exp_dir)
    folds = kfold_by_group(records, group_field, k)
    per_fold = []
    for i, fold in enumerate(folds, 1):
        train, dev = carve_dev(fold["train"], label, dev_fraction, seed=cfg.train.seed)
        splits = {"train": train, "dev": dev, "test": fold["test"]}
        protocol = {"name": "kfold", "fold": i, "k": len(folds), "group_field": group_field,
                    "test_groups": fold["test_groups"]}
        key = run_key(source, splits, cfg, protocol, label)
        res = finished_run(exp / f"fold_{i}", key) if resume else None
        if res is not None:
            logger.info("fold %d/%d: finished earlier, read back from %s", i, len(folds), exp / f"fold_{i}")
        else:
            logger.info("fold %d/%d: test groups %s (%d utt), train %d, dev %d",
                        i, len(folds), fold["test_groups"], len(fold["test"]), len(train), len(dev))
            res, _ = run_experiment(source, splits, label, cfg, exp / f"fold_{i}", protocol, progress, key)
        per_fold.append({"fold": i, "test_groups": fold["test_groups"], "test": _strip(res.test),
                         "dev": _strip(res.dev), "best_step": res.best_step, "layer_weights": res.featurizer["weights"],
                         "splits_hash": res.splits["hash"]})
    results = KFoldResult(
        task=res.task,
        encoder=res.encoder,
        featurizer={k: v for k, v in res.featurizer.items() if k != "weights"},
        head=dict(cfg.head),
        protocol={"name": "kfold", "k": len(folds), "group_field": group_field, "dev_fraction": dev_fraction},
        hyperparameters=to_dict(cfg),
        seeds=[cfg.train.seed],
        splits={"hash": splits_hash({f"fold_{i}": fold["test"] for i, fold in enumerate(folds, 1)}),
                "sizes": {f"fold_{i}": len(fold["test"]) for i, fold in enumerate(folds, 1)}},
        folds=per_fold,
        summary=summarize([f["test"] for f in per_fold]),
        summary_split="test",
    )
    atomic_write_json(exp / "results.json", results.to_dict())
    return results


def _strip(metrics: dict | None) -> dict | None:
    return None if metrics is None else {k: v for k, v in metrics.items() if k != "confusion_matrix"}


def run_lr_sweep(source: FeatureSource, splits: Mapping[str, Sequence[dict]], label: str, cfg: DownstreamConfig,
                 lrs: Sequence[float], exp_dir: str | Path, progress: bool = True,
                 resume: bool = True) -> ExperimentResult:
    """One run per learning rate in ``exp_dir/lr_<lr>``; the best by the dev metric is copied to
    ``exp_dir`` (model + plots) so ``predict --model exp_dir`` uses it. A learning rate finished
    by an earlier identical run is read back (``resume``)."""
    if not splits.get("dev"):
        raise ValueError("a learning-rate sweep needs a dev set (--valid, or --dev-fraction to carve one)")
    exp = Path(exp_dir)
    runs = []
    for lr in lrs:
        sub = exp / f"lr_{lr:g}"
        protocol = {"name": "lr_sweep", "lr": lr}
        key = run_key(source, splits, _with_lr(cfg, lr), protocol, label)
        res = finished_run(sub, key) if resume else None
        if res is not None:
            logger.info("lr %g: finished earlier, read back from %s", lr, sub)
        else:
            res, _ = run_experiment(source, splits, label, _with_lr(cfg, lr), sub, protocol, progress, key)
        runs.append({"lr": lr, "dir": sub.name, "dev": _strip(res.dev), "test": _strip(res.test),
                     "best_step": res.best_step})
        logger.info("lr %g: dev %s %.4f", lr, cfg.train.metric, res.dev[cfg.train.metric])
    best = max(runs, key=lambda r: r["dev"][cfg.train.metric])
    for name in ("model.json", "model.safetensors", "config.yaml", "confusion_matrix.png", "layer_weights.json",
                 "layer_weights.png", "predictions_test.tsv", "predictions_dev.tsv"):
        src = exp / best["dir"] / name
        if src.is_file():
            tmp = exp / f".{name}.tmp"
            shutil.copyfile(src, tmp)
            tmp.replace(exp / name)
    best_results = ExperimentResult.from_dict(json.loads((exp / best["dir"] / "results.json").read_text()))
    best_results.protocol = {"name": "lr_sweep", "lrs": list(lrs), "selected_lr": best["lr"],
                             "selection": f"dev {cfg.train.metric}"}
    best_results.sweep = runs
    atomic_write_json(exp / "results.json", best_results.to_dict())
    return best_results


def run_label_efficiency(
    sources: Mapping[str, FeatureSource],
    pool: Sequence[dict],
    dev: Sequence[dict] | None,
    test: Sequence[dict],
    label: str,
    cfg: DownstreamConfig,
    shots: Sequence[int],
    seeds: Sequence[int],
    out_dir: str | Path,
    **options: Any,
) -> LabelEfficiencyResult:
    """:func:`compute_label_efficiency` (``options``: its ``metric``, ``progress``, ``resume``) then
    :func:`write_label_efficiency`: ``out_dir/results.json``, ``label_efficiency.png`` and
    ``label_efficiency.md`` (and ``runs.jsonl``, written as runs finish)."""
    result = compute_label_efficiency(sources, pool, dev, test, label, cfg, shots, seeds, out_dir, **options)
    write_label_efficiency(result, out_dir, classes=len({str(r[label]) for r in test}))
    return result


def compute_label_efficiency(
    sources: Mapping[str, FeatureSource],
    pool: Sequence[dict],
    dev: Sequence[dict] | None,
    test: Sequence[dict],
    label: str,
    cfg: DownstreamConfig,
    shots: Sequence[int],
    seeds: Sequence[int],
    out_dir: str | Path,
    metric: str = "accuracy",
    progress: bool = True,
    resume: bool = True,
) -> LabelEfficiencyResult:
    """For every encoder, every n in ``shots`` and every seed: train on n utterances per class of
    ``pool`` (drawn with that seed), select on ``dev``, score ``test``.

    Each finished run is appended to ``out_dir/runs.jsonl`` at once; with ``resume`` a rerun
    reads back the runs recorded there with the same :func:`run_key` and trains only the rest.
    An encoder's cached features are dropped when its runs are done. Writes nothing else (see
    :func:`write_label_efficiency`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    journal = out / "runs.jsonl"
    done = _read_journal(journal) if resume else {}
    scores: dict[str, dict[int, list[float]]] = {}
    runs: list[LabelEfficiencyRun] = []
    reused = 0
    described: dict[str, dict] = {}
    for name, source in sources.items():
        scores[name] = {}
        with reuse_pooled_inputs():  # every shot and seed pools the same utterances: once
            for n in shots:
                for seed in seeds:
                    train = sample_per_class(pool, label, n, seed)
                    splits = {"train": train, "dev": list(dev or []), "test": test}
                    key = run_key(source, splits, _with_seed(cfg, seed), {"name": "label_efficiency"}, label)
                    entry = done.get((key, name)) if key is not None else None
                    if entry is not None:
                        run = LabelEfficiencyRun.from_dict(entry["run"])
                        described.setdefault(name, entry.get("source") or source.describe())
                        reused += 1
                    else:
                        res, _ = run_experiment(source, splits, label, _with_seed(cfg, seed), None,
                                                {"name": "label_efficiency"}, progress, key)
                        run = LabelEfficiencyRun(encoder=name, shots=n, seed=seed, train_size=len(train),
                                                 train_hash=res.splits["hash"], test=_strip(res.test),
                                                 layer_weights=res.featurizer["weights"])
                        described[name] = source.describe()
                        if key is not None:
                            _append_journal(journal, key, run.to_dict(), described[name])
                        logger.info("%s, %d/class, seed %d: test %s %.4f", name, n, seed, metric, run.test[metric])
                    scores[name].setdefault(n, []).append(run.test[metric])
                    runs.append(run)
        source.release()
    if reused:
        logger.info("label efficiency: %d of %d runs finished earlier, read back from %s", reused, len(runs), journal)
    return LabelEfficiencyResult(
        task={"label": label},
        encoders={name: described.get(name) or src.describe() for name, src in sources.items()},
        protocol={"name": "label_efficiency", "shots": list(shots), "metric": metric},
        hyperparameters=to_dict(cfg),
        seeds=list(seeds),
        splits={"hash": splits_hash({"pool": pool, "dev": list(dev or []), "test": test}),
                "sizes": {"pool": len(pool), "dev": len(dev or []), "test": len(test)}},
        curves={name: {str(n): {"mean": _mean(v), "std": _std(v), "scores": v} for n, v in by.items()}
                for name, by in scores.items()},
        runs=runs,
    )


def write_label_efficiency(result: LabelEfficiencyResult, out_dir: str | Path, classes: int) -> None:
    """Render a label-efficiency result into ``out_dir``: ``label_efficiency.png`` (one curve per
    encoder, a chance line at 1/``classes`` for accuracy and UA), ``label_efficiency.md`` (the
    table) and ``results.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metric = result.protocol["metric"]
    curves = {name: {int(n): c["scores"] for n, c in by.items()} for name, by in result.curves.items()}
    plot_label_efficiency(curves, out / "label_efficiency.png", metric=metric,
                          title=f"{result.task['label']}: label efficiency ({len(result.seeds)} seeds, "
                                f"{classes} classes)",
                          chance=1.0 / classes if metric in ("accuracy", "ua") else None)
    atomic_write_text(out / "label_efficiency.md", result.table())
    atomic_write_json(out / "results.json", result.to_dict())


def _read_journal(path: Path) -> dict[tuple[str, str], dict]:
    """(run key, encoder name) -> journal entry (``run``, ``source``) of a ``runs.jsonl``; a line cut
    short by an interruption is skipped."""
    done: dict[tuple[str, str], dict] = {}
    if not path.is_file():
        return done
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                done[(str(entry["run_key"]), str(entry["run"]["encoder"]))] = entry
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                logger.warning("%s line %d: not a finished run (cut short?), ignored", path, number)
    return done


def _append_journal(path: Path, key: str, run: dict, source: dict) -> None:
    """One line per finished run, flushed to disk before the next run starts."""
    with open(path, "ab") as f:
        if f.tell() > 0:  # after a line cut short by an interruption, start a new one
            with open(path, "rb") as g:
                g.seek(-1, os.SEEK_END)
                if g.read(1) != b"\n":
                    f.write(b"\n")
        f.write((json.dumps({"run_key": key, "run": run, "source": source}) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def _mean(v: Sequence[float]) -> float:
    return float(sum(v) / len(v))


def _std(v: Sequence[float]) -> float:
    m = _mean(v)
    return float((sum((x - m) ** 2 for x in v) / len(v)) ** 0.5)


# One call per `speechssl downstream` verb: manifests and encoder/feature paths in, results out.
# The CLI only parses arguments; tests and notebooks call these directly.


def superb(cfg: DownstreamConfig, exp_dir: str | Path, *, encoder: str | None = None,
           features: str | Path | None = None, data: str | Path | None = None, train: str | Path | None = None,
           valid: str | Path | None = None, test: str | Path | None = None, split_by: str | None = None,
           fractions: Mapping[str, float] | None = None, dev_fraction: float = 0.0,
           lrs: Sequence[float] | None = None, progress: bool = True, resume: bool = True,
           augment: Any = None, augment_copies: int = 1) -> ExperimentResult:
    """``speechssl downstream train``: the splits of :func:`superb_splits` (read and checked before
    any encoder is loaded), the source of :func:`~speechssl.downstream.sources.source_from_config`
    (``encoder`` and/or ``features``), then :func:`run_superb` into ``exp_dir``.

    ``augment`` (an :class:`~speechssl.augment.AugmentConfig`): the training split gains
    ``augment_copies`` waveform-augmented copies of each utterance (written to ``exp_dir/augmented``,
    :func:`speechssl.augment.offline.augment_records`); needs ``encoder`` (precomputed features do
    not cover the new audio)."""
    splits, protocol = superb_splits(cfg.task.label, cfg.train.seed, data=data, train=train, valid=valid, test=test,
                                     split_by=split_by, fractions=fractions, dev_fraction=dev_fraction)
    if augment is not None:
        from speechssl.augment.offline import augment_records

        if encoder is None:
            raise ValueError("--augment needs --encoder: precomputed --features do not cover the augmented audio")
        copies = augment_records(splits["train"], augment, Path(exp_dir) / "augmented", augment_copies, cfg.train.seed)
        splits = {**splits, "train": [*splits["train"], *copies]}
        protocol = {**protocol, "augment": {"copies": augment_copies, "utterances_added": len(copies)}}
    source = source_from_config(cfg, encoder, features, progress)
    return run_superb(source, splits, protocol, cfg.task.label, cfg, exp_dir, lrs, progress, resume=resume)


def kfold(cfg: DownstreamConfig, data: str | Path, group_field: str, exp_dir: str | Path, *,
          encoder: str | None = None, features: str | Path | None = None, k: int | None = None,
          dev_fraction: float = 0.1, progress: bool = True, resume: bool = True) -> KFoldResult:
    """``speechssl downstream kfold``: :func:`run_kfold` over the manifest ``data`` with the source
    of ``encoder`` and/or ``features``."""
    from speechssl.data import read_manifest

    records = read_manifest(data)
    source = source_from_config(cfg, encoder, features, progress)
    return run_kfold(source, records, cfg.task.label, group_field, cfg, exp_dir, k, dev_fraction, progress,
                     resume=resume)


def label_efficiency(cfg: DownstreamConfig, encoders: Mapping[str, str | Path], train: str | Path,
                     test: str | Path, out_dir: str | Path, *, valid: str | Path | None = None,
                     dev_per_class: int = 0, shots: Sequence[int] = (1, 2, 4, 8), seeds: Sequence[int] = (0, 1, 2),
                     metric: str = "accuracy", progress: bool = True, resume: bool = True) -> LabelEfficiencyResult:
    """``speechssl downstream label-efficiency``: :func:`run_label_efficiency` on the pool ``train``
    (dev: ``valid``, else ``dev_per_class`` taken out of the pool, :func:`label_efficiency_splits`)
    and ``test``, for every ``{name: encoder or feature folder}`` of ``encoders`` (see
    :func:`parse_encoder_list`); :func:`~speechssl.downstream.sources.open_source` tells the two apart."""
    from speechssl.data import read_manifest

    label = cfg.task.label
    pool, dev = label_efficiency_splits(read_manifest(train), label, read_manifest(valid) if valid else None,
                                        dev_per_class)
    test_records = read_manifest(test)
    warn_shared_audio({"train": pool, "dev": dev, "test": test_records})
    sources = {name: source_from_config(cfg, str(path), progress=progress) for name, path in encoders.items()}
    return run_label_efficiency(sources, pool, dev, test_records, label, cfg, shots, seeds, out_dir, metric=metric,
                                progress=progress, resume=resume)
