"""Barlow Twins (Zbontar et al. 2021, facebookresearch/barlowtwins): redundancy reduction between
two views' embeddings. The model, views and encoder are SimCLR's (:mod:`speechssl.models.simclr`);
only the defaults differ: objective ``barlow`` (loss :func:`speechssl.modules.siamese_losses.barlow_twins`:
per-dimension batch normalisation, sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2 with lambda 5e-3,
cross-correlation over the global batch under DDP) and a 3-layer projector (paper: 3 x 8192, here
3 x 1024 for 2 CPU cores). No negatives, so no queue; collapse is prevented by the decorrelation term
and watched by ``embed_eff_rank``.
"""

from __future__ import annotations

import dataclasses

from speechssl.models.base import MODELS, ModelSpec
from speechssl.models.simclr import Objective, SiameseModel, SimCLRConfig, build_simclr


@dataclasses.dataclass
class BarlowConfig(SimCLRConfig):
    """Barlow Twins config: :class:`SimCLRConfig` with objective ``barlow`` and a 3-layer projector."""

    projector: list[int] = dataclasses.field(default_factory=lambda: [1024, 1024, 1024])
    objective: Objective = "barlow"


def barlow_tiny() -> BarlowConfig:
    """Barlow Twins with the tiny TDNN (4 x 128) and a 3 x 1024 projector."""
    return BarlowConfig()


class BarlowModel(SiameseModel):
    """The SimCLR model registered as ``barlow`` (its released encoders rebuild as this family)."""

    name = "barlow"


def build_barlow(cfg: BarlowConfig) -> BarlowModel:
    return build_simclr(cfg, BarlowModel)


MODELS.register("barlow", ModelSpec(BarlowConfig, build_barlow))
