"""Typed pretraining configuration: the ``model / data / optim / train`` sections of a recipe.

A recipe is a YAML file::

    model:                      # name + the family's config dataclass fields
      name: apc
      frontend: {name: logmel, n_mels: 80}
    data:  {max_batch_seconds: 64.0, crop_seconds: 4.0}
    optim: {name: adam, lr: 1.0e-4}
    train: {max_steps: 1000}

and every key can be overridden on the command line as ``section.key=value``
(``optim.lr=1e-3``, ``model.frontend.n_mels=40``)::

    cfg = load_pretrain_config("recipes/pretrain/apc.yaml", ["train.max_steps=10"])
    cfg.optim.lr, cfg.model_name, cfg.model.num_layers     # cfg.model: e.g. an APCConfig

Unknown keys, sections and model names fail with the list of valid ones, and so do NaN or
infinite numbers and values out of range, all before any work starts. The ``model`` section is
resolved once into the family's config dataclass, which checks its values; fields with a fixed
set of values are ``Literal[...]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from speechssl.config import (
    ConfigError,
    apply_overrides,
    check_finite,
    from_dict,
    load_yaml,
    override_named_in,
    to_dict,
)
from speechssl.models.apc import APCConfig
from speechssl.models.barlow import BarlowConfig
from speechssl.models.bestrq import BestRQConfig
from speechssl.models.byola import BYOLAConfig
from speechssl.models.cpc import CPCConfig
from speechssl.models.data2vec2 import Data2Vec2Config
from speechssl.models.hubert import HubertConfig
from speechssl.models.mae import MAEConfig
from speechssl.models.simclr import SimCLRConfig
from speechssl.models.tera import TERAConfig
from speechssl.models.wav2vec2 import Wav2Vec2Config
from speechssl.train.probe import ProbeConfig

#: The model section of a recipe: the config dataclass of one family of ``MODELS``. Families
#: registered elsewhere (plug-ins, tests) are accepted at run time by their registered class.
ModelConfig = (APCConfig | BarlowConfig | BestRQConfig | BYOLAConfig | CPCConfig | Data2Vec2Config | HubertConfig
               | MAEConfig | SimCLRConfig | TERAConfig | Wav2Vec2Config)


@dataclasses.dataclass
class DataConfig:
    """How training/validation batches are made (all durations in seconds of 16 kHz audio)."""

    # Effective batch per optimiser step, in padded seconds of audio, all ranks together.
    max_batch_seconds: float = 64.0
    # Most seconds one forward pass may hold (per rank). None: no accumulation beyond what the
    # world size needs. Accumulation = ceil(max_batch_seconds / (world_size * device_batch_seconds)).
    device_batch_seconds: float | None = None
    # Random crop length of training utterances (None: no crop, whole utterances).
    crop_seconds: float | None = 4.0
    # Deterministic centre crop of validation utterances (None: same as crop_seconds).
    valid_crop_seconds: float | None = None
    # Shorter utterances are dropped (never below the model's min_samples either).
    min_seconds: float = 0.5
    # DataLoader worker processes (0: load in the training process).
    num_workers: int = 0
    # Validation batch budget per forward pass (None: same as a training forward pass).
    valid_batch_seconds: float | None = None
    # Manifest fields copied into every batch as lists (e.g. [speaker] for CPC's same-speaker
    # negatives); every record must have them.
    label_fields: list[str] = dataclasses.field(default_factory=list)
    # Frame-target folders written by `speechssl targets assign`, one per target set of the model
    # (HuBERT: model.num_classes); they must label every utterance of the train and valid manifests.
    targets: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        check_finite(self, "data")
        if self.max_batch_seconds <= 0:
            raise ConfigError(f"data.max_batch_seconds must be > 0, got {self.max_batch_seconds}")
        if self.device_batch_seconds is not None and self.device_batch_seconds <= 0:
            raise ConfigError(f"data.device_batch_seconds must be > 0, got {self.device_batch_seconds}")
        for key in ("crop_seconds", "valid_crop_seconds", "valid_batch_seconds"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"data.{key} must be > 0 or null, got {value}")
        if self.min_seconds < 0:
            raise ConfigError(f"data.min_seconds must be >= 0, got {self.min_seconds}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")


@dataclasses.dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule."""

    name: Literal["adam", "adamw"] = "adam"
    lr: float = 1.0e-4  # peak learning rate (reached at the end of warm-up)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1.0e-8
    weight_decay: float = 0.0  # L2 for adam, decoupled for adamw
    # After warm-up: constant | linear decay | cosine decay, down to final_lr_ratio * lr at max_steps.
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    final_lr_ratio: float = 0.0  # lr at train.max_steps / lr (linear and cosine only)
    clip_norm: float | None = 1.0  # max global gradient L2 norm (None: no clipping)

    def __post_init__(self) -> None:
        check_finite(self, "optim")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas must be in [0, 1), got {list(self.betas)}")
        if self.eps <= 0:
            raise ConfigError(f"optim.eps must be > 0, got {self.eps}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.final_lr_ratio <= 1.0:
            raise ConfigError(f"optim.final_lr_ratio must be in [0, 1], got {self.final_lr_ratio}")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ConfigError(f"optim.clip_norm must be > 0 or null, got {self.clip_norm}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")


@dataclasses.dataclass
class TrainConfig:
    """Length of training, precision, logging, validation and checkpointing."""

    max_steps: int = 1000  # optimiser steps; 0 releases the randomly initialised model (a control)
    # a control (max_steps=0): the name of the encoder it is the control of, recorded in the released
    # config.json ("control_of") so that summaries pair them whatever their folder names
    control_of: str | None = None
    max_minutes: float | None = None  # wall-clock budget; stops cleanly with a checkpoint + encoder
    seed: int = 0  # one seed for python, numpy, torch, crops and batch order
    # fp32 | bf16 (autocast, CPU or CUDA) | fp16 (autocast + GradScaler, CUDA only). Losses are fp32.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    log_every: int = 10  # steps between metrics.jsonl / TensorBoard lines
    valid_every: int = 100  # steps between validation passes (0: only at the end)
    valid_max_batches: int | None = None  # cap validation batches (None: the whole manifest)
    ckpt_every_steps: int | None = 500  # steps between checkpoints (None: off)
    ckpt_every_minutes: float | None = None  # minutes between checkpoints (None: off)
    keep_last: int = 3  # checkpoints kept (older ones are deleted)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_bad_steps: int = 5  # consecutive non-finite losses/gradients before stopping with an error
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    # DDP: only needed if some parameters get no gradient in some steps (slower; see train/distributed.py).
    find_unused_parameters: bool = False
    num_threads: int | None = None  # torch CPU threads per process (None: torch's default / OMP_NUM_THREADS)
    progress: bool = True  # tqdm bar on rank 0 when stderr is a terminal (false: never a bar)
    # Without a bar (not a terminal, or progress: false), a one-line progress log this often (null: none).
    progress_every_seconds: float | None = 30.0
    plot: bool = True  # loss-curve PNG at the end
    # torch.compile the model's blocks in place (speechssl/compilation.py; checkpoints unchanged). Off:
    # on CPU it was measured no faster than the eager fast paths, after minutes of compiling
    # (tools/bench/run_all.py --only compile). compile_backend aot_eager/eager: debugging, tests.
    compile: bool = False
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)  # live linear probe (train/probe.py)

    def __post_init__(self) -> None:
        check_finite(self, "train")
        if self.max_steps < 0:
            raise ConfigError(f"train.max_steps must be >= 0 (0 releases the initial weights), got {self.max_steps}")
        if self.control_of is not None and self.max_steps != 0:
            raise ConfigError(f"train.control_of={self.control_of!r} names what a random-init control is the control "
                              f"of; it needs train.max_steps=0, got {self.max_steps}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"train.max_minutes must be > 0 or null, got {self.max_minutes}")
        if self.log_every < 1:
            raise ConfigError(f"train.log_every must be >= 1, got {self.log_every}")
        if self.valid_every < 0:
            raise ConfigError(f"train.valid_every must be >= 0, got {self.valid_every}")
        if self.ckpt_every_steps is not None and self.ckpt_every_steps < 1:
            raise ConfigError(f"train.ckpt_every_steps must be >= 1 or null, got {self.ckpt_every_steps}")
        if self.ckpt_every_minutes is not None and self.ckpt_every_minutes <= 0:
            raise ConfigError(
                f"train.ckpt_every_minutes must be > 0 or null, got {self.ckpt_every_minutes}"
            )
        if self.keep_last < 1:
            raise ConfigError(f"train.keep_last must be >= 1, got {self.keep_last}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"train.num_threads must be >= 1 or null, got {self.num_threads}")
        if self.max_bad_steps < 1:
            raise ConfigError(f"train.max_bad_steps must be >= 1, got {self.max_bad_steps}")
        if self.valid_max_batches is not None and self.valid_max_batches < 1:
            raise ConfigError(f"train.valid_max_batches must be >= 1 or null, got {self.valid_max_batches}")
        if self.progress_every_seconds is not None and self.progress_every_seconds <= 0:
            raise ConfigError(
                f"train.progress_every_seconds must be > 0 or null, got {self.progress_every_seconds}")


def model_name_of(model: Any) -> str:
    """The ``MODELS`` name whose config class ``model`` is an instance of.

    Raises:
        ConfigError: the class is not registered, or registered under several names.
    """
    import speechssl.models  # noqa: F401  (registers the built-in families)
    from speechssl.models.base import MODELS

    names = [name for name, spec in MODELS.items() if type(model) is spec.config_cls]
    if len(names) != 1:
        raise ConfigError(
            f"model: {type(model).__name__} is registered as {names or 'no model'} in MODELS; pass the model "
            f"section as {{'name': ..., ...}}; choices: {', '.join(sorted(MODELS))}"
        )
    return names[0]


@dataclasses.dataclass
class PretrainConfig:
    """A whole recipe, typed.

    ``model`` is the family's config dataclass (``MODELS[name].config_cls``: :data:`ModelConfig`
    for the built-in families), resolved once from the YAML section ``{"name": ..., **fields}``
    and carried as that object; :attr:`model_name` says which family. A mapping with a ``name``
    is accepted too and resolved here, so ``PretrainConfig(model={"name": "apc"})`` works.
    :meth:`to_dict` writes the model section back as ``{"name": ..., **fields}`` (the YAML and
    checkpoint format).
    """

    model: ModelConfig | Mapping[str, Any] = dataclasses.field(default_factory=dict)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if isinstance(self.model, Mapping):
            self._model_name, self.model = resolve_model_section(self.model)
        elif dataclasses.is_dataclass(self.model) and not isinstance(self.model, type):
            self._model_name = model_name_of(self.model)
        else:
            raise ConfigError(f"model: expected a model config or a mapping with a 'name', got {self.model!r}")
        for section, cls in (("data", DataConfig), ("optim", OptimConfig), ("train", TrainConfig)):
            if not isinstance(getattr(self, section), cls):
                raise ConfigError(f"{section}: expected {cls.__name__}, got {getattr(self, section)!r}")

    @property
    def model_name(self) -> str:
        """The family's name in ``MODELS`` (``"apc"``...)."""
        return self._model_name

    def model_dict(self) -> dict[str, Any]:
        """The model section as saved: ``{"name": ..., **fields}``."""
        return {"name": self._model_name, **to_dict(self.model)}

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_dict(), "data": to_dict(self.data), "optim": to_dict(self.optim),
                "train": to_dict(self.train)}


SECTIONS = ("model", "data", "optim", "train")


def resolve_model_section(model: Mapping[str, Any] | None, where: str = "model") -> tuple[str, Any]:
    """Check a ``model`` section against its family's config dataclass (which validates its values
    in ``__post_init__``); return ``(name, config object)`` with every default filled in.

    Raises:
        ConfigError: no ``name``, an unknown key (the message lists the valid keys) or a bad value.
        UnknownNameError (a KeyError): unknown model name (the message lists the registered ones).
    """
    import speechssl.models  # noqa: F401  (registers the built-in families)
    from speechssl.models.base import MODELS

    if not isinstance(model, Mapping) or "name" not in model:
        raise ConfigError(
            f"{where}: the model section needs a 'name'; choices: {', '.join(sorted(MODELS))}"
        )
    fields = dict(model)
    name = fields.pop("name")
    spec = MODELS[name]
    try:
        return name, from_dict(spec.config_cls, fields, where=where)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # some families' __post_init__ raise plain ValueError
        raise ConfigError(f"{where}: {exc}") from None


def pretrain_config_from_dict(raw: Mapping[str, Any], source: str = "config") -> PretrainConfig:
    """Typed config from a plain dict (YAML contents after overrides).

    The model section is resolved once into its family's config dataclass; the model itself is
    built only by the Trainer (whose builder errors are config errors too, raised before any
    file is written).

    Args:
        raw: ``{"model": {...}, "data": {...}, "optim": {...}, "train": {...}}``.
        source: name of the file, for error messages.
    """
    raw = dict(raw)
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(unknown)}; valid sections: {', '.join(SECTIONS)}")
    if "model" not in raw:
        raise ConfigError(f"{source}: the 'model' section is missing")
    try:
        return PretrainConfig(
            model=raw["model"],
            data=from_dict(DataConfig, raw.get("data"), where="data"),
            optim=from_dict(OptimConfig, raw.get("optim"), where="optim"),
            train=from_dict(TrainConfig, raw.get("train"), where="train"),
        )
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_pretrain_config(path: str | Path | None, overrides: Sequence[str] = ()) -> PretrainConfig:
    """Read a recipe YAML (or start from defaults when ``path`` is None), apply ``key.sub=value``
    overrides, and return the validated :class:`PretrainConfig`."""
    raw = load_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "config"
    for text in overrides:
        section = text.split("=", 1)[0].split(".", 1)[0].strip()
        if section not in SECTIONS:
            raise ConfigError(
                f"override {text!r}: unknown section {section!r}; valid sections: {', '.join(SECTIONS)}"
            )
    raw = apply_overrides(raw, list(overrides))
    try:
        return pretrain_config_from_dict(raw, source=source)
    except ConfigError as exc:
        # an error about a key set on the command line names that override, not the file
        culprit = override_named_in(str(exc), overrides)
        if culprit is None:
            raise
        text = str(exc).removeprefix(f"{source}: ")
        raise ConfigError(f"override {culprit!r} (on {source}): {text}") from None



def save_pretrain_config(cfg: PretrainConfig, path: str | Path, extra: Mapping[str, Any] | None = None) -> None:
    """Write the resolved config (plus an ``info`` section with run metadata) atomically as YAML."""
    from speechssl.config import save_yaml

    data = cfg.to_dict()
    if extra:
        data["info"] = to_dict(dict(extra))
    save_yaml(data, path)


def read_resolved_config(path: str | Path) -> PretrainConfig:
    """Read back a ``config.yaml`` written by :func:`save_pretrain_config` (the ``info`` section is ignored)."""
    raw = load_yaml(path)
    raw.pop("info", None)
    return pretrain_config_from_dict(raw, source=str(path))
