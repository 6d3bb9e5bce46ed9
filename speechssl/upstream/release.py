"""Released encoders: a folder with ``config.json`` + ``model.safetensors``.

``config.json``::

    {"format_version": 1, "speechssl_version": "0.1.0",
     "model": {"name": "apc", ...model config...},
     "frontend": {"name": "logmel", ...},          # informational; also inside model config
     "layer_names": [...], "frame_shift": 160, "extra": {...}}

Loading never unpickles code: tensors come from safetensors, the rest from JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import speechssl
from speechssl.models.base import SSLModel, build_loaded
from speechssl.utils import atomic_path, atomic_write_json, read_versioned_json

RELEASE_FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ReleaseError(ValueError):
    """A released encoder folder is missing, malformed or from a newer format."""


def save_released_encoder(model: SSLModel, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``folder`` (config.json + model.safetensors), atomically per file."""
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
        },
    )
    return folder


def read_release_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_NAME
    cfg = read_versioned_json(path, RELEASE_FORMAT_VERSION, "a released encoder", ReleaseError)
    if "model" not in cfg or "name" not in cfg.get("model", {}):
        raise ReleaseError(f"{path}: 'model' section with a 'name' is missing")
    return cfg


def load_released_model(folder: str | Path, map_location: str | torch.device = "cpu") -> SSLModel:
    """Rebuild the model of a released encoder folder and load its weights (strictly)."""
    folder = Path(folder)
    cfg = read_release_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ReleaseError(f"{folder}: {WEIGHTS_NAME} is missing")
    state = load_file(str(weights), device=str(map_location))
    return build_loaded(cfg["model"], state, str(weights), ReleaseError)
