"""Training checkpoints: self-describing files of tensors and plain containers only.

A checkpoint (``exp/<name>/checkpoints/step_000123.pt``) is a dict::

    {"kind": "speechssl-pretrain-checkpoint", "format_version": 1, "speechssl_version": "0.1.0",
     "model_name": "apc", "config": {...resolved recipe...}, "step": 123,
     "model": state_dict, "optimizer": state_dict, "scheduler": state_dict, "scaler": state_dict,
     "rng": [per-rank {"python", "numpy", "torch_cpu", "torch_cuda"}],
     "sampler": {"epoch": 2, "batches_consumed": 5}, "world_size": 1, "elapsed_seconds": 12.3,
     "bad_steps": 0}

It is written atomically (temporary name, then rename), so a crash or a full disk while
saving leaves the previous checkpoint intact, and it loads with ``torch.load(weights_only=True)``:
no code is ever unpickled. Python's and NumPy's RNG states are stored as tensors.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

import speechssl
from speechssl.config import ConfigError, to_dict
from speechssl.utils import atomic_path, free_space, read_safetensors

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "speechssl-pretrain-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
_NAME = re.compile(r"step_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint is unreadable, of another model, or of a newer format."""


class UnreadableCheckpointError(CheckpointError):
    """The file cannot be read back at all (truncated by a kill or a full disk, or vanished)."""


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoints in ``folder`` sorted by step (oldest first); temporary files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def prune_checkpoints(folder: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints; returns the deleted paths."""
    found = list_checkpoints(folder)
    doomed = found[: max(0, len(found) - keep_last)]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


# ---------------------------------------------------------------- RNG states as plain tensors
def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + every CUDA device) RNG states as tensors/ints/floats."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    )
    torch.set_rng_state(state["torch_cpu"])
    cuda = state.get("torch_cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning(
                "checkpoint has CUDA RNG states for %d devices, this machine has %d; CUDA RNG not restored",
                len(cuda),
                torch.cuda.device_count(),
            )


# ---------------------------------------------------------------- save / load
def save_checkpoint(path: str | Path, state: dict[str, Any], kind: str = CHECKPOINT_KIND) -> Path:
    """Write ``state`` (plus kind/format/version fields) atomically to ``path``. ``kind`` names
    the writer (``downstream finetune`` has its own, see :mod:`speechssl.downstream.finetune_checkpoint`).

    Raises:
        OSError: the write or the serialisation failed (e.g. the disk is full); one line naming
            the free space. Any previous file at ``path`` and every other checkpoint are untouched.
    """
    path = Path(path)
    payload = {
        "kind": kind,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "speechssl_version": speechssl.__version__,
        **state,
    }
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except (OSError, RuntimeError) as exc:  # a full disk surfaces as RuntimeError from torch's inline_container
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OSError(
            f"could not write checkpoint {path}: {reason}; earlier checkpoints in {path.parent} are intact; "
            f"{free_space(path.parent)} free there"
        ) from exc
    return path


def _kind_name(kind: str) -> str:
    """``pretraining`` for pretraining's kind, ``finetune`` for ``speechssl-finetune-checkpoint``."""
    return "pretraining" if kind == CHECKPOINT_KIND else kind.removeprefix("speechssl-").removesuffix("-checkpoint")


def load_checkpoint(path: str | Path, expect_model: str | None = None, map_location: Any = "cpu",
                    kind: str = CHECKPOINT_KIND) -> dict:
    """Read a training checkpoint with ``torch.load(weights_only=True)`` and check it.

    Args:
        path: a ``step_*.pt`` file.
        expect_model: if given, the model name the checkpoint must hold.
        kind: the writer's kind (see :func:`save_checkpoint`).

    Raises:
        CheckpointError: unreadable, not a speechssl checkpoint, newer format, or another model.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableCheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types (UnpicklingError, RuntimeError, EOFError)
        raise UnreadableCheckpointError(f"{path}: not a readable speechssl checkpoint ({_load_failure(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        what = _kind_name(kind)
        found = ckpt.get("kind") if isinstance(ckpt, dict) else None
        if isinstance(found, str) and found.startswith("speechssl-"):  # another speechssl writer's: say whose
            hint = (" (downstream finetune releases its encoder as OUT/encoder: pass that folder)"
                    if _kind_name(found) == "finetune" else "")
            raise CheckpointError(f"{path}: a speechssl {_kind_name(found)} checkpoint, not a {what} one{hint}")
        raise CheckpointError(f"{path}: not a speechssl {what} checkpoint (no kind={kind!r})")
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format_version {version!r} is newer than this speechssl understands "
            f"({CHECKPOINT_FORMAT_VERSION}, speechssl {speechssl.__version__}); it was written by "
            f"speechssl {ckpt.get('speechssl_version')}: upgrade speechssl"
        )
    if expect_model is not None and ckpt.get("model_name") != expect_model:
        raise CheckpointError(
            f"{path}: checkpoint holds model {ckpt.get('model_name')!r}, but the config asks for "
            f"{expect_model!r}; use another --exp folder, or --init-from for weights of the same model"
        )
    return ckpt


def _load_failure(exc: Exception) -> str:
    """One line on why ``torch.load`` failed. torch's own text for a file that is not a weights
    pickle runs over a dozen lines and suggests ``weights_only=False``, which speechssl never uses."""
    if isinstance(exc, pickle.UnpicklingError):
        return "not a PyTorch file of tensors (weights-only unpickling refused it)"
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def load_latest_intact(folder: str | Path, expect_model: str | None = None, map_location: Any = "cpu",
                       set_aside: bool = True) -> tuple[Path | None, dict | None]:
    """The newest checkpoint of ``folder`` that reads back, as ``(path, checkpoint)``.

    Newer files that cannot be read at all (truncated by a kill or a full disk) are skipped with
    a warning and, when ``set_aside``, renamed to ``<name>.unreadable`` so that no later reader
    (``--init-from``, ``load_encoder``) picks them. ``(None, None)`` when none is left.

    Raises:
        CheckpointError: a readable checkpoint of another model or of a newer format (no fallback:
            that is a wrong folder, not a damaged file).
    """
    paths = list_checkpoints(folder)
    for i in range(len(paths) - 1, -1, -1):
        try:
            return paths[i], load_checkpoint(paths[i], expect_model=expect_model, map_location=map_location)
        except UnreadableCheckpointError as exc:
            if i:
                log.warning("%s; falling back to the previous checkpoint", exc)
            else:
                log.warning("%s; no readable checkpoint left in %s: starting from step 0 (the unreadable "
                            "ones are kept as *.unreadable)", exc, folder)
            if set_aside:
                with contextlib.suppress(OSError):  # another rank may have set it aside already
                    paths[i].rename(paths[i].with_name(paths[i].name + ".unreadable"))
    return None, None


def clean_experiment(exp_dir: str | Path) -> None:
    """Remove what killed runs left in an experiment folder: unfinished checkpoint files,
    ``.<name>.<pid>.tmp`` temporaries of dead pids, and a half-swapped encoder release (put back).
    Only call it while holding the folder's lock."""
    from speechssl.locks import remove_stale_temporaries as remove_pid_temporaries
    from speechssl.upstream.release import restore_interrupted_release

    exp_dir = Path(exp_dir)
    remove_stale_temporaries(exp_dir / "checkpoints")
    remove_pid_temporaries(exp_dir)
    restore_interrupted_release(exp_dir / "encoder")


def remove_stale_temporaries(folder: str | Path, patterns: tuple[str, ...] = (".step_*.pt.*.tmp",)) -> list[Path]:
    """Delete ``.step_*.pt.*.tmp`` files (or others matching ``patterns``) left by writes that were
    killed. Only the holder of the experiment's lock writes checkpoints, so under that lock every
    such file is stale."""
    folder = Path(folder)
    found = sorted(p for pattern in patterns for p in folder.glob(pattern)) if folder.is_dir() else []
    for path in found:
        path.unlink(missing_ok=True)
    if found:
        log.warning("removed %d unfinished checkpoint file(s) of killed runs from %s", len(found), folder)
    return found


def load_model_weights(model: torch.nn.Module, source: str | Path, model_name: str) -> str:
    """``--init-from``: load only model weights from a checkpoint file, an experiment folder
    (its latest checkpoint) or a released-encoder folder. Returns a description of what was loaded.

    Raises:
        CheckpointError: the source is missing, of another model, or its weights do not fit.
    """
    from speechssl.upstream.release import CONFIG_NAME, WEIGHTS_NAME, read_release_config

    source = Path(source)
    if source.is_dir() and (source / CONFIG_NAME).is_file():
        cfg = read_release_config(source)
        if cfg["model"]["name"] != model_name:
            raise CheckpointError(
                f"{source}: released encoder of model {cfg['model']['name']!r}, config asks for {model_name!r}"
            )
        state = read_safetensors(source / WEIGHTS_NAME, error=CheckpointError)
        what = f"released encoder {source}"
    else:
        if source.is_dir():
            found = latest_checkpoint(source / "checkpoints") or latest_checkpoint(source)
            if found is None:
                raise CheckpointError(
                    f"--init-from {source}: neither a released encoder ({CONFIG_NAME}) nor a folder with checkpoints"
                )
            source = found
        state = load_checkpoint(source, expect_model=model_name)["model"]
        what = f"checkpoint {source}"
    state, fresh = skip_reshaped_targets(model, state)
    ours = model.state_dict()
    reshaped = [f"{k} {list(v.shape)} (model {list(ours[k].shape)})" for k, v in sorted(state.items())
                if k in ours and tuple(v.shape) != tuple(ours[k].shape)]
    if reshaped:  # one line, not torch's list of every mismatch
        raise CheckpointError(
            f"--init-from {what}: {len(reshaped)} tensors have other shapes than model {model_name!r} of this "
            f"config, e.g. {'; '.join(reshaped[:3])}: set the config's model sizes to the source's")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = model.complete_state(list(missing)) if hasattr(model, "complete_state") else missing
    missing = [k for k in missing if k not in fresh]
    if missing or unexpected:
        raise CheckpointError(
            f"--init-from {what}: weights do not fit model {model_name!r}: missing {sorted(missing)[:10]}, "
            f"unexpected {sorted(unexpected)[:10]}"
        )
    if fresh:  # the trainer logs `what`: say which weights were not taken
        what += "; left at their fresh init (target-dependent, another shape): " + ", ".join(
            f"{k} {list(src)} -> {list(dst)}" for k, (src, dst) in sorted(fresh.items()))
    return what


def skip_reshaped_targets(model: torch.nn.Module, state: dict[str, torch.Tensor]
                          ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[tuple[int, ...], tuple[int, ...]]]]:
    """``state`` without the target-dependent weights (``model.target_dependent`` prefixes) whose shape
    differs from the model's, and those keys as ``{key: (source shape, model shape)}``. Weights outside
    those prefixes are kept whatever their shape (the load then fails on them)."""
    prefixes = tuple(getattr(model, "target_dependent", ()))
    own = model.state_dict()
    fresh = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
             if k.startswith(prefixes) and k in own and tuple(v.shape) != tuple(own[k].shape)} if prefixes else {}
    return {k: v for k, v in state.items() if k not in fresh}, fresh


def as_float(v: Any) -> float:
    """A logged number: a tensor (any dtype/device) or a Python number -> float."""
    return float(v.detach().float().item()) if isinstance(v, torch.Tensor) else float(v)


def changed_settings(before: dict[str, Any], now: dict[str, Any], sections: list[str] | None = None) -> list[str]:
    """``"section.key: old -> new"`` for every key of ``sections`` (default: all) of two nested
    config dicts that differs; a section that is not a dict is compared whole (``"section: old -> new"``)."""
    changed = []
    for section in sections if sections is not None else sorted(set(before) | set(now)):
        old, new = before.get(section), now.get(section)
        if isinstance(old, dict) or isinstance(new, dict):
            old, new = old or {}, new or {}
            changed += [f"{section}.{k}: {old.get(k)!r} -> {new.get(k)!r}"
                        for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        elif old != new:
            changed.append(f"{section}: {old!r} -> {new!r}")
    return changed


def refuse_other_model(saved: dict[str, Any], current: dict[str, Any], where: str) -> None:
    """Resuming needs the same model config. Fields the saved config lacks (added to the family
    since, with their defaults) are accepted."""
    current = to_dict(current)
    diff = sorted(k for k in saved if saved[k] != current.get(k, saved[k]) or k not in current)
    if diff:
        raise ConfigError(f"{where} holds checkpoints of a different model config (differs in: {', '.join(diff)}); "
                          "use a new --exp folder, or --init-from to start from those weights")
