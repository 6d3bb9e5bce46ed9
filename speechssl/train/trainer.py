"""The pretraining engine shared by every SSL model (APC, CPC, wav2vec 2.0...).

Usage::

    cfg = load_pretrain_config("recipes/pretrain/apc.yaml", ["train.max_steps=100"])
    result = pretrain(cfg, "data/train.jsonl", "data/dev.jsonl", "exp/apc")
    result.status, result.step, result.encoder_dir      # "finished", 100, exp/apc/encoder

One optimiser step consumes ``accumulation`` micro-batches on every rank; a micro-batch holds at
most ``max_batch_seconds / (world_size * accumulation)`` padded seconds, so the effective batch in
seconds does not depend on the world size. Rerunning on the same ``exp_dir`` resumes from its
latest checkpoint exactly (model, optimiser, scheduler, scaler, RNG and batch position).

``exp_dir`` receives ``config.yaml`` (resolved config + run info), ``metrics.jsonl``,
``tensorboard/``, ``checkpoints/step_*.pt``, ``loss_curve.png`` and ``encoder/``; only rank 0 writes,
holding ``exp_dir/.speechssl.lock`` (a second run on the same folder is refused, naming the holder).
A truncated newest checkpoint is set aside and the previous one resumed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import speechssl
from speechssl.accel import cpu_kernels
from speechssl.compilation import compile_model
from speechssl.config import ConfigError, load_yaml, to_dict
from speechssl.features.cmvn import fill_global_cmvn
from speechssl.locks import FolderLock
from speechssl.models.base import SSLModel
from speechssl.progress import Progress
from speechssl.targets.labels import check_resume_targets, open_training_targets
from speechssl.train import checkpoint as ckpt_io
from speechssl.train.batches import build_loader, micro_batch_stream, plan_batches, valid_batch_stream
from speechssl.train.checkpoint import refuse_other_model as _refuse_other_model
from speechssl.train.config import PretrainConfig, save_pretrain_config
from speechssl.train.diagnostics import HealthWatch, block_grad_norms
from speechssl.train.distributed import (
    all_reduce_max,
    barrier,
    gather_objects,
    init_distributed,
    resolve_device,
)
from speechssl.train.metrics import MetricsLogger, merge_train_windows, plot_loss_curve
from speechssl.train.optim import apply_optim_config, build_optimizer, build_scheduler
from speechssl.train.probe import LiveProbe
from speechssl.train.signals import SELF_SIGTERM_ENV, StopSignals, signal_self_at  # noqa: F401  (re-exported)
from speechssl.utils import file_sha256, git_revision, seed_everything

log = logging.getLogger(__name__)

#: fp16 only: consecutive GradScaler overflows tolerated on top of train.max_bad_steps (each halves the scale).
FP16_EXTRA_OVERFLOWS = 24


class TrainingError(RuntimeError):
    """Training cannot go on (repeated non-finite losses/gradients); the message says what to try."""


@dataclasses.dataclass
class PretrainResult:
    """``status``: "finished" (max_steps), "time_limit" (train.max_minutes) or "interrupted" (signal)."""

    status: str
    step: int
    exp_dir: Path
    checkpoint: Path | None = None
    encoder_dir: Path | None = None
    valid_loss: float | None = None
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    signal: int | None = None


class _LossModule(nn.Module):
    """Routes ``SSLModel.loss`` through ``forward`` so DistributedDataParallel sees it."""

    def __init__(self, model: SSLModel):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.model.loss(batch)
        return out.loss, out.metrics


class Trainer:
    """Builds data, model, optimiser and logs from a :class:`PretrainConfig`; :meth:`run` trains."""

    def __init__(self, cfg: PretrainConfig, train_manifest: str | Path, valid_manifest: str | Path | None,
                 exp_dir: str | Path, init_from: str | Path | None = None):
        self.cfg = cfg
        self.exp_dir = Path(exp_dir)
        self.ckpt_dir = self.exp_dir / "checkpoints"
        self.manifests = {"train": Path(train_manifest), "valid": Path(valid_manifest) if valid_manifest else None}
        tc = cfg.train
        device_kind = "cuda" if tc.device == "cuda" or (tc.device == "auto" and torch.cuda.is_available()) else "cpu"
        self.dist, self._owns_group = init_distributed(device_kind)
        self.logger: MetricsLogger | None = None
        self.signals = StopSignals()
        # One job per experiment folder; only rank 0 writes, so only rank 0 locks (DDP ranks excepted).
        self._lock = FolderLock(self.exp_dir, purpose="speechssl pretrain") if self.dist.is_main else None
        created = not self.exp_dir.exists()
        try:
            self._build_model()  # config errors of the family's builder come before any file is touched
            if self._lock is not None:
                self._lock.acquire()
                ckpt_io.clean_experiment(self.exp_dir)  # what killed runs left; safe under the lock
            barrier(self.dist)  # the other ranks read checkpoints only once rank 0 cleaned up
            self._setup(init_from)
        except BaseException:
            self.close()
            if created:  # a setup error (bad manifest, ...) leaves no empty experiment folder behind
                with contextlib.suppress(OSError):
                    self.exp_dir.rmdir()
            raise

    def _build_model(self) -> None:
        """Device, determinism, seeds, and the model, built once from the typed model config."""
        from speechssl.models.base import MODELS

        tc = self.cfg.train
        self.device = resolve_device(tc.device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if tc.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.precision=fp16 needs a CUDA device (fp16 autocast + GradScaler); "
                              "on CPU use train.precision=bf16 or fp32")
        if tc.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        if tc.num_threads is not None:
            torch.set_num_threads(tc.num_threads)
        seed_everything(tc.seed + 1000 * self.dist.rank)
        self.model_name = self.cfg.model_name
        try:
            self.model = MODELS[self.model_name].build(self.cfg.model).to(self.device)
        except (TypeError, ValueError, AssertionError) as exc:
            raise ConfigError(f"model {self.model_name!r} cannot be built: {exc}") from None
        if tc.compile:  # in place: parameter names, checkpoints and resume unchanged
            compile_model(self.model, tc.compile_backend)

    def _setup(self, init_from: str | Path | None) -> None:
        tc, dc = self.cfg.train, self.cfg.data
        # ---- resume (from the newest checkpoint that reads back) or fresh start
        self.resume_path, resume_state = ckpt_io.load_latest_intact(
            self.ckpt_dir, expect_model=self.model_name, map_location=self.device, set_aside=self.dist.is_main)
        self._check_same_model()
        if init_from is not None and self.resume_path is None:
            what = ckpt_io.load_model_weights(self.model, init_from, self.model_name)
            self._info(f"initialised model weights from {what}")
        elif init_from is not None:
            self._info(f"--init-from {init_from} ignored: resuming from {self.resume_path}")

        # ---- batches: the effective batch in seconds is independent of the world size
        self.min_samples = int(self.model.min_samples)
        world = self.dist.world_size
        self.plan = plan_batches(dc, world, self.min_samples, self.model_name)
        self.accumulation, self.micro_seconds = self.plan.accumulation, self.plan.micro_seconds
        self.effective_batch_seconds = self.plan.effective_seconds
        self.targets = self._open_targets()
        self.train_loader = build_loader(
            self.manifests["train"], dc, self.micro_seconds, dc.crop_seconds, True, tc.seed, world,
            self.dist.rank, self.min_samples, pin_memory=self.device.type == "cuda", targets=self.targets)
        self.dropped = dict(self.train_loader.dataset.dropped)
        self._info(
            f"train: {len(self.train_loader.dataset)} utterances kept from {self.train_loader.num_records}"
            + (f"; dropped {sum(self.dropped.values())} shorter than "
               f"{max(dc.min_seconds, self.min_samples / 16000):.3f} s (data.min_seconds={dc.min_seconds}, "
               f"model min_samples={self.min_samples}): {self.dropped}" if self.dropped else "")
        )
        self.valid_loader, self._valid_errors = None, set()
        if self.manifests["valid"] is not None:
            crop = dc.valid_crop_seconds if dc.valid_crop_seconds is not None else dc.crop_seconds
            self.valid_loader = build_loader(
                self.manifests["valid"], dc, dc.valid_batch_seconds or self.micro_seconds, crop, False, tc.seed,
                world, self.dist.rank, self.min_samples, targets=self.targets)

        # ---- optimisation
        self.optimizer = build_optimizer(self.model.parameters(), self.cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.optim, tc.max_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=tc.precision == "fp16")
        self.ddp: nn.Module | None = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(
                _LossModule(self.model), device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=tc.find_unused_parameters)
        self.step = 0
        self.bad_in_a_row = 0
        self.skipped_steps = 0
        self.elapsed_before = 0.0
        self.last_valid_loss: float | None = None
        self._last_ckpt_step = -1
        if resume_state is not None:
            self._load_resume_state(self.resume_path, resume_state)
        for line in fill_global_cmvn(self.model, self.manifests["train"]):  # fresh start, cmvn: global
            self._info(line)
        self.logger = MetricsLogger(self.exp_dir, purge_step=self.step) if self.dist.is_main else None
        if self.logger is not None:  # lines of a killed run after the resumed step (all: a fresh start) go
            self.logger.truncate_after(self.step if self.resume_path is not None else -1)
        # live probe + health warnings (train/probe.py, train/diagnostics.py); a resumed step was probed
        self.probe = LiveProbe.build(tc.probe, self.manifests, self.min_samples, self.dist.is_main, self.dist,
                                     probed_step=self.step if self.resume_path is not None else None)
        self.health = HealthWatch()

    def _open_targets(self):
        targets = open_training_targets(self.cfg.data.targets, self.model, self.model_name, self.cfg.train.max_steps)
        for p in targets.provenance() if targets is not None else []:
            self._info(f"targets: {p['folder']} (k-means {p['hash']}, k={p['k']}, {16000 / p['frame_shift']:g} Hz, "
                       f"from {p['features']} {p['layer']})")
        return targets

    def _targets_provenance(self) -> list[dict[str, Any]]:
        return self.targets.provenance() if self.targets is not None else []

    # ------------------------------------------------------------------ helpers
    def _info(self, msg: str) -> None:
        if self.dist.is_main:
            log.info(msg)

    def _autocast(self):
        p = self.cfg.train.precision
        if p == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    def _check_same_model(self) -> None:
        saved = self.exp_dir / "config.yaml"
        if self.resume_path is None or not saved.is_file():
            return
        old = load_yaml(saved)
        _refuse_other_model(old.get("model") or {}, self.cfg.model_dict(), str(self.exp_dir))
        sections = ["data", "optim", "train"]
        changed = ckpt_io.changed_settings(old, {k: to_dict(getattr(self.cfg, k)) for k in sections}, sections)
        if changed:
            self._info(f"resuming with changed settings (the new values apply): {'; '.join(changed)}")

    def _load_resume_state(self, path: Path, state: dict[str, Any]) -> None:
        _refuse_other_model((state.get("config") or {}).get("model") or {}, self.cfg.model_dict(), str(path))
        check_resume_targets(str(path), state.get("targets") or [], self._targets_provenance())
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        apply_optim_config(self.optimizer, self.scheduler, self.cfg.optim, self.cfg.train.max_steps)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.train_loader.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        self._last_ckpt_step = self.step
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.elapsed_before = float(state.get("elapsed_seconds", 0.0))
        rngs = state["rng"]
        if len(rngs) == self.dist.world_size:
            ckpt_io.restore_rng_state(rngs[self.dist.rank])
        else:
            self._info(f"checkpoint was written by {len(rngs)} ranks, now {self.dist.world_size}: RNG reseeded")
        self.model.step_update(self.step)
        self._info(f"resumed from {path} at step {self.step}")

    def _run_info(self) -> dict[str, Any]:
        manifests = {
            split: {"path": str(p.resolve()), "sha256": file_sha256(p)}
            for split, p in self.manifests.items() if p is not None
        }
        return {
            "speechssl_version": speechssl.__version__,
            "torch_version": str(torch.__version__),
            "cpu_kernels": cpu_kernels(),
            "git_revision": git_revision(),
            "command": " ".join(sys.argv),
            "manifests": manifests,
            "world_size": self.dist.world_size,
            "device": str(self.device),
            "accumulation": self.accumulation,
            "micro_batch_seconds": self.micro_seconds,
            "effective_batch_seconds": self.effective_batch_seconds,
            # trained parameters (a frozen EMA teacher or quantizer is not counted)
            "num_parameters": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "dropped_utterances": self.dropped,
            "targets": self._targets_provenance(),
            "resumed_from": str(self.resume_path) if self.resume_path else None,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    # ------------------------------------------------------------------ one optimiser step
    def forward_backward(self, micro_batches: list[dict[str, Any]]) -> dict[str, Any]:
        """Forward + backward of one optimiser step's micro-batches (gradients averaged over
        micro-batches and, under DDP, over ranks). Returns losses, metrics and bad-batch ids."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        n = len(micro_batches)
        losses, metrics, bad_ids, seconds = [], {}, [], 0.0
        for i, batch in enumerate(micro_batches):
            batch = self._to_device(batch)
            sync = self.ddp is None or i == n - 1
            with (contextlib.nullcontext() if sync else self.ddp.no_sync()):
                with self._autocast():
                    if self.ddp is not None:
                        loss, m = self.ddp(batch)
                    else:
                        out = self.model.loss(batch)
                        loss, m = out.loss, out.metrics
                loss = loss.float()
                self.scaler.scale(loss / n).backward()
            value = ckpt_io.as_float(loss)
            if not math.isfinite(value):
                bad_ids.extend(batch["ids"])
            losses.append(value)
            for k, v in m.items():
                metrics.setdefault(k, []).append(ckpt_io.as_float(v))
            seconds += float(batch["lengths"].sum()) / 16000.0
        return {"losses": losses, "metrics": {k: sum(v) / len(v) for k, v in metrics.items()},
                "bad_ids": bad_ids, "seconds": seconds}

    def train_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, Any]:
        """One optimiser step (or a skipped one). Keeps every rank in lock-step."""
        errors = [b["error"] for b in micro_batches if "error" in b]
        if all_reduce_max([float(bool(errors))], self.dist, self.device)[0] > 0:
            for e in errors:
                log.warning("skipping step %d: %s", self.step + 1, e)
            return {"skipped": "load_error", "errors": errors, "seconds": 0.0}
        res = self.forward_backward(micro_batches)
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.clip_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip is not None else float("inf"))
        grad_norm = ckpt_io.as_float(grad_norm)
        loss_bad, grad_bad = all_reduce_max(
            [float(bool(res["bad_ids"])), float(not math.isfinite(grad_norm))], self.dist, self.device)
        res["grad_norm"] = grad_norm
        if loss_bad or grad_bad:
            ids = res["bad_ids"] or [i for b in micro_batches for i in b["ids"]]
            reason = "non-finite loss" if loss_bad else "non-finite gradients"
            log.warning("step %d: %s (grad_norm=%s); skipping the update. utterances on rank %d: %s",
                        self.step + 1, reason, grad_norm, self.dist.rank, ids)
            if self.scaler.is_enabled():
                self.scaler.update()  # no optimiser step; lowers the loss scale if the gradients overflowed
            self.optimizer.zero_grad(set_to_none=True)
            res.update(skipped=reason, ids=ids)
            return res
        res["lr"] = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.model.step_update(self.step)
        res["skipped"] = None
        return res

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        """Mean loss and metrics over the validation manifest (centre crops, fixed RNG)."""
        if self.valid_loader is None:
            return None
        self.model.eval()
        total: dict[str, float] = {}
        count = 0
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(self.cfg.train.seed)
            # Always from the first batch: with valid_max_batches the loader would otherwise go on
            # where the previous validation stopped, and each pass would measure another slice.
            self.valid_loader.set_epoch(0)
            self.valid_loader.position = 0
            for batch in valid_batch_stream(self.valid_loader, self.cfg.train.valid_max_batches, self._valid_errors):
                batch = self._to_device(batch)
                with self._autocast():
                    out = self.model.loss(batch)
                w = len(batch["ids"])
                for k, v in {"loss": out.loss, **out.metrics}.items():
                    total[k] = total.get(k, 0.0) + ckpt_io.as_float(v) * w
                count += w
        self.model.train()
        parts = gather_objects((total, count), self.dist)
        n = sum(c for _, c in parts)
        if n == 0:
            return None
        keys = parts[0][0].keys()
        return {k: sum(t.get(k, 0.0) for t, _ in parts) / n for k in keys}

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        """Collective: every rank contributes its RNG state; rank 0 writes the file and prunes."""
        rngs = gather_objects(ckpt_io.capture_rng_state(), self.dist)
        path = None
        if self.dist.is_main:
            state = {
                "model_name": self.model_name,
                "config": self.cfg.to_dict(),
                "step": self.step,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "rng": rngs,
                "sampler": self.train_loader.state_dict(),
                "world_size": self.dist.world_size,
                "skipped_steps": self.skipped_steps,
                "elapsed_seconds": self.elapsed_before + (time.monotonic() - self._t0),
                "targets": self._targets_provenance(),
            }
            path = ckpt_io.save_checkpoint(ckpt_io.checkpoint_path(self.ckpt_dir, self.step), state)
            for old in ckpt_io.prune_checkpoints(self.ckpt_dir, self.cfg.train.keep_last):
                log.debug("deleted old checkpoint %s", old)
        self._last_ckpt_step = self.step
        self._last_ckpt_time = time.monotonic()
        barrier(self.dist)
        return path or ckpt_io.checkpoint_path(self.ckpt_dir, self.step)

    # ------------------------------------------------------------------ the loop
    def run(self) -> PretrainResult:
        tc = self.cfg.train
        self._t0 = self._last_ckpt_time = time.monotonic()
        if self.dist.is_main:
            save_pretrain_config(self.cfg, self.exp_dir / "config.yaml", extra=self._run_info())
            self._info(
                f"model {self.model_name}: {sum(p.numel() for p in self.model.parameters() if p.requires_grad):,} "
                "trained parameters; "
                f"world_size={self.dist.world_size} accumulation={self.accumulation} "
                f"micro-batch={self.micro_seconds:.2f} s effective batch={self.effective_batch_seconds:.2f} s; "
                f"precision={tc.precision} device={self.device}"
            )
        self.signals.install()
        status = "finished"
        window: dict[str, Any] = {"loss": [], "metrics": {}, "seconds": 0.0, "t": time.monotonic(), "gn": [], "lr": 0.0}
        bar = Progress(tc.max_steps, self.step, tc.progress, tc.progress_every_seconds, self.dist.is_main, logger=log)
        stream = micro_batch_stream(self.train_loader, self.min_samples)
        if self.step == 0 and tc.valid_every and tc.max_steps > 0:
            self._log_valid()  # the untrained model's loss: the reference point of every curve
        self._probe()  # step 0: the random-init control of the probe curve
        try:
            while self.step < tc.max_steps:
                micro = [next(stream) for _ in range(self.accumulation)]
                res = self.train_step(micro)
                if res["skipped"]:
                    self.skipped_steps += 1
                    self.bad_in_a_row += 1
                    limit = tc.max_bad_steps + (FP16_EXTRA_OVERFLOWS if self.scaler.is_enabled() else 0)
                    if self.logger is not None:
                        self.logger.write({"split": "skipped", "step": self.step, "reason": res["skipped"],
                                           "ids": res.get("ids", []), "errors": res.get("errors", [])})
                    if self.bad_in_a_row >= limit:
                        last = ckpt_io.latest_checkpoint(self.ckpt_dir)
                        advice = (f"audio failed to load, e.g. {res['errors'][-1]}: check the manifest's paths "
                                  "(relative ones are taken from its folder) or drop bad files with `speechssl "
                                  "prepare --check-audio`" if res["skipped"] == "load_error" and res.get("errors")
                                  else "Try a lower optim.lr, optim.clip_norm, more optim.warmup_steps or "
                                  "train.precision=fp32")
                        raise TrainingError(
                            f"{self.bad_in_a_row} consecutive steps skipped (last: {res['skipped']}) at step "
                            f"{self.step}; " + (f"the last checkpoint is {last}" if last else "no checkpoint yet")
                            + f". {advice}")
                else:
                    self.bad_in_a_row = 0
                    window["loss"].extend(res["losses"])
                    window["gn"].append(res["grad_norm"])
                    for k, v in res["metrics"].items():
                        window["metrics"].setdefault(k, []).append(v)
                    window["seconds"] += res["seconds"]
                    window["lr"] = res["lr"]
                    bar.update(self.step)
                    signal_self_at(self.step)
                now = time.monotonic()
                time_up = tc.max_minutes is not None and now - self._t0 >= tc.max_minutes * 60
                ckpt_due = tc.ckpt_every_minutes is not None and now - self._last_ckpt_time >= tc.ckpt_every_minutes * 60
                stop, time_up, ckpt_due = all_reduce_max(
                    [float(self.signals.received is not None), float(time_up), float(ckpt_due)], self.dist, self.device)
                if res["skipped"]:
                    if stop or time_up:
                        status = "interrupted" if stop else "time_limit"
                        break
                    continue
                if self.step % tc.log_every == 0:
                    self._log_train(window, bar)
                    window = {"loss": [], "metrics": {}, "seconds": 0.0, "t": time.monotonic(), "gn": [], "lr": 0.0}
                if tc.valid_every and self.step % tc.valid_every == 0 and self.step < tc.max_steps:
                    self._log_valid()
                self._probe()
                if ckpt_due or (tc.ckpt_every_steps and self.step % tc.ckpt_every_steps == 0):
                    self.save_checkpoint()
                if stop or time_up:
                    status = "interrupted" if stop else "time_limit"
                    break
            if window["loss"]:  # steps since the last log line (stopped between log steps)
                self._log_train(window, bar)
        finally:
            bar.close()
            self.signals.restore()
        if self._last_ckpt_step != self.step:
            checkpoint = self.save_checkpoint()
        else:
            checkpoint = ckpt_io.checkpoint_path(self.ckpt_dir, self.step)
        encoder_dir = None
        if status != "interrupted":
            if self.valid_loader is not None:
                self._log_valid()
            encoder_dir = self.release_encoder(status)
            self._probe(final=True)
        else:
            self._info(f"stopped by {signal.Signals(self.signals.received).name} at step {self.step}; checkpoint "
                       f"{checkpoint}; rerun the same command to resume")
        if status == "time_limit":
            self._info(f"train.max_minutes={tc.max_minutes} reached at step {self.step}; rerun to continue")
        if self.dist.is_main and tc.plot:
            plot_loss_curve(self.exp_dir / "metrics.jsonl", self.exp_dir / "loss_curve.png")
        return PretrainResult(status=status, step=self.step, exp_dir=self.exp_dir, checkpoint=checkpoint,
                              encoder_dir=encoder_dir, valid_loss=self.last_valid_loss, dropped=self.dropped,
                              signal=self.signals.received)

    def _log_train(self, window: dict[str, Any], bar) -> None:
        elapsed = max(1e-9, time.monotonic() - window["t"])
        local = {"loss": window["loss"], "metrics": window["metrics"], "seconds": window["seconds"], "gn": window["gn"]}
        parts = gather_objects(local, self.dist)
        if self.logger is None:
            return
        record: dict[str, Any] = {"split": "train", "step": self.step, "epoch": self.train_loader.epoch,
                                  "lr": window["lr"], **merge_train_windows(parts, elapsed)}
        record["skipped_steps"] = self.skipped_steps
        record["time"] = self.elapsed_before + time.monotonic() - self._t0
        record.update(block_grad_norms(self.model, total=window["gn"][-1] if window["gn"] else None))
        self.logger.write(record)
        self.health.check(record)
        bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record['lr']:.2e}")

    def _log_valid(self) -> None:
        res = self.validate()
        if res is None:
            return
        self.last_valid_loss = res["loss"]
        if self.logger is not None:
            self.logger.write({"split": "valid", "step": self.step, "epoch": self.train_loader.epoch, **res})
            self._info(f"step {self.step}: valid loss {res['loss']:.4g}")

    def _probe(self, final: bool = False) -> None:
        """Collective: a probe point (rank 0 probes, the others wait); ``final`` probes an unprobed last step."""
        if self.probe is not None and (self.probe.due(self.step) or (final and self.probe.last_step != self.step)):
            self.probe.run(self.model, self.step, self.logger)

    def release_encoder(self, status: str) -> Path | None:
        from speechssl.upstream.release import save_released_encoder

        folder = self.exp_dir / "encoder"
        if self.dist.is_main:
            save_released_encoder(self.model, folder, extra={
                "step": self.step, "status": status, "valid_loss": self.last_valid_loss,
                "experiment": str(self.exp_dir.resolve()), "targets": self._targets_provenance()},
                control_of=self.cfg.train.control_of)
            self._info(f"released encoder to {folder}")
        barrier(self.dist)
        return folder

    def close(self) -> None:
        self.signals.restore()
        if self.logger is not None:
            self.logger.close()
        if self._lock is not None:
            self._lock.release()
        if self._owns_group:
            torch.distributed.destroy_process_group()
            self._owns_group = False


def pretrain(cfg: PretrainConfig, train_manifest: str | Path, valid_manifest: str | Path | None,
             exp_dir: str | Path, init_from: str | Path | None = None) -> PretrainResult:
    """Train (or resume) the model of ``cfg`` on ``train_manifest``; see the module docstring."""
    trainer = Trainer(cfg, train_manifest, valid_manifest, exp_dir, init_from=init_from)
    try:
        return trainer.run()
    finally:
        trainer.close()
