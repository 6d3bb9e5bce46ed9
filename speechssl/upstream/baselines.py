"""Baseline encoders: a frontend (log-Mel, Kaldi fbank, MFCC) as a one-layer encoder.

SUPERB's FBANK row is this kind of upstream; making baselines Encoders lets "SSL vs log-Mel"
run through exactly the same extraction, head and protocol::

    enc = speechssl.load_encoder("logmel")                 # default LogMelConfig
    enc = speechssl.load_encoder("fbank", num_mel_bins=40) # any field of the frontend's config

The single layer is named ``features`` (``context`` and ``latent`` also select it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from speechssl.features.base import FRONTENDS, build_frontend
from speechssl.models.base import EncoderOutput

BASELINES = ("logmel", "fbank", "mfcc")
LAYER_NAME = "features"


class FrontendBackbone(nn.Module):
    """Wraps a frontend so it has the backbone interface of :class:`Encoder`."""

    def __init__(self, frontend: nn.Module):
        super().__init__()
        self.frontend = frontend

    @property
    def layer_names(self) -> list[str]:
        return [LAYER_NAME]

    @property
    def frame_shift(self) -> int:
        return int(self.frontend.frame_shift)

    @property
    def min_samples(self) -> int:
        return int(self.frontend.frame_length)

    def encode(self, wavs: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """wavs [B, L] 16 kHz, lengths [B] -> one hidden state [B, T, out_dim]."""
        feats, feat_lengths = self.frontend(wavs, lengths)
        return EncoderOutput([feats], feat_lengths, [LAYER_NAME], self.frame_shift)


def frontend_option_names(name: str) -> list[str]:
    import dataclasses

    import speechssl.features  # noqa: F401  (registers the frontends)

    return [f.name for f in dataclasses.fields(FRONTENDS[name].config_cls)]


def build_baseline(name: str, frontend_options: dict[str, Any]) -> FrontendBackbone:
    """``build_baseline("fbank", {"num_mel_bins": 40})``; unknown keys list the valid ones."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; baselines: {', '.join(BASELINES)}")
    frontend = build_frontend({"name": name, **frontend_options})
    frontend.eval()
    return FrontendBackbone(frontend)
