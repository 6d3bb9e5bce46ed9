"""torch.distributed plumbing for the Trainer.

``speechssl pretrain`` under ``torchrun --nproc_per_node N`` (or ``--nnodes``, or SLURM via
torchrun) reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` from the environment and joins the
process group: NCCL on GPUs, gloo on CPU. Data are sharded by rank (every rank builds the same
global batch list and takes batches ``rank::world_size``); gradient accumulation is derived from
the world size so the effective batch in seconds does not change.

Models are wrapped in ``DistributedDataParallel(find_unused_parameters=False)``: every parameter
must get a gradient in every step (speechssl models are written that way). A model that leaves
some parameters unused in some steps must set ``train.find_unused_parameters=true`` (slower: DDP
then walks the autograd graph after every forward).
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import torch
import torch.distributed as dist

from speechssl.config import ConfigError


@dataclasses.dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> tuple[DistInfo, bool]:
    """Join the process group described by the environment (if any).

    Returns:
        (info, created): ``created`` is True when this call initialised the group (the caller
        then destroys it at the end).
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), False
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, world, local_rank), True


def all_reduce_max(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Element-wise maximum of ``values`` over ranks (identity without distribution)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def gather_objects(obj, info: DistInfo) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def resolve_device(kind: str) -> torch.device:
    """train.device (auto | cpu | cuda) -> the torch device, or a ConfigError when CUDA is missing."""
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use train.device=cpu or auto")
    return torch.device(kind)
