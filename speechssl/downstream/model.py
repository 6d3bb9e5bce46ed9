"""Downstream configuration and model (featurizer + head), saved as safetensors + JSON.

A saved model folder holds ``model.safetensors`` (weights) and ``model.json``::

    {"format_version": 1, "label": "emotion", "level": "utterance", "labels": [...],
     "layers": [...selected layer names...], "input_dim": 80,
     "featurizer": {...}, "head": {"name": "superb_utterance", ...},
     "encoder": {"spec": "logmel", "options": {}, "layer_names": [...], "frame_shift": 160},
     "features": null | "/path/to/extract/folder", "label_frame_shift": 0}

Nothing is unpickled when it is loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from speechssl.config import check_finite, from_dict, to_dict
from speechssl.downstream.featurizer import Featurizer, FeaturizerConfig
from speechssl.downstream.heads import Head, build_head
from speechssl.utils import atomic_path, atomic_write_json, read_safetensors, read_versioned_json

MODEL_FORMAT_VERSION = 1
MODEL_CONFIG = "model.json"
MODEL_WEIGHTS = "model.safetensors"


@dataclasses.dataclass
class TaskConfig:
    label: str = ""  # manifest field to predict (the CLI's --label overrides it)
    label_frame_shift: int = 0  # frame labels only: samples between labels (0: the encoder's frame shift)


@dataclasses.dataclass
class EncodeConfig:
    batch_size: int = 8  # utterances per encoder forward pass when caching features
    dtype: str = "float32"  # float32 | float16: storage of cached features
    device: str = "cpu"  # where the frozen encoder runs
    # --features DIR: auto loads them into memory when they fit (90 % of the available memory, cgroup
    # limits included), else reads each utterance from disk when used; always | never force one way
    features_in_memory: str = "auto"


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1.0e-4  # Adam learning rate (SUPERB ER/SID: 1e-4)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    clip_norm: float = 1.0  # gradient clipping (0: none)


@dataclasses.dataclass
class TrainConfig:
    max_steps: int = 2000  # optimiser steps (SUPERB ER: 30k with batch 32)
    batch_size: int = 32  # utterances per step
    valid_every: int = 100  # steps between dev evaluations
    patience: int = 10  # early stop after this many dev evaluations without improvement (0: never)
    metric: str = "accuracy"  # dev metric for model selection: accuracy | ua | macro_f1
    crop_frames: int = 0  # random crop of training utterances to this many frames (0: none)
    seed: int = 0  # one seed for head init, batch order and crops
    threads: int = 1  # torch intra-op threads while training the head (its ops are tiny; 0: leave as is)


@dataclasses.dataclass
class FinetuneConfig:
    """``speechssl downstream finetune`` only: the encoder trains with the head on audio batches
    (steps, dev evaluation, early stopping and seed come from ``train``; ``train.batch_size`` caps
    the utterances per batch)."""

    encoder_lr: float = 1.0e-5  # encoder learning rate (head + featurizer use optim.lr); 0: encoder frozen
    # encoder parameter-name prefixes kept frozen (matched at dots; each must match a parameter), e.g.
    # [feature_encoder] (wav2vec 2.0 / HuBERT conv feature encoder), [encoder.layers.0] (a transformer
    # block), [context.layers.0] (APC's first GRU); the error for a prefix that matches nothing lists them
    freeze: list[str] = dataclasses.field(default_factory=list)
    batch_seconds: float = 32.0  # padded seconds of audio per step
    max_seconds: float = 0.0  # random crop of training utterances to this many seconds (utterance heads; 0: none)


@dataclasses.dataclass
class DownstreamConfig:
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    featurizer: FeaturizerConfig = dataclasses.field(default_factory=FeaturizerConfig)
    head: dict = dataclasses.field(default_factory=lambda: {"name": "superb_utterance"})
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    encode: EncodeConfig = dataclasses.field(default_factory=EncodeConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)

    def __post_init__(self):
        if self.train.metric not in ("accuracy", "ua", "macro_f1"):
            raise ValueError(f"train.metric: expected accuracy, ua or macro_f1, got {self.train.metric!r}")
        if self.encode.dtype not in ("float32", "float16"):
            raise ValueError(f"encode.dtype: expected float32 or float16, got {self.encode.dtype!r}")
        if self.encode.features_in_memory not in ("auto", "always", "never"):
            raise ValueError("encode.features_in_memory: expected auto, always or never, got "
                             f"{self.encode.features_in_memory!r}")
        # checked here so that a bad value fails before any feature is encoded, not mid-training
        for key, value, least in (("train.batch_size", self.train.batch_size, 1),
                                  ("train.max_steps", self.train.max_steps, 0),
                                  ("train.valid_every", self.train.valid_every, 1),
                                  ("train.patience", self.train.patience, 0),
                                  ("train.crop_frames", self.train.crop_frames, 0),
                                  ("encode.batch_size", self.encode.batch_size, 1)):
            if value < least:
                raise ValueError(f"{key}: expected an integer >= {least}, got {value}")
        check_finite(self.finetune, "finetune")
        ft = self.finetune
        if ft.encoder_lr < 0 or ft.batch_seconds <= 0 or ft.max_seconds < 0:
            raise ValueError("finetune: expected encoder_lr >= 0, batch_seconds > 0 and max_seconds >= 0, got "
                             f"{ft.encoder_lr}, {ft.batch_seconds} and {ft.max_seconds}")


def downstream_config(raw: dict | None, where: str = "config") -> DownstreamConfig:
    """Plain dict (YAML) -> :class:`DownstreamConfig`, refusing unknown keys. A ``head`` section
    without a ``name`` (e.g. only ``head.hidden_dim=32`` overridden) gets ``superb_utterance``."""
    raw = dict(raw or {})
    if isinstance(raw.get("head"), dict) and "name" not in raw["head"]:
        raw["head"] = {"name": "superb_utterance", **raw["head"]}
    cfg = from_dict(DownstreamConfig, raw, where=where)
    build_head(cfg.head, 1, 2)  # validates the head name and keys now, not after encoding
    return cfg


def load_downstream_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                           label: str | None = None) -> DownstreamConfig:
    """A downstream YAML (``recipes/downstream/*.yaml``; None: the defaults) with ``key.sub=value``
    ``overrides`` applied and ``label``, when given, as ``task.label``. A config that names no label
    field is an error (every verb needs one)."""
    from speechssl.config import ConfigError, apply_overrides, load_yaml, override_named_in

    raw = load_yaml(path) if path else {}
    raw = apply_overrides(raw, list(overrides))
    if label:
        raw.setdefault("task", {})["label"] = label
    try:
        cfg = downstream_config(raw, where="")
    except ConfigError as exc:  # name the override or the file the bad key came from
        culprit = override_named_in(str(exc), overrides)
        if culprit is not None:
            raise ConfigError(f"override {culprit!r}" + (f" (on {path})" if path else "") + f": {exc}") from None
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None
    if not cfg.task.label:
        raise ValueError("no label field: pass --label FIELD (or task.label in the config)")
    return cfg


class DownstreamModel(nn.Module):
    """Featurizer over the selected layers + a head.

    ``forward(stacked[B, layers, T, D], lengths[B])`` -> logits [B, C] (utterance) or [B, T, C] (frame).
    """

    def __init__(self, featurizer: Featurizer, head: Head, labels: Sequence[str], meta: dict[str, Any]):
        super().__init__()
        self.featurizer = featurizer
        self.head = head
        self.labels = list(labels)
        self.meta = dict(meta)

    @property
    def level(self) -> str:
        return self.head.level

    @property
    def layers(self) -> list[str]:
        return self.featurizer.layer_names

    def forward(self, stacked: torch.Tensor, lengths: torch.Tensor, normalized: bool = False) -> torch.Tensor:
        return self.head(self.featurizer(stacked, normalized), lengths)

    def config_dict(self) -> dict:
        return {
            "format_version": MODEL_FORMAT_VERSION,
            "labels": self.labels,
            "level": self.level,
            "layers": self.layers,
            "input_dim": self.head.input_dim,
            "featurizer": to_dict(self.featurizer.config),
            "head": self.head.config_dict(),
            **self.meta,
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``model.safetensors`` + ``model.json`` into ``folder`` (atomically per file)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(folder / MODEL_WEIGHTS) as tmp:
            save_file(state, str(tmp))
        atomic_write_json(folder / MODEL_CONFIG, self.config_dict())
        return folder


def build_downstream_model(
    cfg: DownstreamConfig, layer_names: Sequence[str], input_dim: int, labels: Sequence[str], meta: dict
) -> DownstreamModel:
    featurizer = Featurizer(list(layer_names), cfg.featurizer)
    head = build_head(cfg.head, input_dim, len(labels))
    return DownstreamModel(featurizer, head, labels, meta)


def load_downstream_model(folder: str | Path) -> DownstreamModel:
    """Rebuild a saved downstream model (strict weight loading)."""
    folder = Path(folder)
    path = folder / MODEL_CONFIG
    cfg = read_versioned_json(path, MODEL_FORMAT_VERSION, "a downstream model")
    for key in ("labels", "layers", "input_dim", "featurizer", "head"):
        if key not in cfg:
            raise ValueError(f"{path}: key {key!r} is missing")
    featurizer = Featurizer(cfg["layers"], from_dict(FeaturizerConfig, cfg["featurizer"], where=f"{path}:featurizer"))
    head = build_head(cfg["head"], int(cfg["input_dim"]), len(cfg["labels"]))
    known = {"format_version", "labels", "level", "layers", "input_dim", "featurizer", "head"}
    model = DownstreamModel(featurizer, head, cfg["labels"], {k: v for k, v in cfg.items() if k not in known})
    weights = folder / MODEL_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{folder}: {MODEL_WEIGHTS} is missing")
    missing, unexpected = model.load_state_dict(read_safetensors(weights), strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: weights do not fit {path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    return model
