"""The pretraining engine shared by every SSL model.

::

    from speechssl.train import load_pretrain_config, pretrain
    cfg = load_pretrain_config("recipes/pretrain/apc_tiny.yaml", ["train.max_steps=100"])
    result = pretrain(cfg, "data/train.jsonl", "data/dev.jsonl", "exp/apc")   # resumes if exp/apc has checkpoints

Modules: ``config`` (recipe dataclasses + overrides), ``trainer`` (the loop), ``batches`` (batch
arithmetic, loaders), ``checkpoint`` (atomic, weights_only checkpoints, RNG states, --init-from),
``optim`` (Adam/AdamW, warm-up + constant/linear/cosine), ``distributed`` (torchrun/DDP),
``metrics`` (metrics.jsonl, TensorBoard, loss-curve PNG).
"""

from speechssl.train.config import (
    DataConfig,
    OptimConfig,
    PretrainConfig,
    TrainConfig,
    load_pretrain_config,
)
from speechssl.train.trainer import PretrainResult, Trainer, TrainingError, pretrain

__all__ = [
    "DataConfig",
    "OptimConfig",
    "PretrainConfig",
    "PretrainResult",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "load_pretrain_config",
    "pretrain",
]
