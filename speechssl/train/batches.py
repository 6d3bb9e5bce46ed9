"""Batch arithmetic and the micro-batch stream of the Trainer.

The effective batch (``data.max_batch_seconds``, padded seconds per optimiser step over all
ranks) does not depend on the world size::

    accumulation = ceil(max_batch_seconds / (world_size * device_batch_seconds))   (1 if unset)
    micro_batch_seconds = max_batch_seconds / (world_size * accumulation)

Every rank builds the same global list of micro-batches (``SecondsBatchSampler``) and takes every
``world_size``-th one, so 2 ranks x accumulation 1 see exactly the batches that 1 process x
accumulation 2 sees.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from speechssl.config import ConfigError
from speechssl.train.config import DataConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    accumulation: int  # micro-batches per optimiser step on each rank
    micro_seconds: float  # padded seconds of one forward pass
    effective_seconds: float  # padded seconds per optimiser step, all ranks together


def plan_batches(dc: DataConfig, world_size: int, min_samples: int, model_name: str) -> BatchPlan:
    """Accumulation and micro-batch size for ``world_size`` ranks; checks the crop fits.

    Raises:
        ConfigError: the crop does not fit one forward pass, or is shorter than the model's receptive field.
    """
    per_rank = dc.max_batch_seconds / world_size
    accumulation = max(1, math.ceil(per_rank / dc.device_batch_seconds - 1e-9)) if dc.device_batch_seconds else 1
    micro = per_rank / accumulation
    if dc.crop_seconds is not None:
        if dc.crop_seconds > micro + 1e-9:
            raise ConfigError(
                f"data.crop_seconds={dc.crop_seconds} does not fit one forward pass of {micro:.3f} s "
                f"(max_batch_seconds={dc.max_batch_seconds} / world_size={world_size} / accumulation={accumulation}); "
                "lower data.crop_seconds or raise the batch"
            )
        if dc.crop_seconds * 16000 < min_samples:
            raise ConfigError(
                f"data.crop_seconds={dc.crop_seconds} gives {int(dc.crop_seconds * 16000)} samples, fewer than "
                f"model {model_name!r} needs (min_samples={min_samples})"
            )
    return BatchPlan(accumulation, micro, micro * world_size * accumulation)


def build_loader(manifest: Path, dc: DataConfig, batch_seconds: float, crop: float | None, train: bool,
                 seed: int, world_size: int, rank: int, min_samples: int, pin_memory: bool = False,
                 targets: Any = None):
    """A resumable :class:`speechssl.data.AudioLoader` over ``manifest``; with ``targets``
    (:class:`speechssl.targets.labels.FrameTargets`) every batch carries ``"targets"`` [B, T, K].

    Raises:
        ValueError: no utterance is long enough, or the labels do not fit (the message names the manifest).
    """
    from speechssl.data.dataset import make_loader
    from speechssl.data.manifest import read_manifest

    records = read_manifest(manifest)
    if targets is not None:
        targets.check(records, str(manifest))
    try:
        loader = make_loader(
            records, batch_seconds, max_seconds=crop, min_seconds=dc.min_seconds, shuffle=train,
            random_crop=train, seed=seed, num_workers=dc.num_workers, num_replicas=world_size, rank=rank,
            min_samples=min_samples, pin_memory=pin_memory, label_fields=dc.label_fields or None,
            even_ranks=train, targets=targets,  # validation: every utterance once, none repeated to even out the ranks
            skip_unreadable=True)  # a bad file costs its own place in the batch, not the batch
    except KeyError as exc:
        raise ValueError(f"{manifest}: data.label_fields={dc.label_fields}: {exc}") from None
    except ValueError as exc:
        split = "training" if train else "validation"
        raise ValueError(f"{manifest}: no usable utterance for {split}: {exc}") from None
    loader.num_records = len(records)
    return loader


def note_load_errors(batch: dict[str, Any], seen: set[str], where: str) -> dict[str, Any]:
    """Warn (once per message, over the whole run) about the files a batch left out because they
    failed to load (``batch["load_errors"]``, see ``AudioDataset(skip_unreadable=True)``)."""
    for message in batch.pop("load_errors", []):
        if message not in seen:
            seen.add(message)
            log.warning("%s: leaving out an unreadable file (each time it comes up): %s", where, message)
    return batch


def micro_batch_stream(loader, min_samples: int) -> Iterator[dict[str, Any]]:
    """Endless stream of micro-batches over epochs. Files that fail to load are left out of their
    batch; a batch whose audio all fails to load (or whose utterances are all shorter than
    ``min_samples``) comes as ``{"error": message}``."""
    from speechssl.audio import AudioError

    seen: set[str] = set()
    while True:
        with torch.random.fork_rng(devices=[]):  # the DataLoader draws a seed: keep the global RNG untouched
            it = iter(loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                break
            except AudioError as exc:  # AudioLoader re-raises workers' AudioErrors as such
                yield {"error": str(exc)}
                continue
            yield drop_short(note_load_errors(batch, seen, "training"), min_samples)


def valid_batch_stream(loader, max_batches: int | None, seen_errors: set[str]) -> Iterator[dict[str, Any]]:
    """One pass over a validation loader, at most ``max_batches`` batches. A batch whose audio fails
    to load is skipped, and still counted, so that every pass scores the same utterances; it is
    warned about the first time (``seen_errors`` keeps the messages across passes)."""
    from speechssl.audio import AudioError

    it = iter(loader)
    done = 0
    while max_batches is None or done < max_batches:
        done += 1
        try:
            batch = next(it)
        except StopIteration:
            return
        except AudioError as exc:  # AudioLoader re-raises workers' AudioErrors as such
            if str(exc) not in seen_errors:
                seen_errors.add(str(exc))
                log.warning("validation: skipping a batch at every validation: %s", exc)
            continue
        yield note_load_errors(batch, seen_errors, "validation")


def drop_short(batch: dict[str, Any], min_samples: int) -> dict[str, Any]:
    """Remove utterances shorter than ``min_samples`` (e.g. a few samples lost to resampling)."""
    keep = batch["lengths"] >= min_samples
    if bool(keep.all()):
        return batch
    short = [i for i, k in zip(batch["ids"], keep.tolist()) if not k]
    log.warning("dropping %d utterance(s) shorter than min_samples=%d after loading: %s",
                len(short), min_samples, short)
    if not bool(keep.any()):
        return {"error": f"all utterances shorter than min_samples={min_samples}: {short}"}
    idx = keep.nonzero().squeeze(1).tolist()
    out = {k: ([v[i] for i in idx] if isinstance(v, list) else v[idx]) for k, v in batch.items()}
    out["wavs"] = out["wavs"][:, : int(out["lengths"].max())]
    return out
