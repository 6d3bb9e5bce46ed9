"""Checkpoints of ``downstream finetune``: what a rerun needs to continue an interrupted run bit-exactly.

``OUT/checkpoints/step_00000300.pt`` (the latest only) holds the downstream model's (featurizer + head)
and the encoder's weights, the AdamW state, the RNG states (python, numpy, torch), the loader's
position, the step, the selection state (best dev score and step, evaluations without improvement,
history) and the run's settings (config + encoder weights + train/dev splits). It is written with
the pretraining checkpoint functions (:mod:`speechssl.train.checkpoint`: temporary name then rename,
``torch.load(weights_only=True)``) under its own kind. The best weights so far are
``OUT/checkpoints/best_step_00000200.safetensors`` (encoder ``encoder.*`` + model ``model.*``),
written before the checkpoint that names them; the others are deleted after it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from speechssl.config import ConfigError
from speechssl.train import checkpoint as ckpt_io
from speechssl.utils import atomic_path, read_safetensors

logger = logging.getLogger("speechssl.downstream.finetune")
FINETUNE_KIND = "speechssl-finetune-checkpoint"
CHECKPOINT_FOLDER = "checkpoints"
_BEST = re.compile(r"best_step_(\d+)\.safetensors$")
_TEMPORARIES = (".step_*.pt.*.tmp", ".best_step_*.safetensors.*.tmp")


def best_path(folder: Path, step: int) -> Path:
    return folder / f"best_step_{step:08d}.safetensors"


def clean(folder: Path) -> None:
    """Remove what killed writes left (temporary files). Only under the output folder's lock."""
    ckpt_io.remove_stale_temporaries(folder, _TEMPORARIES)


def save_best(folder: Path, step: int, model: torch.nn.Module, encoder: torch.nn.Module) -> Path:
    """The current weights of ``model`` and ``encoder`` as the best ones of ``step`` (atomically)."""
    state = {f"model.{k}": v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    state.update({f"encoder.{k}": v.detach().to("cpu").contiguous().clone() for k, v in encoder.state_dict().items()})
    path = best_path(folder, step)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "step": str(step)})
    return path


def load_best(folder: Path, step: int) -> tuple[dict, dict]:
    """(model state, encoder state) of :func:`save_best` at ``step``.

    Raises:
        CheckpointError: the file is missing or damaged (one line naming it).
    """
    path = best_path(folder, step)
    if not path.is_file():
        raise ckpt_io.CheckpointError(f"{path}: the best weights (step {step}) named by the checkpoint are missing; "
                                      "rerun with --restart to start over")
    state = read_safetensors(path, error=ckpt_io.CheckpointError)
    split: tuple[dict, dict] = ({}, {})
    for k, v in state.items():
        part, _, name = k.partition(".")
        split[0 if part == "model" else 1][name] = v
    return split


def save(folder: Path, state: dict[str, Any]) -> Path:
    """Write the checkpoint of ``state["step"]``, then delete older checkpoints and best weights
    other than ``state["best_step"]``'s."""
    path = ckpt_io.save_checkpoint(ckpt_io.checkpoint_path(folder, state["step"]), state, kind=FINETUNE_KIND)
    ckpt_io.prune_checkpoints(folder, keep_last=1)
    for p in folder.glob("best_step_*.safetensors"):
        m = _BEST.fullmatch(p.name)
        if m and int(m.group(1)) != state.get("best_step"):
            p.unlink(missing_ok=True)
    return path


def load(folder: Path, settings: dict[str, Any]) -> tuple[Path, dict] | tuple[None, None]:
    """The latest checkpoint of ``folder`` (``(None, None)``: none), checked against ``settings``.

    Raises:
        CheckpointError: the file cannot be read (one line naming it).
        ConfigError: it was written with other settings; the message lists them.
    """
    path = ckpt_io.latest_checkpoint(folder)
    if path is None:
        return None, None
    try:
        state = ckpt_io.load_checkpoint(path, kind=FINETUNE_KIND)
    except ckpt_io.CheckpointError as exc:
        raise ckpt_io.CheckpointError(f"{exc}; rerun with --restart to start over") from None
    changed = ckpt_io.changed_settings(state.get("settings") or {}, settings)
    if changed:
        raise ConfigError(f"{path} was written with other settings ({'; '.join(changed)}): rerun with the same "
                          "config and inputs to resume, or with --restart to start over")
    return path, state


def remove_all(out: Path) -> None:
    """``--restart``: delete the checkpoints, best weights and results of an earlier run in ``out``."""
    folder = out / CHECKPOINT_FOLDER
    for p in [*ckpt_io.list_checkpoints(folder), *folder.glob("best_step_*.safetensors")]:
        p.unlink(missing_ok=True)
    (out / "results.json").unlink(missing_ok=True)
