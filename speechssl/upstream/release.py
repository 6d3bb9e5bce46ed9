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
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import speechssl
from speechssl.models.base import SSLModel, build_model
from speechssl.utils import atomic_path, atomic_write_json, read_versioned_json

RELEASE_FORMAT_VERSION = 1
ROLES = ("ssl", "control", "baseline")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ReleaseError(ValueError):
    """A released encoder folder is missing, malformed or from a newer format."""


def save_released_encoder(model: SSLModel, folder: str | Path, extra: dict[str, Any] | None = None,
                          role: str | None = None, control_of: str | None = None) -> Path:
    """Write ``model`` to ``folder`` (config.json + model.safetensors), atomically per file.

    ``role``: ``ssl`` or ``control``; None: ``control`` when ``extra["step"]`` is 0 (weights that
    never saw an optimiser step: a random-init control), else ``ssl``. ``control_of``: for a
    control, the name of the pretrained encoder it is the control of (recorded as given)."""
    if role is None:
        role = "control" if (extra or {}).get("step") == 0 else "ssl"
    if role not in ROLES:
        raise ReleaseError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))
    frontend = model.frontend.to_dict() if hasattr(model.frontend, "to_dict") else None
    atomic_write_json(
        folder / CONFIG_NAME,
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
    return folder


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
    model = build_model(cfg["model"], init_weights=False)
    state = load_file(str(weights), device=str(map_location))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ReleaseError(
            f"{weights}: weights do not fit model {cfg['model']['name']!r}: "
            f"missing {sorted(missing)[:10]}, unexpected {sorted(unexpected)[:10]}"
        )
    model.eval()
    return model
