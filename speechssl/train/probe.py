"""The live probe: is the model learning anything? Linear probes on frozen features, during pretraining.

At every probe point (step 0, every ``train.probe.every`` steps, and the last step) the Trainer
encodes a small labelled probe set with the current weights in eval mode (no masking, no dropout),
pools every layer's frames into mean + standard deviation, fits a ridge classifier on a fixed
train part and scores a fixed held-out part. Step 0 is the random-init control for free::

    train:
      probe:
        labels: [speaker, style]   # label fields of the probe manifest
        label_from: train          # utterances of the training manifest (or manifest: data/probe.jsonl)
        per_class: 12              # utterances per class (half of them held out)
        every: 100

``metrics.jsonl`` gains ``{"split": "probe", "step": 100, "probe/speaker/context": 0.83, ...,
"health/context/std_mean": ..., "health/context/eff_rank": ..., "probe_seconds": 1.9}`` lines
(:mod:`speechssl.train.diagnostics` computes the health numbers from the same features).

Why a closed-form ridge classifier (one-hot targets, argmax): one linear solve in float64, no
learning rate, no iteration count, no random init -- the same features give the same accuracy on
any machine, and a few hundred utterances take milliseconds. It ranks representations like a
logistic-regression probe (SUPERB's linear protocol) at a fraction of the cost.

The probe never touches the optimiser or the training RNG streams (python, numpy, torch are
saved and restored around it): a run with the probe trains exactly the weights of a run without it.
Under DDP only rank 0 probes; the others wait at a barrier.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from speechssl.config import ConfigError
from speechssl.train.diagnostics import HealthWatch

log = logging.getLogger(__name__)

#: Frames of the last layer kept (evenly over utterances) for the feature-health numbers.
MAX_HEALTH_FRAMES = 8192


@dataclasses.dataclass
class ProbeConfig:
    """``train.probe``: the live linear probe (off while ``labels`` is empty)."""

    labels: list[str] = dataclasses.field(default_factory=list)  # label fields, e.g. [speaker, style]
    manifest: str | None = None  # a labelled JSONL manifest of probe utterances ...
    label_from: Literal["train", "valid"] | None = None  # ... or the training / validation manifest
    per_class: int = 12  # utterances per class and label (train part + held-out part)
    test_fraction: float = 0.5  # share of each class's utterances held out for scoring
    # Held-out utterances come from other values of this field than the train part (e.g. speaker
    # when probing style: the probe then measures style across speakers). Not applied to itself.
    group_by: str | None = None
    every: int = 100  # optimiser steps between probes (step 0 and the last step are always probed)
    layers: list[str] = dataclasses.field(default_factory=list)  # layer names (empty: every layer)
    max_seconds: float = 2.0  # centre crop of each probe utterance: bounds the cost of a probe
    ridge: float = 1.0  # L2 weight of the ridge classifier (standardised features, per training utterance)
    batch_seconds: float = 16.0  # padded seconds of audio per encoder forward pass
    seed: int = 0  # which utterances are drawn and how they are split

    def __post_init__(self) -> None:
        if self.labels and (self.manifest is None) == (self.label_from is None):
            raise ConfigError("train.probe: give exactly one of manifest (a labelled JSONL) or label_from "
                              f"(train | valid); got manifest={self.manifest!r}, label_from={self.label_from!r}")
        if self.per_class < 2:
            raise ConfigError(f"train.probe.per_class must be >= 2 (one to fit, one to score), got {self.per_class}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"train.probe.test_fraction must be in (0, 1), got {self.test_fraction}")
        for key in ("every", "max_seconds", "ridge", "batch_seconds"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"train.probe.{key} must be > 0, got {getattr(self, key)}")


# ---------------------------------------------------------------- the classifier
def ridge_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                   ridge: float) -> float:
    """Accuracy of a closed-form ridge classifier (one-hot targets, argmax), fitted in float64.

    Features are standardised with the train part's mean and std (constant dimensions become 0);
    the weights minimise ``||X W + b - Y||^2 / N + ridge * ||W||^2`` (``b``: target means).

    Args:
        x_train: [N, F] features; y_train: [N] class indices 0..C-1.
        x_test: [M, F]; y_test: [M].
        ridge: > 0.
    Returns:
        Share of ``y_test`` predicted right (ties go to the lowest class index).
    """
    x_train = np.asarray(x_train, dtype=np.float64)
    x_test = np.asarray(x_test, dtype=np.float64)
    n, f = x_train.shape
    classes = int(max(y_train.max(), y_test.max())) + 1
    mean = x_train.mean(0)
    std = x_train.std(0)
    std = np.where(std > 1e-12 * max(1.0, float(np.abs(mean).max(initial=0.0))), std, np.inf)
    xs, xt = (x_train - mean) / std, (x_test - mean) / std
    targets = np.eye(classes)[y_train]
    offset = targets.mean(0)
    yc = targets - offset
    lam = ridge * n
    if n <= f:  # dual form: an N x N solve (W = X^T (X X^T + lam I)^-1 Y)
        weights = xs.T @ np.linalg.solve(xs @ xs.T + lam * np.eye(n), yc)
    else:
        weights = np.linalg.solve(xs.T @ xs + lam * np.eye(f), xs.T @ yc)
    predicted = np.argmax(xt @ weights + offset, axis=1)
    return float((predicted == y_test).mean())


def pool_mean_std(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean and standard deviation over each utterance's valid frames.

    Args:
        hidden: [B, T, D]; lengths: [B] valid frames (>= 1).
    Returns:
        [B, 2 * D] float64: ``[mean, std]`` (population std).
    """
    x = hidden.double()
    valid = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).unsqueeze(-1)
    count = lengths.clamp(min=1).to(x.dtype)[:, None]
    mean = (x * valid).sum(1) / count
    var = (((x - mean[:, None]) ** 2) * valid).sum(1) / count
    return torch.cat([mean, var.clamp(min=0).sqrt()], dim=1)


# ---------------------------------------------------------------- choosing the probe set
@dataclasses.dataclass
class LabelSplit:
    """One label's fixed split: indices into the probe set's utterances and class indices."""

    label: str
    classes: list[str]
    train: list[int]
    test: list[int]
    y_train: np.ndarray
    y_test: np.ndarray


def choose_utterances(records: Sequence[Mapping[str, Any]], cfg: ProbeConfig, source: str
                      ) -> tuple[list[Mapping[str, Any]], list[LabelSplit]]:
    """Pick ``per_class`` utterances per class of every label and split them (seeded, fixed).

    Returns the union of the chosen records (sorted by id) and, per label, which of them fit and
    which score the classifier. Classes with too few utterances for both parts are left out.

    Raises:
        ConfigError: a label has fewer than 2 usable classes in ``source``.
    """
    chosen, picks = _pick(records, cfg, source)
    utterances = [chosen[k] for k in sorted(chosen)]
    return utterances, _index_splits(utterances, picks)


_Picks = dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]]


def _pick(records: Sequence[Mapping[str, Any]], cfg: ProbeConfig, source: str
          ) -> tuple[dict[str, Mapping[str, Any]], _Picks]:
    """``({id: record}, {label: ([(id, class)] to fit, [(id, class)] held out)})``."""
    chosen: dict[str, Mapping[str, Any]] = {}
    picks: _Picks = {}
    for label in cfg.labels:
        rng = random.Random(f"{cfg.seed}:{label}")
        by_class: dict[str, list[Mapping[str, Any]]] = {}
        for rec in records:
            if rec.get(label) is not None:
                by_class.setdefault(str(rec[label]), []).append(rec)
        group = cfg.group_by if cfg.group_by not in (None, label) else None
        test_groups: set[str] = set()
        if group is not None:
            values = sorted({str(r.get(group)) for recs in by_class.values() for r in recs})
            rng.shuffle(values)
            n_test = min(len(values) - 1, max(1, round(cfg.test_fraction * len(values))))
            test_groups = set(values[:n_test])
        n_test_each = min(cfg.per_class - 1, max(1, round(cfg.test_fraction * cfg.per_class)))
        fit, score = [], []
        for cls in sorted(by_class):
            recs = sorted(by_class[cls], key=lambda r: str(r["id"]))
            rng.shuffle(recs)
            if group is not None:
                held = [r for r in recs if str(r.get(group)) in test_groups][:n_test_each]
                kept = [r for r in recs if str(r.get(group)) not in test_groups][: cfg.per_class - n_test_each]
            else:
                recs = recs[: cfg.per_class]
                n_held = min(len(recs) - 1, max(1, round(cfg.test_fraction * len(recs))))
                held, kept = recs[:n_held], recs[n_held:]
            if not held or not kept:
                continue
            fit += [(str(r["id"]), cls) for r in kept]
            score += [(str(r["id"]), cls) for r in held]
            chosen.update({str(r["id"]): r for r in kept + held})
        if len({c for _, c in fit}) < 2:
            raise ConfigError(
                f"train.probe: label {label!r} has {len(by_class)} class(es) in {source}, fewer than 2 with "
                f"utterances for both the fit and the held-out part"
                + (f" (held-out {group} values: {sorted(test_groups)})" if group else "")
            )
        picks[label] = (fit, score)
    return chosen, picks


def _index_splits(utterances: Sequence[Mapping[str, Any]], picks: _Picks) -> list[LabelSplit]:
    position = {str(r["id"]): i for i, r in enumerate(utterances)}
    splits = []
    for label, (fit, score) in picks.items():
        fit = [(i, c) for i, c in fit if i in position]
        score = [(i, c) for i, c in score if i in position]
        classes = sorted({c for _, c in fit} & {c for _, c in score})
        index = {c: k for k, c in enumerate(classes)}
        fit = [(i, c) for i, c in fit if c in index]
        score = [(i, c) for i, c in score if c in index]
        splits.append(LabelSplit(label, classes, [position[i] for i, _ in fit], [position[i] for i, _ in score],
                                 np.array([index[c] for _, c in fit], dtype=np.int64),
                                 np.array([index[c] for _, c in score], dtype=np.int64)))
    return splits


# ---------------------------------------------------------------- the probe itself
class LiveProbe:
    """The probe of one Trainer. Rank 0 holds the audio (read once, centre-cropped, in memory)
    and does the work; every other rank only meets it at the barrier."""

    def __init__(self, cfg: ProbeConfig, wavs: list[torch.Tensor], splits: list[LabelSplit],
                 is_main: bool = True, dist: Any = None):
        self.cfg = cfg
        self.wavs = wavs
        self.splits = splits
        self.is_main = is_main
        self.dist = dist
        self.last_step: int | None = None
        self.watch = HealthWatch()

    @classmethod
    def build(cls, cfg: ProbeConfig, manifests: Mapping[str, Path | None], min_samples: int,
              is_main: bool = True, dist: Any = None, probed_step: int | None = None) -> LiveProbe | None:
        """The probe of ``cfg``, or None when there is nothing to probe.

        Unreadable or too short utterances are reported and skipped. With ``label_from`` a label
        the manifest lacks (or has fewer than 2 usable classes of) is skipped with a warning, and no
        usable label turns the probe off; with ``manifest`` that is a :class:`ConfigError`.
        ``probed_step``: the step a resumed run starts from (probed before its checkpoint was written).
        """
        if not cfg.labels:
            return None
        from speechssl.audio.io import AudioError, load_audio
        from speechssl.data.manifest import read_manifest

        # Every rank reads the manifest and makes the same choice (so all agree on whether there is a
        # probe); only the main rank reads audio.
        if cfg.manifest is not None:
            path = Path(cfg.manifest)
        else:
            path = manifests.get(cfg.label_from)
            if path is None:
                raise ConfigError(f"train.probe.label_from={cfg.label_from} but no {cfg.label_from} manifest was given")
        records = read_manifest(path)
        usable = [r for r in records if r["num_samples"] * 16000 // r["sample_rate"] >= min_samples]
        labels = []
        for label in cfg.labels:
            try:
                if not any(r.get(label) is not None for r in records):
                    raise ConfigError(f"train.probe.labels: {path} has no field {label!r} (fields: " + ", ".join(
                        sorted({k for r in records for k in r} - {"id", "path", "num_samples", "sample_rate"})) + ")")
                _pick(usable, dataclasses.replace(cfg, labels=[label]), str(path))
                labels.append(label)
            except ConfigError as exc:
                # a labelled probe manifest was asked for: its labels must work. The training
                # manifest of a recipe (label_from) may simply not carry them: probe what it has.
                if cfg.label_from is None:
                    raise
                if is_main:
                    log.warning("probe: %s; not probing %s", exc, label)
        if not labels:
            if is_main:
                log.warning("probe: none of the labels %s is usable in %s; the live probe is off", cfg.labels, path)
            return None
        cfg = dataclasses.replace(cfg, labels=labels)
        if not is_main:
            probe = cls(cfg, [], [], is_main=False, dist=dist)
            probe.last_step = probed_step
            return probe
        chosen, picks = _pick(usable, cfg, str(path))
        keep_samples = int(cfg.max_seconds * 16000)
        wavs, loaded = [], []
        for key in sorted(chosen):
            rec = chosen[key]
            try:
                wav = load_audio(rec["path"], rec.get("start"), rec.get("duration"), min_samples=min_samples)
            except AudioError as exc:
                log.warning("probe: skipping %s: %s", rec["id"], exc)
                continue
            if wav.numel() > keep_samples:  # centre crop: the same samples at every probe point
                first = (wav.numel() - keep_samples) // 2
                wav = wav[first: first + keep_samples].clone()
            wavs.append(wav)
            loaded.append(rec)
        splits = _index_splits(loaded, picks)
        for s in splits:
            if len(s.classes) < 2:
                raise ConfigError(f"train.probe: label {s.label!r} keeps fewer than 2 classes after unreadable "
                                  f"utterances of {path} were skipped")
        seconds = sum(w.numel() for w in wavs) / 16000
        log.info("probe: %d utterances (%.1f s of audio) from %s; %s", len(wavs), seconds, path,
                 "; ".join(f"{s.label}: {len(s.classes)} classes, {len(s.train)} fit / {len(s.test)} held out"
                           for s in splits))
        probe = cls(cfg, wavs, splits, is_main=True, dist=dist)
        probe.last_step = probed_step
        return probe

    def due(self, step: int) -> bool:
        """A probe point: every ``cfg.every`` steps (step 0 included), unless this step was probed."""
        return step % self.cfg.every == 0 and step != self.last_step

    def run(self, model: torch.nn.Module, step: int, logger: Any = None) -> dict[str, Any] | None:
        """Probe ``model`` at ``step`` (rank 0), write the record to ``logger``, then meet the other
        ranks at the barrier. Returns the record on rank 0, None elsewhere."""
        from speechssl.train.distributed import barrier

        record = None
        if self.is_main:
            record = self.measure(model, step)
            self.watch.check(record)
            if logger is not None:
                logger.write(record)
        self.last_step = step
        if self.dist is not None:
            barrier(self.dist)
        return record

    def measure(self, model: torch.nn.Module, step: int) -> dict[str, Any]:
        """Probe accuracies and feature health of ``model`` at ``step`` as a metrics record."""
        from speechssl.train import checkpoint as ckpt_io
        from speechssl.train.diagnostics import feature_health

        start = time.perf_counter()
        rng = ckpt_io.capture_rng_state()  # eval mode draws nothing, but a model might: keep training's streams
        was_training = model.training
        model.eval()
        try:
            pooled, names, sample = self.encode(model)
        finally:
            model.train(was_training)
            ckpt_io.restore_rng_state(rng)
        record: dict[str, Any] = {"split": "probe", "step": step}
        for s in self.splits:
            for name in names:
                x = pooled[name]
                record[f"probe/{s.label}/{name}"] = ridge_accuracy(x[s.train], s.y_train, x[s.test], s.y_test,
                                                                    self.cfg.ridge)
            record[f"probe_chance/{s.label}"] = float(np.bincount(s.y_test).max() / len(s.y_test))
        record.update(feature_health(sample))
        record["probe_seconds"] = time.perf_counter() - start
        return record

    @torch.inference_mode()
    def encode(self, model: torch.nn.Module) -> tuple[dict[str, np.ndarray], list[str], Any]:
        """Encode the cached probe audio in length-sorted batches of at most ``batch_seconds``.

        Returns ``{layer: [N, 2 * D] float64 pooled features}`` in probe-set order, the probed layer
        names, and a :class:`FeatureSample` of the last layer's frames for the health numbers.
        """
        from speechssl.train.diagnostics import FeatureSample

        device = next(model.parameters()).device
        order = sorted(range(len(self.wavs)), key=lambda i: -self.wavs[i].numel())
        budget = self.cfg.batch_seconds * 16000
        batches, current = [], []
        for i in order:  # longest first: a batch's padded size is its first utterance x its count
            if current and self.wavs[current[0]].numel() * (len(current) + 1) > budget:
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        pooled: dict[str, list[tuple[int, np.ndarray]]] = {}
        names: list[str] = []
        frames: list[np.ndarray] = []
        for batch in batches:
            lengths = torch.tensor([self.wavs[i].numel() for i in batch], device=device)
            wavs = torch.zeros(len(batch), int(lengths.max()), device=device)
            for row, i in enumerate(batch):
                wavs[row, : self.wavs[i].numel()] = self.wavs[i].to(device)
            out = model.encode(wavs, lengths)
            if not names:
                names = self._layers(out.layer_names)
            for name in names:
                feats = pool_mean_std(out.layer(name), out.lengths).cpu().numpy()
                pooled.setdefault(name, []).extend(zip(batch, feats))
            # an evenly spaced sample of the last layer's frames (bounded memory for the health numbers)
            per_utt = max(1, MAX_HEALTH_FRAMES // max(1, len(self.wavs)))
            last = out.hidden_states[-1].float()
            for row, n in enumerate(out.lengths.tolist()):
                keep = torch.linspace(0, int(n) - 1, min(int(n), per_utt), device=last.device).round().long()
                frames.append(last[row, keep].cpu().numpy())
        result = {name: np.stack([f for _, f in sorted(rows, key=lambda t: t[0])]) for name, rows in pooled.items()}
        return result, names, FeatureSample(out.layer_names[-1], np.concatenate(frames))

    def _layers(self, available: list[str]) -> list[str]:
        if not self.cfg.layers:
            return list(available)
        unknown = [n for n in self.cfg.layers if n not in available]
        if unknown:
            raise ConfigError(f"train.probe.layers: unknown layer(s) {unknown}; the model has {available}")
        return list(self.cfg.layers)
