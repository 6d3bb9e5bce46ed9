"""The model contract shared by every SSL family, the Trainer and the upstream API.

Every family lives in its own file (``apc.py``, ``cpc.py``, ``wav2vec2.py``...) and
registers ``MODELS[name] = ModelSpec(ConfigCls, build_fn)``. A model:

* owns its ``frontend`` (a :class:`speechssl.features.base.Frontend`), so the preprocessing
  always travels with the weights;
* computes its pretext loss from a batch::

      out = model.loss(batch)        # -> LossOutput(loss=scalar fp32 tensor, metrics={...})
      # batch["wavs"]: [B, L] float32 16 kHz zero-padded; batch["lengths"]: [B] samples;
      # batch["ids"]: list[str]; label fields (e.g. batch["speaker"]: list[str]) when present

* exposes frozen features without any masking or dropout::

      enc = model.encode(wavs, lengths)   # -> EncoderOutput

* may update schedules per optimiser step (``model.step_update(step)``; e.g. Gumbel
  temperature, which must live in a buffer so checkpoints carry it).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from speechssl.config import from_dict, to_dict
from speechssl.registry import Registry


@dataclasses.dataclass
class EncoderOutput:
    """Frozen-encoder features.

    Attributes:
        hidden_states: list of [batch, frames, dim] tensors, one per named layer, all with the
            same number of frames.
        lengths: [batch] number of valid frames of each utterance.
        layer_names: one name per hidden state, e.g. ``["latent", "layer_1", ..., "context"]``.
        frame_shift: samples (at 16 kHz) between frames.
    """

    hidden_states: list[torch.Tensor]
    lengths: torch.Tensor
    layer_names: list[str]
    frame_shift: int

    def layer(self, name: str) -> torch.Tensor:
        if name not in self.layer_names:
            raise KeyError(f"unknown layer {name!r}; layers: {', '.join(self.layer_names)}")
        return self.hidden_states[self.layer_names.index(name)]


@dataclasses.dataclass
class LossOutput:
    """``loss``: scalar fp32 tensor to minimise. ``metrics``: floats to log (loss terms, accuracy...)."""

    loss: torch.Tensor
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


class SSLModel(nn.Module, abc.ABC):
    """Base class of every pretrainable model (see the module docstring)."""

    name: ClassVar[str] = ""
    #: State-dict key prefixes of parameters that depend on the pretext targets (HuBERT's head: label
    #: embeddings for K classes). ``--init-from`` weights of another shape under these prefixes (another
    #: K) are skipped and the parameters keep their fresh init; every other weight must fit.
    target_dependent: ClassVar[tuple[str, ...]] = ()
    frontend: nn.Module

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    @property
    @abc.abstractmethod
    def min_samples(self) -> int:
        """Shortest waveform (samples) that yields a usable training example."""
        ...

    @property
    @abc.abstractmethod
    def layer_names(self) -> list[str]:
        ...

    @property
    @abc.abstractmethod
    def frame_shift(self) -> int:
        ...

    @abc.abstractmethod
    def loss(self, batch: Mapping[str, Any]) -> LossOutput:
        ...

    @abc.abstractmethod
    def encode(self, wavs: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        ...

    def check_lengths(self, wavs: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """``lengths`` [batch] as a long tensor on ``wavs``' device (all of ``wavs`` [batch, samples]
        when None); an utterance shorter than :attr:`min_samples` is a ValueError naming it."""
        if wavs.dim() != 2:
            raise ValueError(f"{self.name}: expected wavs [batch, samples], got shape {tuple(wavs.shape)}")
        if lengths is None:
            lengths = torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long, device=wavs.device)
        lengths = torch.as_tensor(lengths, device=wavs.device).long()
        short = (lengths < self.min_samples).nonzero().flatten().tolist()
        if short:
            raise ValueError(
                f"{self.name}: utterance(s) {short} have {lengths[short].tolist()} samples, fewer than the "
                f"model's receptive field of {self.min_samples} samples ({self.min_samples / 16000:.3f} s); "
                "pad or drop them")
        return lengths

    def step_update(self, step: int) -> None:
        """Called after every optimiser step with the new step count. Default: nothing."""

    def config_dict(self) -> dict:
        return {"name": self.name, **to_dict(self.config)}

    def released_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a released encoder holds. Default: the whole state dict. A model with an EMA
        teacher (:mod:`speechssl.modules.ema`) leaves the teacher out, or puts its weights in the
        student's place (``release: teacher``)."""
        return self.state_dict()

    def complete_state(self, missing: list[str]) -> list[str]:
        """Called after a non-strict load with the keys the loaded weights lacked; a model rebuilds
        what it can derive from the rest (an EMA teacher from its student) and returns the keys still
        missing. Default: nothing is derivable."""
        return list(missing)


class GradMultiply(torch.autograd.Function):
    """Identity forward; gradient multiplied by ``scale`` (fairseq ``GradMultiply``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: D102
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        return grad * ctx.scale, None



def transformer_layer_names(num_blocks: int) -> list[str]:
    """The named layers of a frame encoder followed by ``num_blocks`` transformer blocks."""
    return ["latent", *(f"layer_{i + 1}" for i in range(num_blocks)), "context"]


class TransformerLayers:
    """``layer_names`` of a model whose transformer blocks are ``self.encoder.layers`` (override
    :attr:`num_blocks` when they live elsewhere)."""

    @property
    def num_blocks(self) -> int:
        return len(self.encoder.layers)

    @property
    def layer_names(self) -> list[str]:
        return transformer_layer_names(self.num_blocks)


class FeatureEncoderFrames(TransformerLayers):
    """Frame arithmetic of ``self.frontend`` followed by a strided ``self.feature_encoder`` (with
    ``receptive_field`` and ``stride`` in frontend frames and ``out_lengths``): wav2vec 2.0, HuBERT,
    data2vec 2.0. Mix in before :class:`SSLModel`."""

    @property
    def min_samples(self) -> int:
        return int(self.frontend.frame_length + (self.feature_encoder.receptive_field - 1) * self.frontend.frame_shift)

    @property
    def frame_shift(self) -> int:
        return int(self.frontend.frame_shift * self.feature_encoder.stride)

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Valid frames for ``num_samples`` [batch] samples (frontend then feature-encoder formula)."""
        return self.feature_encoder.out_lengths(self.frontend.num_frames(num_samples))

    def training_conv_features(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``self.conv_features`` for the loss: the feature encoder's gradient scaled by
        ``config.feature_grad_mult`` (fairseq), or no graph at all when it is 0 (a frozen encoder)."""
        mult = self.config.feature_grad_mult
        if mult <= 0:
            with torch.no_grad():
                return self.conv_features(wavs, lengths)
        feats, frame_lengths = self.conv_features(wavs, lengths)
        return (GradMultiply.apply(feats, mult) if mult != 1.0 else feats), frame_lengths


class StackedFrames(TransformerLayers):
    """Frame arithmetic of ``self.frontend`` frames stacked ``config.stack_frames`` at a time (BEST-RQ,
    TERA). Mix in before :class:`SSLModel`."""

    @property
    def min_samples(self) -> int:
        return int(self.frontend.frame_length + (self.config.stack_frames - 1) * self.frontend.frame_shift)

    @property
    def frame_shift(self) -> int:
        return int(self.frontend.frame_shift * self.config.stack_frames)

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Valid model frames for ``num_samples`` [batch] samples."""
        return torch.div(self.frontend.num_frames(num_samples), self.config.stack_frames, rounding_mode="floor")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    config_cls: type
    build: Callable[[Any], SSLModel]


MODELS: Registry[ModelSpec] = Registry("model")


class _SkipRandomInit(TorchFunctionMode):
    """While active (this thread only), random fills return their tensor untouched.

    ``torch.nn.init``'s random initialisers either dispatch through ``__torch_function__`` themselves
    (``uniform_``, ``normal_``, ``kaiming_uniform_``) or end in ``Tensor.uniform_`` /
    ``Tensor.normal_`` (``xavier_*``, ``kaiming_normal_``, ``trunc_normal_``), so skipping these
    skips the costly part of building a model whose every parameter is loaded right after. Unlike
    patching ``torch.nn.init``, a mode touches no global state: other threads build normally.
    Deterministic fills (``zeros_``, ``ones_``, ``fill_``) and computed buffers (window
    functions, filterbanks) still run, so non-persistent buffers are right.
    """

    SKIP = frozenset({torch.nn.init.uniform_, torch.nn.init.normal_, torch.nn.init.kaiming_uniform_,
                      torch.Tensor.uniform_, torch.Tensor.normal_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SKIP:  # the filled tensor: Tensor methods' self, or nn.init's ``tensor``
            return args[0] if args else (kwargs or {})["tensor"]
        return func(*args, **(kwargs or {}))


def build_model(cfg: Mapping[str, Any], init_weights: bool = True) -> SSLModel:
    """``{"name": "apc", ...config fields}`` -> model. Unknown names/keys list the choices.

    ``init_weights=False`` skips the random initialisation of the parameters (0.5 s for
    wav2vec 2.0 Base on 2 CPU cores; :class:`_SkipRandomInit`) for a model whose every parameter
    is loaded right after with a strict ``load_state_dict``; they hold arbitrary values until then.
    """
    import speechssl.models  # noqa: F401  (registers the built-in families)

    cfg = dict(cfg)
    if "name" not in cfg:
        raise ValueError(f"model config needs a 'name'; choices: {', '.join(sorted(MODELS))}")
    name = cfg.pop("name")
    spec = MODELS[name]
    config = from_dict(spec.config_cls, cfg, where="model")
    if init_weights:
        return spec.build(config)
    with _SkipRandomInit():
        return spec.build(config)


def build_loaded(cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor], where: str,
                 error: type[Exception] = ValueError) -> SSLModel:
    """Build ``cfg``'s model without random init, load ``state`` strictly, return it in eval mode.

    The one "rebuild a saved model" path of released encoders and training checkpoints. Raises
    ``error`` naming ``where`` and the missing / unexpected keys (first ten of each).
    """
    model = build_model(cfg, init_weights=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = model.complete_state(list(missing))
    if missing or unexpected:
        raise error(f"{where}: weights do not fit model {cfg.get('name')!r}: missing {sorted(missing)[:10]}, "
                    f"unexpected {sorted(unexpected)[:10]}")
    return model.eval()
