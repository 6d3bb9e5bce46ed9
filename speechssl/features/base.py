"""The frontend contract shared by every model, encoder and baseline.

A frontend turns 16 kHz waveforms into frames::

    feats, feat_lengths = frontend(wavs, lengths)
    # wavs: [batch, samples] float32 at 16 kHz, zero-padded
    # lengths: [batch] valid samples
    # feats: [batch, frames, out_dim]; feat_lengths: [batch] valid frames

Frame-count formula (no centring, Kaldi ``snip_edges=True``)::

    frames(L) = 0                               if L < frame_length
              = 1 + (L - frame_length) // frame_shift   otherwise

Frame ``t`` covers samples ``[t * frame_shift, t * frame_shift + frame_length)``, so the valid
frames of an utterance never see padding and batched output equals one-at-a-time output.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Mapping

import torch
from torch import nn

from speechssl.config import from_dict, to_dict
from speechssl.registry import Registry

SAMPLE_RATE = 16000


def num_frames(num_samples: int | torch.Tensor, frame_length: int, frame_shift: int):
    """Frames a signal of ``num_samples`` samples gives (see the module docstring)."""
    if isinstance(num_samples, torch.Tensor):
        n = torch.div(num_samples - frame_length, frame_shift, rounding_mode="floor") + 1
        return torch.clamp(n, min=0)
    if num_samples < frame_length:
        return 0
    return 1 + (num_samples - frame_length) // frame_shift


class Frontend(nn.Module, abc.ABC):
    """Base class: subclasses set ``name``, ``config``, ``out_dim``, ``frame_length``, ``frame_shift``."""

    name: str = ""
    out_dim: int
    frame_length: int  # samples per analysis window (the frontend's receptive field)
    frame_shift: int  # samples between frames

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    def num_frames(self, num_samples: int | torch.Tensor):
        return num_frames(num_samples, self.frame_length, self.frame_shift)

    def to_dict(self) -> dict:
        """``{"name": ..., **config}``: what ``build_frontend`` reads back."""
        return {"name": self.name, **to_dict(self.config)}

    @abc.abstractmethod
    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ...


@dataclasses.dataclass(frozen=True)
class FrontendSpec:
    config_cls: type
    frontend_cls: type[Frontend]


FRONTENDS: Registry[FrontendSpec] = Registry("frontend")


def build_frontend(cfg: Mapping[str, Any] | str) -> Frontend:
    """Build a frontend from ``{"name": "logmel", "n_mels": 80, ...}`` or just a name."""
    import speechssl.features  # noqa: F401  (registers the built-in frontends)

    if isinstance(cfg, str):
        cfg = {"name": cfg}
    cfg = dict(cfg)
    if "name" not in cfg:
        raise ValueError(f"frontend config needs a 'name'; choices: {', '.join(sorted(FRONTENDS))}")
    name = cfg.pop("name")
    spec = FRONTENDS[name]
    config = from_dict(spec.config_cls, cfg, where=f"frontend({name})")
    return spec.frontend_cls(config)
