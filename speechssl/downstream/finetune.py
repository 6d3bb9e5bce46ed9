"""Fine-tuning a pretrained encoder with a downstream head, end to end on labelled audio.

``speechssl downstream train`` trains a head on frozen, cached features; here the encoder runs on
every training batch and learns too, at its own learning rate::

    from speechssl.downstream import load_downstream_config
    from speechssl.downstream.finetune import finetune
    cfg = load_downstream_config("recipes/downstream/emotion.yaml", ["finetune.encoder_lr=1e-5",
                                 "finetune.freeze=[feature_encoder]"], label="emotion")
    results = finetune(cfg, "exp/apc/encoder", train, "exp/er_ft", dev=dev, test=test)

The model is the same :class:`~speechssl.downstream.model.DownstreamModel` (featurizer over the
selected layers + head) as ``downstream train``; AdamW has two parameter groups, featurizer + head
at ``optim.lr`` and the encoder at ``finetune.encoder_lr`` (0: the encoder stays frozen and in eval
mode, only the head learns, from audio; dev is then encoded once, not at every evaluation). ``finetune.freeze`` keeps encoder parameters whose names
start with the given prefixes frozen (out of the optimiser, their modules in eval mode so that
dropout and batch-norm statistics stay as pretrained too). Dev is scored every
``train.valid_every`` steps (encoder in eval mode, whole utterances) and the best state of encoder
and head is kept (early stopping after ``train.patience`` evaluations without improvement).

``out`` then holds what ``downstream train`` writes (model.json/.safetensors, results.json,
config.yaml, plots, predictions_*.tsv) and ``out/encoder``, the fine-tuned encoder as a released
encoder folder: ``load_encoder("out/encoder")``, ``speechssl extract --encoder out/encoder`` and
``speechssl downstream predict --model out`` (which records that folder) use it. Dev and test are
scored with that reloaded folder, so ``predict`` on the test manifest reproduces the scores.

Checkpoints (:mod:`speechssl.downstream.finetune_checkpoint`) go to ``out/checkpoints`` at every
evaluation, at the end, and when SIGTERM or Ctrl-C stops the run after its current step (a second
Ctrl-C stops at once): the latest one (weights, AdamW state, RNG states, loader position, step,
selection state) and the best weights so far. Rerunning with the same ``out`` resumes from the
latest checkpoint and ends with the same weights and predictions as an uninterrupted run; a
checkpoint written with other settings (config, encoder weights, label, train or dev split) is
refused with the list of changes, and ``restart=True`` (``--restart``) starts over. A rerun of a
finished run (same settings and test split) reads its results back. ``out`` is locked while a run
uses it. The best state is also kept in memory (one copy of the encoder's weights).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

import speechssl
from speechssl.config import to_dict
from speechssl.data import make_loader
from speechssl.downstream import finetune_checkpoint as ckpt
from speechssl.downstream.experiment import (
    finished_run,
    make_targets,
    record_target,
    summarize,
    warn_single_examples,
    write_artifacts,
)
from speechssl.downstream.feature_cache import EncoderFeatureCache
from speechssl.downstream.features import FeatureSet
from speechssl.downstream.heads import head_level
from speechssl.downstream.labels import LabelMap
from speechssl.downstream.model import DownstreamConfig, DownstreamModel, build_downstream_model
from speechssl.downstream.results import ExperimentResult
from speechssl.downstream.sources import EncoderSource, resolve_encoder_spec
from speechssl.downstream.splits import splits_hash
from speechssl.downstream.training import IGNORE, evaluate, head_loss
from speechssl.locks import FolderLock
from speechssl.models.base import SSLModel
from speechssl.progress import PROGRESS_EVERY_SECONDS, Progress
from speechssl.train.checkpoint import capture_rng_state, restore_rng_state
from speechssl.train.signals import StopSignals, signal_self_at
from speechssl.upstream import Encoder, load_encoder
from speechssl.upstream.release import save_released_encoder
from speechssl.utils import git_revision, seed_everything

logger = logging.getLogger(__name__)
ENCODER_FOLDER = "encoder"  # the fine-tuned encoder inside the output folder


class FinetuneInterrupted(RuntimeError):
    """SIGTERM / SIGINT stopped the run after a step; a checkpoint was written (``signal``: the signal)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signal = signum


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def freeze_candidates(module: torch.nn.Module) -> list[str]:
    """Short parameter-name prefixes of ``module`` for messages: each name cut after its first
    numeric part (``encoder.layers.0``) or else after its first part (``feature_projection``)."""
    out: dict[str, None] = {}
    for name, _ in module.named_parameters():
        parts = name.split(".")
        cut = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        out[".".join(parts[: cut + 1] if cut is not None else parts[:1])] = None
    return list(out)


def freeze_prefixes(module: torch.nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Stop gradients of the parameters of ``module`` whose names start with one of ``prefixes``
    (at a dot: ``encoder.layers.1`` is not ``encoder.layers.10``). Returns the frozen names.

    Raises:
        ValueError: a prefix that matches no parameter; the message lists the prefixes there are.
    """
    names = [n for n, _ in module.named_parameters()]
    unmatched = [p for p in prefixes if not any(_matches(n, p) for n in names)]
    if unmatched:
        raise ValueError(f"finetune.freeze: {', '.join(map(repr, unmatched))} match(es) no encoder parameter; "
                         f"prefixes of {type(module).__name__}: {', '.join(freeze_candidates(module))}")
    frozen = []
    for name, param in module.named_parameters():
        if any(_matches(name, p) for p in prefixes):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def _set_mode(encoder: Encoder, model: DownstreamModel, training: bool, frozen_modules: Sequence[torch.nn.Module]):
    model.train(training)
    encoder.train(training)  # stays in eval mode when the encoder is not trainable
    for m in frozen_modules:
        m.eval()


def _batch_targets(batch: dict, labels: LabelMap, label: str, level: str, frames: torch.Tensor,
                   frame_shift: int, label_frame_shift: int) -> torch.Tensor:
    """Class indices [B] (utterance heads) or [B, T] (frame heads, IGNORE past the labels)."""
    targets = [record_target({label: v, "id": uid}, labels, label, level, int(n), frame_shift, label_frame_shift,
                             "train") for v, uid, n in zip(batch[label], batch["ids"], frames.tolist())]
    if level == "utterance":
        return torch.tensor(targets, dtype=torch.long)
    out = torch.full((len(targets), int(frames.max())), IGNORE, dtype=torch.long)
    for b, t in enumerate(targets):
        out[b, : t.numel()] = t
    return out


def _scored(encoder: torch.nn.Module, model: DownstreamModel, records: Sequence[dict], labels: LabelMap, label: str,
            cfg: DownstreamConfig, name: str, cache: EncoderFeatureCache | None = None,
            progress: bool = True) -> tuple[dict, list]:
    """Encode ``records`` with ``encoder`` in eval mode (a fresh cache: the weights changed) and
    score ``model`` on them -> (metrics, posteriors); ``progress``: the encoding bar on a terminal."""
    if cache is None:  # (an empty cache is falsy: it has a length)
        cache = EncoderFeatureCache(encoder, cfg.encode.batch_size, torch.float32, cfg.encode.device)
    fs: FeatureSet = cache.features(records, desc=f"encode {name}", bar=progress)
    targets = make_targets(records, fs, labels, label, model.level, cfg.task.label_frame_shift, name)
    return evaluate(model, fs, targets, cfg.encode.batch_size)


def finetune(
    cfg: DownstreamConfig,
    encoder: str | Path,
    train: Sequence[dict],
    out: str | Path,
    dev: Sequence[dict] | None = None,
    test: Sequence[dict] | None = None,
    progress: bool = True,
    restart: bool = False,
) -> ExperimentResult:
    """Fine-tune ``encoder`` with a downstream head on ``train`` (label field ``cfg.task.label``),
    select on ``dev`` by ``train.metric`` (no dev: the last step), score ``test``; write the
    downstream model and results to ``out`` and the fine-tuned encoder to ``out/encoder``.

    Args:
        cfg: downstream config (``finetune``, ``optim``, ``train``, ``featurizer``, ``head`` sections).
        encoder: a trained speechssl encoder (released folder, experiment folder, checkpoint,
            imported torchaudio / Hugging Face folder); baselines have nothing to fine-tune.
        train, dev, test: manifest records with the label field.
        out: output folder; a run's checkpoints are in ``out/checkpoints`` (see the module docstring).
        progress: a bar on a terminal (log lines every 30 s are written either way).
        restart: delete the checkpoints and results of an earlier run in ``out`` and start over
            (default: resume from its checkpoint, or read back its results if it finished).
    Returns:
        The results (also in ``out/results.json``); ``encoder.spec`` is ``out/encoder``.
    Raises:
        ValueError: an empty train split, unseen labels, a baseline encoder, a freeze prefix that
            matches nothing.
        ConfigError: ``out`` holds a checkpoint of other settings (listed).
        CheckpointError: its checkpoint or best weights cannot be read (named).
        FolderLockedError: another run uses ``out``.
        FinetuneInterrupted: SIGTERM / SIGINT stopped the run; a checkpoint was written.
    """
    t0 = time.time()
    ft, label = cfg.finetune, cfg.task.label
    if not train:
        raise ValueError("the train split is empty")
    if not label:
        raise ValueError("no label field: pass --label FIELD (or task.label in the config)")
    level = head_level(cfg.head)
    if level == "frame" and ft.max_seconds:
        raise ValueError("finetune.max_seconds crops audio, which frame labels cannot follow; use 0 with a frame head")
    labels = LabelMap.from_records(train, label, "train")
    warn_single_examples(train, label, "train")
    splits = {"train": list(train), "dev": list(dev or []), "test": list(test or [])}
    for name in ("dev", "test"):
        if splits[name]:
            labels.check(splits[name], label, name)

    spec = resolve_encoder_spec(str(encoder))
    enc = load_encoder(spec, trainable=ft.encoder_lr > 0, device=cfg.encode.device)
    if not isinstance(enc.backbone, SSLModel):
        raise ValueError(f"encoder {spec!r} ({enc.kind}) has no trained weights to fine-tune; "
                         "train a head on it with `speechssl downstream train`")
    backbone = enc.backbone
    frozen = freeze_prefixes(backbone, ft.freeze)
    frozen_modules = [m for n, m in backbone.named_modules() if n and any(_matches(n, p) for p in ft.freeze)]
    selection = cfg.featurizer.selection
    layers, dropped = selection.for_weighted_sum(enc.layer_names, enc.hidden_sizes,
                                                 enc.layer_aliases if selection.is_all else {})
    if dropped["size"]:
        logger.warning("featurizer.layers=all: layers %s have another size and are left out "
                       "(select them explicitly, alone, to probe them)", dropped["size"])
    layer_index = [enc.layer_names.index(n) for n in layers]
    seed_everything(cfg.train.seed)
    dim = enc.hidden_sizes[layer_index[0]]
    model = build_downstream_model(cfg, layers, dim, labels.labels,
                                   {"label": label, "label_frame_shift": cfg.task.label_frame_shift})
    model.to(enc.device)
    encoder_params = [p for p in backbone.parameters() if p.requires_grad] if ft.encoder_lr > 0 else []
    groups = [{"params": list(model.parameters()), "lr": cfg.optim.lr}]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": ft.encoder_lr})
    opt = torch.optim.AdamW(groups, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
    trained = [p for g in groups for p in g["params"]]
    logger.info("finetune: %d encoder parameter tensors train at lr %g, %d frozen; head at lr %g",
                len(encoder_params), ft.encoder_lr, len(frozen), cfg.optim.lr)

    loader = make_loader(
        splits["train"], max_batch_seconds=ft.batch_seconds, max_seconds=ft.max_seconds or None,
        shuffle=True, seed=cfg.train.seed, label_fields=[label], max_batch_size=cfg.train.batch_size,
        min_samples=int(getattr(backbone, "min_samples", 0)))
    settings = {**to_dict(cfg), "inputs": {"encoder": spec, "encoder_weights": enc.weights_sha256(), "label": label,
                                           "train": splits_hash({"train": splits["train"]}),
                                           "dev": splits_hash({"dev": splits["dev"]}) if splits["dev"] else None}}
    key = hashlib.sha256(json.dumps({"settings": settings, "version": speechssl.__version__,
                                     "test": splits_hash({"test": splits["test"]}) if splits["test"] else None},
                                    sort_keys=True, default=str).encode()).hexdigest()[:20]
    out = Path(out)
    ckpt_dir = out / ckpt.CHECKPOINT_FOLDER
    lock = FolderLock(out, purpose="speechssl downstream finetune").acquire()
    try:
        ckpt.clean(ckpt_dir)
        done = None if restart else finished_run(out, key)
        if done is not None:
            logger.info("%s: this fine-tuning has finished (best step %s of %s): nothing to do (--restart trains "
                        "again)", out, done.best_step, done.steps_run)
            return done
        if restart:
            ckpt.remove_all(out)
        path, state = (None, None) if restart else ckpt.load(ckpt_dir, settings)
        if state is not None:
            logger.info("resuming from %s at step %d", path, state["step"])
        result = _train_loop(cfg, enc, model, opt, trained, loader, frozen_modules, layer_index, labels, label,
                             splits["dev"], progress, ckpt_dir, state, settings)
        if result.get("interrupted"):
            name = signal.Signals(result["interrupted"]).name
            raise FinetuneInterrupted(f"stopped by {name} at step {result['steps_run']}; checkpoint "
                                      f"{result['checkpoint']}; rerun the same command to resume", result["interrupted"])

        # export, then score with the reloaded export: what `predict` and `extract` will use
        folder = save_released_encoder(
            backbone, out / ENCODER_FOLDER, role="ssl",
            extra={"source": spec, "finetuned": {"label": label, "encoder_lr": ft.encoder_lr, "freeze": list(ft.freeze),
                                                 "best_step": result["best_step"]}})
        source = EncoderSource(load_encoder(str(folder.resolve()), device=cfg.encode.device), str(folder.resolve()),
                               {}, cfg.encode.batch_size, "float32", cfg.encode.device)
        model.meta["encoder"] = source.describe()
        model.eval()
        scored, probs = {}, {}
        for name in ("dev", "test"):
            if splits[name]:
                scored[name], probs[name] = _scored(source.cache.encoder, model, splits[name], labels, label, cfg, name,
                                                    source.cache, progress)
        final = "test" if "test" in scored else ("dev" if "dev" in scored else None)
        results = ExperimentResult(
            task={"label": label, "level": level, "classes": labels.labels},
            encoder=model.meta["encoder"],
            featurizer={**to_dict(cfg.featurizer), "layers": layers, "weights": model.featurizer.weights_dict()},
            head=dict(cfg.head),
            protocol={"name": "finetune", "encoder_from": spec, "encoder_lr": ft.encoder_lr, "freeze": list(ft.freeze),
                      "frozen_parameters": len(frozen), "trained_encoder_parameters": len(encoder_params)},
            hyperparameters=to_dict(cfg),
            seeds=[cfg.train.seed],
            splits={"hash": splits_hash({k: v for k, v in splits.items() if v}),
                    "sizes": {k: len(v) for k, v in splits.items() if v}},
            best_step=result["best_step"],
            steps_run=result["steps_run"],
            dev=scored.get("dev"),
            test=scored.get("test"),
            summary=summarize([scored[final]]) if final else None,
            summary_split=final,
            history=result["history"],
            speechssl_version=speechssl.__version__,
            git_revision=git_revision(),
            seconds=round(time.time() - t0, 2),
            run_key=key,
        )
        write_artifacts(out, model, results, cfg, {k: v for k, v in splits.items() if v}, probs, label)
        return results
    finally:
        lock.release()


def _endless(loader) -> Iterator[dict]:
    """The loader's batches over epochs, from its position (a resumed one: the next batch). As in
    pretraining (``micro_batch_stream``), the seed the DataLoader draws for each epoch's iterator
    leaves the global RNG untouched, so a resumed run draws the same random numbers."""
    while True:
        with torch.random.fork_rng(devices=[]):
            it = iter(loader)
        yield from it


def _train_loop(cfg: DownstreamConfig, enc: Encoder, model: DownstreamModel, opt: torch.optim.Optimizer,
                trained: list[torch.nn.Parameter], loader, frozen_modules, layer_index: list[int],
                labels: LabelMap, label: str, dev: Sequence[dict], progress: bool, ckpt_dir: Path,
                resume: dict | None, settings: dict) -> dict:
    """Steps until ``train.max_steps`` (or early stop), from the checkpoint ``resume`` if given,
    with a checkpoint in ``ckpt_dir`` at every evaluation, at the end and when SIGTERM / SIGINT
    stops the run. On return encoder and model hold the best state on dev (or the last one).
    -> ``{"best_step", "steps_run", "history", "interrupted" (the signal or None), "checkpoint"}``."""
    tc = cfg.train
    backbone = enc.backbone
    best_key, best_state, best_step, bad, step = None, None, 0, 0, 0
    history: list[dict] = []
    running, count, finished = 0.0, 0, False
    if resume is not None:
        model.load_state_dict(resume["model"])
        backbone.load_state_dict(resume["encoder"])
        opt.load_state_dict(resume["optimizer"])
        loader.load_state_dict(resume["sampler"])
        restore_rng_state(resume["rng"])
        step, bad, finished = int(resume["step"]), int(resume["bad"]), bool(resume["finished"])
        running, count, history = float(resume["running"]), int(resume["count"]), list(resume["history"])
        best_key = resume["best_key"]
        if resume["best_step"] is not None:
            best_step = int(resume["best_step"])
            best_state = ckpt.load_best(ckpt_dir, best_step)
    # a frozen encoder (encoder_lr 0: eval mode, no parameter trains) gives the same dev features at
    # every evaluation: encode them once
    dev_cache = (EncoderFeatureCache(enc, cfg.encode.batch_size, torch.float32, cfg.encode.device)
                 if cfg.finetune.encoder_lr == 0 else None)

    def save(done: bool) -> Path:
        return ckpt.save(ckpt_dir, {
            "step": step, "settings": settings, "model": model.state_dict(), "encoder": backbone.state_dict(),
            "optimizer": opt.state_dict(), "rng": capture_rng_state(), "sampler": loader.state_dict(),
            "best_key": best_key, "best_step": best_step if best_state is not None else None, "bad": bad,
            "running": running, "count": count, "history": history, "finished": done})

    bar = Progress(total=tc.max_steps, initial=step, bar=progress, every_seconds=PROGRESS_EVERY_SECONDS, main=True,
                   desc="finetune", logger=logger)
    signals = StopSignals()
    signals.install()
    path = None
    batches = _endless(loader)
    try:
        while step < tc.max_steps and not finished:
            batch = next(batches)
            step += 1
            _set_mode(enc, model, True, frozen_modules)
            encoded = enc(batch["wavs"], batch["lengths"])
            stacked = torch.stack([encoded.hidden_states[i] for i in layer_index], dim=1)  # [B, layers, T, D]
            frames = encoded.lengths.cpu()
            target = _batch_targets(batch, labels, label, model.level, frames, enc.frame_shift,
                                    cfg.task.label_frame_shift).to(stacked.device)
            if model.level == "frame" and target.shape[1] < stacked.shape[2]:
                target = F.pad(target, (0, stacked.shape[2] - target.shape[1]), value=IGNORE)
            loss = head_loss(model(stacked, encoded.lengths), target, encoded.lengths, model.level)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.clip_norm:
                torch.nn.utils.clip_grad_norm_(trained, cfg.optim.clip_norm)
            opt.step()
            running, count = running + loss.item(), count + 1
            bar.update(step)
            signal_self_at(step)
            if dev and (step % tc.valid_every == 0 or step == tc.max_steps):
                _set_mode(enc, model, False, frozen_modules)
                metrics, _ = _scored(enc, model, dev, labels, label, cfg, "dev", dev_cache, progress)
                entry = {"step": step, "train_loss": running / count,
                         **{f"dev_{k}": metrics[k] for k in ("accuracy", "ua", "macro_f1")}}
                history.append(entry)
                running, count = 0.0, 0
                bar.set_postfix(loss=f"{entry['train_loss']:.3f}", dev=f"{metrics[tc.metric]:.3f}")
                if best_key is None or metrics[tc.metric] > best_key:
                    best_key, best_step, bad = metrics[tc.metric], step, 0
                    best_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(backbone.state_dict()))
                    ckpt.save_best(ckpt_dir, step, model, backbone)
                else:
                    bad += 1
                    if tc.patience and bad >= tc.patience:
                        logger.info("early stop at step %d: dev %s best %.4f at step %d", step, tc.metric,
                                    best_key, best_step)
                        finished = True
                        break
            if step % tc.valid_every == 0 and step < tc.max_steps or signals.received is not None:
                path = save(False)
            if signals.received is not None:
                break
    finally:
        bar.close()
        signals.restore()
    if signals.received is not None and not finished and step < tc.max_steps:
        return {"best_step": best_step, "steps_run": step, "history": history, "interrupted": signals.received,
                "checkpoint": path}
    path = save(True)
    if best_state is not None:
        model.load_state_dict(best_state[0])
        backbone.load_state_dict(best_state[1])
    else:
        best_step = step
    _set_mode(enc, model, False, frozen_modules)
    return {"best_step": best_step, "steps_run": step, "history": history, "interrupted": None, "checkpoint": path}
