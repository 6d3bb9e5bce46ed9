"""Downstream heads, registered by name in :data:`HEADS`.

Every head maps featurized frames to logits::

    logits = head(x, lengths)
    # x: [batch, frames, dim]; lengths: [batch] valid frames
    # utterance heads -> [batch, classes]; frame heads -> [batch, frames, classes]

=================  =========  =====================================================================
name               level      architecture
=================  =========  =====================================================================
superb_utterance   utterance  Linear(D, 256) -> mean over valid frames -> Linear(256, C) (SUPERB ER/SID)
speaker_asp        utterance  Linear(D, H)+ReLU x n -> attentive statistics pooling -> Linear(2H, E)+ReLU
                              -> Linear(E, C) (x-vector style, Okabe et al. 2018)
linear_probe       utterance  mean+std over valid frames -> Linear(2D, C)
frame_linear       frame      Linear(D, C) on every frame
=================  =========  =====================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from speechssl.config import from_dict, to_dict
from speechssl.downstream.pooling import AttentiveStatsPool, masked_mean, masked_mean_std
from speechssl.registry import Registry


class Head(nn.Module):
    """Base class: ``level`` is ``"utterance"`` or ``"frame"``."""

    level: str = "utterance"
    name: str = ""
    # True for heads whose output depends on the frames only through their mean: the trainer
    # then feeds per-layer mean features (one frame per utterance), exactly equal and much faster.
    pools_linearly: bool = False

    def __init__(self, config: Any, input_dim: int, num_classes: int):
        super().__init__()
        if input_dim < 1 or num_classes < 2:
            raise ValueError(f"head {self.name!r} needs input_dim >= 1 and >= 2 classes, got {input_dim}, {num_classes}")
        self.config = config
        self.input_dim = input_dim
        self.num_classes = num_classes

    def config_dict(self) -> dict:
        return {"name": self.name, **to_dict(self.config)}


@dataclasses.dataclass
class SuperbUtteranceConfig:
    hidden_dim: int = 256  # SUPERB ER/SID projection size
    dropout: float = 0.0  # dropout after the projection (SUPERB: none)


class SuperbUtteranceHead(Head):
    """SUPERB utterance classifier (s3prl ``downstream/emotion`` ``expert.py`` with ``MeanPooling``)."""

    name = "superb_utterance"

    def __init__(self, config: SuperbUtteranceConfig, input_dim: int, num_classes: int):
        super().__init__(config, input_dim, num_classes)
        self.projector = nn.Linear(input_dim, config.hidden_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.hidden_dim, num_classes)

    @property
    def pools_linearly(self) -> bool:
        """True when the output depends on the frames only through their mean (no dropout)."""
        return self.config.dropout == 0.0

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.config.dropout == 0.0 or not self.training:
            # mean(W x + b) == W mean(x) + b: pool first, T times cheaper, same result
            return self.classifier(self.projector(masked_mean(x, lengths)))
        h = self.dropout(self.projector(x))
        return self.classifier(masked_mean(h, lengths))


@dataclasses.dataclass
class SpeakerASPConfig:
    hidden_dim: int = 256  # frame-level layer width
    num_frame_layers: int = 1  # Linear+ReLU frame layers before pooling
    attention_dim: int = 128  # attention MLP width in the pooling
    embedding_dim: int = 256  # utterance embedding (x-vector) size
    dropout: float = 0.0


class SpeakerASPHead(Head):
    """x-vector style speaker classifier with attentive statistics pooling."""

    name = "speaker_asp"

    def __init__(self, config: SpeakerASPConfig, input_dim: int, num_classes: int):
        super().__init__(config, input_dim, num_classes)
        layers: list[nn.Module] = []
        dim = input_dim
        for _ in range(config.num_frame_layers):
            layers += [nn.Linear(dim, config.hidden_dim), nn.ReLU(), nn.Dropout(config.dropout)]
            dim = config.hidden_dim
        self.frame_layers = nn.Sequential(*layers)
        self.pool = AttentiveStatsPool(dim, config.attention_dim)
        self.embedding = nn.Sequential(nn.Linear(2 * dim, config.embedding_dim), nn.ReLU())
        self.classifier = nn.Linear(config.embedding_dim, num_classes)

    def embed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, embedding_dim] speaker embeddings."""
        return self.embedding(self.pool(self.frame_layers(x), lengths))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x, lengths))


@dataclasses.dataclass
class LinearProbeConfig:
    pooling: str = "mean_std"  # mean_std | mean


class LinearProbeHead(Head):
    """Plain linear probe on pooled features (CPC-style linear evaluation, utterance level)."""

    name = "linear_probe"

    def __init__(self, config: LinearProbeConfig, input_dim: int, num_classes: int):
        super().__init__(config, input_dim, num_classes)
        if config.pooling not in ("mean_std", "mean"):
            raise ValueError(f"head.pooling: expected 'mean_std' or 'mean', got {config.pooling!r}")
        factor = 2 if config.pooling == "mean_std" else 1
        self.classifier = nn.Linear(factor * input_dim, num_classes)

    @property
    def pools_linearly(self) -> bool:
        return self.config.pooling == "mean"

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pooled = masked_mean_std(x, lengths) if self.config.pooling == "mean_std" else masked_mean(x, lengths)
        return self.classifier(pooled)


@dataclasses.dataclass
class FrameLinearConfig:
    dropout: float = 0.0


class FrameLinearHead(Head):
    """Frame-level linear classifier (phone/frame-label linear probe, CPC paper section 3.1)."""

    name = "frame_linear"
    level = "frame"

    def __init__(self, config: FrameLinearConfig, input_dim: int, num_classes: int):
        super().__init__(config, input_dim, num_classes)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(input_dim, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(x))


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    config_cls: type
    build: Callable[[Any, int, int], Head]
    level: str


HEADS: Registry[HeadSpec] = Registry("head")
HEADS.register("superb_utterance", HeadSpec(SuperbUtteranceConfig, SuperbUtteranceHead, "utterance"))
HEADS.register("speaker_asp", HeadSpec(SpeakerASPConfig, SpeakerASPHead, "utterance"))
HEADS.register("linear_probe", HeadSpec(LinearProbeConfig, LinearProbeHead, "utterance"))
HEADS.register("frame_linear", HeadSpec(FrameLinearConfig, FrameLinearHead, "frame"))


def head_level(cfg: Mapping[str, Any]) -> str:
    """``"utterance"`` or ``"frame"`` for a head config ``{"name": ...}``."""
    return HEADS[str(cfg.get("name", ""))].level


def build_head(cfg: Mapping[str, Any], input_dim: int, num_classes: int) -> Head:
    """``{"name": "superb_utterance", "hidden_dim": 256}`` -> head. Unknown names/keys list choices."""
    cfg = dict(cfg)
    if "name" not in cfg:
        raise ValueError(f"head config needs a 'name'; choices: {', '.join(sorted(HEADS))}")
    name = cfg.pop("name")
    spec = HEADS[name]
    return spec.build(from_dict(spec.config_cls, cfg, where=f"head({name})"), input_dim, num_classes)
