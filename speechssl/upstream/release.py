"""Released encoders: a folder with ``config.json`` + ``model.safetensors``.

``config.json``::

    {"format_version": 1, "speechssl_version": "0.1.0",
     "model": {"name": "apc", ...model config...},
     "frontend": {"name": "logmel", ...},          # informational; also inside model config
     "layer_names": [...], "frame_shift": 160, "extra": {...},
     "role": "ssl" | "control",                     # control: released untrained (max_steps=0)
     "control_of": "apc"}                            # optional: the encoder a control is the control of

A folder written before ``role`` existed is read as a control when ``extra.step`` is 0 (released
before any optimiser step) and as ``ssl`` otherwise (:func:`encoder_role`).

Loading never unpickles code: tensors come from safetensors, the rest from JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

import speechssl
from speechssl.models.base import SSLModel, build_loaded
from speechssl.utils import atomic_write_json, free_space, read_safetensors, read_versioned_json

log = logging.getLogger(__name__)

RELEASE_FORMAT_VERSION = 1
ROLES = ("ssl", "control", "baseline")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ReleaseError(ValueError):
    """A released encoder folder is missing, malformed or from a newer format."""


def _umask_mode() -> int:
    """The mode a plain ``open()`` would give a new file (safetensors writes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_released_encoder(model: SSLModel, folder: str | Path, extra: dict[str, Any] | None = None,
                          role: str | None = None, control_of: str | None = None) -> Path:
    """Write ``model`` to ``folder`` (config.json + model.safetensors) atomically as a whole.

    Both files are written into a temporary sibling folder ``.<name>.<pid>.tmp`` that is then
    renamed onto ``folder``: a crash or a full disk never leaves an empty or half-written
    encoder, and an encoder released earlier stays until the new one is complete.

    ``role``: ``ssl`` or ``control``; None: ``control`` when ``extra["step"]`` is 0 (weights that
    never saw an optimiser step: a random-init control), else ``ssl``. ``control_of``: for a
    control, the name of the pretrained encoder it is the control of (recorded as given).

    Raises:
        OSError: writing failed (full disk...); one line naming the free space. ``folder`` is
            unchanged.
    """
    if role is None:
        role = "control" if (extra or {}).get("step") == 0 else "ssl"
    if role not in ROLES:
        raise ReleaseError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    old = folder.parent / f".{folder.name}.{os.getpid()}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.released_state_dict().items()}
    frontend = model.frontend.to_dict() if hasattr(model.frontend, "to_dict") else None
    try:
        tmp.mkdir()
        save_file(state, str(tmp / WEIGHTS_NAME))
        os.chmod(tmp / WEIGHTS_NAME, _umask_mode())
        atomic_write_json(
            tmp / CONFIG_NAME,
            {
                "format_version": RELEASE_FORMAT_VERSION,
                "speechssl_version": speechssl.__version__,
                "model": model.config_dict(),
                "frontend": frontend,
                "layer_names": list(model.layer_names),
                "frame_shift": int(model.frame_shift),
                "extra": extra or {},
                "role": role,
                "control_of": control_of,
            },
        )
    except (OSError, RuntimeError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OSError(
            f"could not release the encoder to {folder}: {reason}; {free_space(folder.parent)} free there"
            + ("; the encoder released earlier is intact" if folder.exists() else "")
        ) from exc
    # A directory cannot be replaced by rename: move the old release aside first. A crash between
    # the two renames leaves ``.<name>.<pid>.old``, which restore_interrupted_release() puts back.
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def restore_interrupted_release(folder: str | Path) -> None:
    """Undo what a process killed inside :func:`save_released_encoder` left next to ``folder``:
    put a moved-aside earlier release back if ``folder`` is missing, drop the rest. Call it only
    while holding the experiment's lock."""
    from speechssl.locks import pid_alive

    folder = Path(folder)
    prefix = f".{folder.name}."
    for left in sorted(folder.parent.glob(f"{prefix}*")):
        pid, _, kind = left.name[len(prefix):].partition(".")
        if kind not in ("old", "tmp") or not pid.isdigit() or pid_alive(int(pid)):
            continue
        if kind == "old" and not folder.exists() and (left / WEIGHTS_NAME).is_file() and (left / CONFIG_NAME).is_file():
            os.replace(left, folder)
            log.warning("restored %s from %s, left by a release that was killed", folder, left.name)
        else:
            shutil.rmtree(left, ignore_errors=True)


def read_release_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_NAME
    cfg = read_versioned_json(path, RELEASE_FORMAT_VERSION, "a released encoder", ReleaseError)
    if "model" not in cfg or "name" not in cfg.get("model", {}):
        raise ReleaseError(f"{path}: 'model' section with a 'name' is missing")
    return cfg


def encoder_role(cfg: dict) -> dict:
    """``{"role", "control_of", "architecture"}`` of a released encoder's config.json.

    ``architecture`` is a short hash of the model config (a control and the encoder pretrained
    from the same recipe share it). Folders without ``role`` (written before it existed): a
    control when ``extra.step`` is 0, else ``ssl``."""
    role = cfg.get("role")
    if role is None:
        role = "control" if (cfg.get("extra") or {}).get("step") == 0 else "ssl"
    model = json.dumps(cfg.get("model"), sort_keys=True, default=str)
    return {"role": str(role), "control_of": cfg.get("control_of"),
            "architecture": hashlib.sha256(model.encode()).hexdigest()[:12]}


def load_released_model(folder: str | Path, map_location: str | torch.device = "cpu") -> SSLModel:
    """Rebuild the model of a released encoder folder and load its weights (strictly)."""
    folder = Path(folder)
    cfg = read_release_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ReleaseError(f"{folder}: {WEIGHTS_NAME} is missing")
    state = read_safetensors(weights, device=str(map_location), error=ReleaseError)
    return build_loaded(cfg["model"], state, str(weights), ReleaseError)
