"""One downstream experiment: features -> labels -> train -> evaluate -> artifacts.

``run_experiment`` trains a head on the ``train`` split with early stopping on ``dev`` and scores
``test``; with an experiment folder it writes::

    exp/model.json, exp/model.safetensors     the downstream model (reload with predict)
    exp/results.json                           metrics, encoder, layers + weights, protocol, config, seeds, split hash
    exp/config.yaml                            the resolved downstream config
    exp/confusion_matrix.png                   test confusion matrix
    exp/layer_weights.json, layer_weights.png  learned featurizer weights
    exp/predictions_test.tsv                   test predictions (same format as ``predict``)
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import speechssl
from speechssl.config import save_yaml, to_dict
from speechssl.downstream.features import FeatureSet, num_frames
from speechssl.downstream.heads import head_level
from speechssl.downstream.labels import LabelMap, frame_targets
from speechssl.downstream.model import DownstreamConfig, DownstreamModel, build_downstream_model
from speechssl.downstream.plots import plot_confusion_matrix, plot_layer_weights
from speechssl.downstream.results import ExperimentResult
from speechssl.downstream.sources import FeatureSource
from speechssl.downstream.splits import splits_hash
from speechssl.downstream.training import evaluate, train_model
from speechssl.utils import atomic_write_json, atomic_write_text, git_revision, seed_everything

logger = logging.getLogger(__name__)
SUMMARY_METRICS = ("accuracy", "ua", "macro_f1")


def run_key(source: FeatureSource, splits: Mapping[str, Sequence[dict]], cfg: DownstreamConfig,
            protocol: Mapping[str, Any], label: str) -> str:
    """A hash of everything that decides a run's result: the encoder or features (path, options and
    file sizes/times), the splits, the label, the hyper-parameters, the protocol and the speechssl
    version. Protocols reuse a finished run whose key is equal."""
    config = {k: v for k, v in to_dict(cfg).items() if k != "finetune"}  # head training never reads it
    blob = json.dumps({"source": source.fingerprint(), "splits": splits_hash({k: v for k, v in splits.items() if v}),
                       "label": label, "config": config, "protocol": dict(protocol),
                       "version": speechssl.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def finished_run(exp_dir: str | Path, key: str | None) -> ExperimentResult | None:
    """The results of an earlier run in ``exp_dir`` with the same :func:`run_key`, else None."""
    path = Path(exp_dir) / "results.json"
    if key is None or not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if results.get("run_key") != key:
        return None
    try:
        return ExperimentResult.from_dict(results)
    except TypeError:  # a results.json missing keys (hand-edited, other version): train again
        return None


def warn_single_examples(records: Sequence[dict], label: str, where: str) -> list[str]:
    """Warn (one line) naming the classes of ``label`` that only one utterance of ``records`` has:
    a head cannot learn a class from one example, and a dev split carved from it will lack the
    class. Returns those classes."""
    counts: dict[str, int] = {}
    for rec in records:
        value = rec.get(label)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in {str(x) for x in values}:
            counts[v] = counts.get(v, 0) + 1
    single = sorted(v for v, n in counts.items() if n == 1)
    if single:
        shown = ", ".join(repr(v) for v in single[:10]) + (f" and {len(single) - 10} more" if len(single) > 10 else "")
        logger.warning("%s: class(es) %s of %r have a single example; the head can hardly learn them "
                       "(add examples, or merge or drop these classes)", where, shown, label)
    return single


def aliases_by_value(fs: FeatureSet) -> dict[str, str]:
    """``{layer: earlier layer}`` for layers whose values equal an earlier layer's on the first
    utterance. Only for sources that cannot say which layers are aliases (a feature folder whose
    extract.json does not record ``layer_aliases``, a hand-made source): an encoder says it
    structurally (:attr:`speechssl.upstream.Encoder.layer_aliases`)."""
    if not len(fs.feats):
        return {}
    first = fs.feats[0]
    out: dict[str, str] = {}
    for j, name in enumerate(fs.layer_names):
        for i in range(j):
            if first[i].shape == first[j].shape and torch.equal(first[i], first[j]):
                out[name] = fs.layer_names[i]
                break
    return out


def layer_aliases(source: FeatureSource, fs: FeatureSet) -> dict[str, str]:
    """Which of ``fs``'s layers repeat an earlier one: what the source declares
    (``source.layer_aliases()``), else, when it cannot tell (None), :func:`aliases_by_value`."""
    aliases = source.layer_aliases()
    return dict(aliases) if aliases is not None else aliases_by_value(fs)


_NOTED: set[str] = set()


def _note_once(level: int, fmt: str, *args) -> None:
    """Log a message once per process (sweeps repeat the same layer notes many times)."""
    text = fmt % args
    if text not in _NOTED:
        _NOTED.add(text)
        logger.log(level, text)


def short_name(spec: str | None) -> str:
    """A readable encoder name for plots and tables: ``logmel``, ``apc/encoder`` (not a long path)."""
    if not spec:
        return "?"
    path = Path(spec)
    if len(path.parts) <= 1:
        return spec
    return "/".join(path.parts[-2:]) if path.name in ("encoder", "checkpoints") else path.name


def make_targets(records: Sequence[dict], fs: FeatureSet, labels: LabelMap, field: str, level: str,
                 label_frame_shift: int, where: str) -> list:
    """Class index per utterance, or per frame ([T] LongTensor, -100 where unlabelled)."""
    return [record_target(rec, labels, field, level, num_frames(fs.feats, i) if level != "utterance" else 0,
                          fs.frame_shift or 1, label_frame_shift, where) for i, rec in enumerate(records)]


def record_target(rec: dict, labels: LabelMap, field: str, level: str, frames: int, frame_shift: int,
                  label_frame_shift: int, where: str):
    """One record's target: its class index (utterance heads) or ``frames`` class indices ([T]
    LongTensor, -100 where unlabelled; frame heads). Shared by :func:`make_targets` and fine-tuning."""
    value = labels.encode(rec, field, where)
    if level == "utterance":
        if isinstance(value, list):
            raise ValueError(f"{where}: {rec['id']!r} has a list in {field!r}; use a frame head (frame_linear)")
        return value
    if not isinstance(value, list):
        raise ValueError(f"{where}: frame head needs a list of labels in {field!r}, {rec['id']!r} has {value!r}")
    return frame_targets(value, frames, frame_shift, label_frame_shift)


def write_predictions(path: str | Path, ids: Sequence[str], probs: Sequence[torch.Tensor], labels: Sequence[str],
                      references: Sequence[str] | None = None) -> Path:
    """TSV ``id  prediction  confidence  [reference]``; frame level: space-separated labels per frame."""
    header = ["id", "prediction", "confidence"] + (["reference"] if references is not None else [])
    lines = ["\t".join(header)]
    for i, (uid, p) in enumerate(zip(ids, probs)):
        if p.dim() == 1:
            pred, conf = labels[int(p.argmax())], f"{float(p.max()):.4f}"
        else:
            pred = " ".join(labels[int(j)] for j in p.argmax(-1))
            conf = f"{float(p.max(-1).values.mean()):.4f}" if p.numel() else "nan"
        row = [str(uid), pred, conf]
        if references is not None:
            row.append(str(references[i]))
        lines.append("\t".join(row))
    atomic_write_text(path, "\n".join(lines) + "\n")
    return Path(path)


def _reference(rec: dict, field: str) -> str:
    value = rec.get(field)
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def summarize(metric_dicts: Sequence[Mapping[str, float]]) -> dict:
    """``{metric: {"mean", "std", "n"}}`` over runs (population std; 0 for one run)."""
    out = {}
    for m in SUMMARY_METRICS:
        vals = torch.tensor([float(d[m]) for d in metric_dicts], dtype=torch.float64)
        out[m] = {"mean": float(vals.mean()), "std": float(vals.std(unbiased=False)), "n": len(vals)}
    return out


def run_experiment(
    source: FeatureSource,
    splits: Mapping[str, Sequence[dict]],
    label: str,
    cfg: DownstreamConfig,
    exp_dir: str | Path | None = None,
    protocol: Mapping[str, Any] | None = None,
    progress: bool = True,
    key: str | None = None,
) -> tuple[ExperimentResult, DownstreamModel]:
    """Train on ``splits["train"]`` (early stopping on ``splits["dev"]`` if given), score
    ``splits["test"]`` (or dev when there is no test). Returns (results, trained model); with
    ``exp_dir`` the results are also written there as ``results.json``.
    ``key`` (see :func:`run_key`) is recorded in the results so that a resumed protocol can
    recognise the run."""
    t0 = time.time()
    if not splits.get("train"):
        raise ValueError("the train split is empty")
    level = head_level(cfg.head)
    labels = LabelMap.from_records(splits["train"], label, "train")
    if (protocol or {}).get("name") != "label_efficiency":  # there n per class is the point
        warn_single_examples(splits["train"], label, "train")
    for name in ("dev", "test"):
        if splits.get(name):
            labels.check(splits[name], label, name)
    data: dict[str, FeatureSet] = {}
    targets: dict[str, list] = {}
    for name in ("train", "dev", "test"):
        if splits.get(name):
            data[name] = source.features(splits[name], desc=f"features {name}")
            targets[name] = make_targets(splits[name], data[name], labels, label, level,
                                         cfg.task.label_frame_shift, name)
    fs = data["train"]
    selection = cfg.featurizer.selection
    aliases = layer_aliases(source, fs) if selection.is_all else {}
    layers, dropped = selection.for_weighted_sum(fs.layer_names, fs.hidden_sizes(), aliases)
    if dropped["size"]:
        _note_once(logging.WARNING, "featurizer.layers=all: layers %s have another size than %d and are left "
                   "out of the weighted sum (select them explicitly, alone, to probe them)", dropped["size"],
                   fs.hidden_sizes()[fs.layer_names.index(layers[-1])])
    if dropped["alias"]:
        # "context" is often the last layer again; a copy would get a double share of the weights
        _note_once(logging.INFO, "featurizer.layers=all: %s duplicate earlier layers and are left out",
                   dropped["alias"])
    sizes = {n: fs.hidden_sizes()[fs.layer_names.index(n)] for n in layers}
    meta = {"label": label, "encoder": source.describe(), "label_frame_shift": cfg.task.label_frame_shift}
    seed_everything(cfg.train.seed)  # head initialisation depends only on the seed
    model = build_downstream_model(cfg, layers, next(iter(sizes.values())), labels.labels, meta)
    o = cfg.optim
    result = train_model(model, fs, targets["train"], cfg.train, o.lr, data.get("dev"), targets.get("dev"),
                         tuple(o.betas), o.weight_decay, o.clip_norm, progress)
    scored = {}
    probs_by_split = {}
    for name in ("dev", "test"):
        if name in data:
            scored[name], probs_by_split[name] = evaluate(model, data[name], targets[name])
    final = "test" if "test" in scored else ("dev" if "dev" in scored else None)
    results = ExperimentResult(
        task={"label": label, "level": level, "classes": labels.labels},
        encoder=source.describe(),
        featurizer={**to_dict(cfg.featurizer), "layers": layers, "weights": model.featurizer.weights_dict()},
        head=dict(cfg.head),
        protocol=dict(protocol or {"name": "superb"}),
        hyperparameters=to_dict(cfg),
        seeds=[cfg.train.seed],
        splits={"hash": splits_hash({k: v for k, v in splits.items() if v}),
                "sizes": {k: len(v) for k, v in splits.items() if v}},
        best_step=result.best_step,
        steps_run=result.steps_run,
        dev=scored.get("dev"),
        test=scored.get("test"),
        summary=summarize([scored[final]]) if final else None,
        summary_split=final,
        history=result.history,
        speechssl_version=speechssl.__version__,
        git_revision=git_revision(),
        seconds=round(time.time() - t0, 2),
        run_key=key,
    )
    if exp_dir is not None:
        write_artifacts(Path(exp_dir), model, results, cfg, splits, probs_by_split, label)
    return results, model


def write_artifacts(exp: Path, model: DownstreamModel, results: ExperimentResult, cfg: DownstreamConfig,
                    splits: Mapping[str, Sequence[dict]], probs_by_split: Mapping[str, list], label: str) -> None:
    exp.mkdir(parents=True, exist_ok=True)
    model.save(exp)
    save_yaml(to_dict(cfg), exp / "config.yaml")
    model.featurizer.export_weights(exp / "layer_weights.json")
    plot_layer_weights(model.featurizer.weights_dict(), exp / "layer_weights.png",
                       title=f"layer weights: {short_name(results.encoder.get('spec'))} / {label}")
    final = results.summary_split
    if final:
        scores = getattr(results, final)
        plot_confusion_matrix(scores["confusion_matrix"], model.labels, exp / "confusion_matrix.png",
                              title=f"{label} ({final}, acc {scores['accuracy']:.3f}, UA {scores['ua']:.3f})")
    for name, probs in probs_by_split.items():
        recs = splits[name]
        write_predictions(exp / f"predictions_{name}.tsv", [r["id"] for r in recs], probs, model.labels,
                          [_reference(r, label) for r in recs])
    atomic_write_json(exp / "results.json", results.to_dict())
