"""Waveform dataset over manifest records, batch collation, and a resumable loader.

Usage::

    records = read_manifest("data/train.jsonl")
    loader = make_loader(records, max_batch_seconds=64.0, max_seconds=4.0, min_seconds=0.5,
                         shuffle=True, seed=0, num_workers=2)
    for batch in loader:                # batch["wavs"]: [B, L] float32, batch["lengths"]: [B]
        ...
        ckpt["loader"] = loader.state_dict()    # resume: loader.load_state_dict(ckpt["loader"])
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

import speechssl.audio
from speechssl.audio import TARGET_SR, AudioError, load_audio
from speechssl.data.manifest import record_duration
from speechssl.data.sampler import SecondsBatchSampler
from speechssl.modules.padding import pad_to_batch

log = logging.getLogger(__name__)


class AudioDataset(torch.utils.data.Dataset):
    """Utterances of a manifest as 16 kHz mono float32 waveforms, cropped to ``max_seconds``.

    Args:
        records: manifest records (from :func:`speechssl.data.read_manifest`).
        max_seconds: longer utterances are cropped to this; None keeps them whole.
        min_seconds: shorter utterances are dropped here; ``.dropped`` counts them by reason.
        random_crop: random crop offset (training) from an RNG seeded by (seed, epoch, index);
            False takes the centre (evaluation).
        seed: crop seed; with ``set_epoch(e)`` and the index it fixes every crop.
        label_fields: record fields copied into each item (every record must have them).
        target_sr: output sample rate.
        targets: frame targets (:class:`speechssl.targets.labels.FrameTargets`, HuBERT): each item
            gets ``"targets"`` [frames, K] int64 for the crop, and crop offsets become multiples of the
            model's frame shift so that labels and frames line up exactly.
        skip_unreadable: a file that fails to load gives ``{"id", "load_error": AudioError}``, which
            :func:`collate_audio` leaves out of its batch (listed in ``"load_errors"``).

    ``dataset[i]`` -> ``{"id": str, "wav": Tensor[samples] float32, <label fields>}``; a file
    that fails to load raises :class:`speechssl.audio.AudioError` naming it (see ``skip_unreadable``).
    """

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]],
        max_seconds: float | None = None,
        min_seconds: float = 0.0,
        random_crop: bool = True,
        seed: int = 0,
        label_fields: Sequence[str] | None = None,
        target_sr: int = TARGET_SR,
        targets: Any = None,
        skip_unreadable: bool = False,
    ):
        self.skip_unreadable = skip_unreadable
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {max_seconds}")
        if max_seconds is not None and max_seconds < min_seconds:
            raise ValueError(f"max_seconds={max_seconds} is below min_seconds={min_seconds}")
        self.max_seconds = max_seconds
        self.min_seconds = float(min_seconds)
        self.random_crop = random_crop
        self.seed = int(seed)
        self.epoch = 0
        self.target_sr = target_sr
        self.label_fields = list(label_fields or [])
        self.targets = targets
        self.dropped: dict[str, int] = {}
        self.dropped_seconds: dict[str, float] = {}
        self.records: list[Mapping[str, Any]] = []
        full: list[float] = []
        for rec in records:
            missing = [f for f in self.label_fields if f not in rec]
            if missing:
                raise KeyError(
                    f"record {rec.get('id')!r} ({rec.get('path')}) has no label field(s) "
                    f"{missing}; its fields: {sorted(rec)}"
                )
            seconds = record_duration(rec)
            reason = "empty" if seconds <= 0 else "too_short" if seconds < self.min_seconds else None
            if reason:
                self.dropped[reason] = self.dropped.get(reason, 0) + 1
                self.dropped_seconds[reason] = self.dropped_seconds.get(reason, 0.0) + seconds
                continue
            self.records.append(rec)
            full.append(seconds)
        if self.dropped:
            log.info(
                "dataset: kept %d utterances, dropped %s (min_seconds=%.2f)",
                len(self.records),
                ", ".join(f"{n} {r}" for r, n in sorted(self.dropped.items())),
                self.min_seconds,
            )
        self.full_durations = full
        self.durations = [min(d, max_seconds) if max_seconds is not None else d for d in full]

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the crop offsets of ``epoch`` (with the seed and index they are fixed)."""
        self.epoch = int(epoch)

    def crop_window(self, index: int) -> tuple[float | None, float | None]:
        """(start, duration) in seconds of the audio item ``index`` reads, for the current epoch.

        ``(record start, record duration)`` when no crop applies.
        """
        rec = self.records[index]
        base = float(rec.get("start") or 0.0)
        if self.max_seconds is None or self.full_durations[index] <= self.max_seconds:
            return rec.get("start"), rec.get("duration")
        if self.targets is not None:
            offset, crop = self._aligned_crop(index)
            return base + offset / self.target_sr, crop / self.target_sr
        sr = rec["sample_rate"]
        total = int(round(self.full_durations[index] * sr))
        crop = int(round(self.max_seconds * sr))
        room = max(0, total - crop)
        if self.random_crop:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            offset = int(rng.integers(0, room + 1))
        else:
            offset = room // 2
        return base + offset / sr, crop / sr

    def _aligned_crop(self, index: int) -> tuple[int, int]:
        """(offset, length) in output samples of a crop whose offset is a multiple of the targets' frame shift."""
        align = self.targets.frame_shift
        total = int(round(self.full_durations[index] * self.target_sr))
        crop = int(round(self.max_seconds * self.target_sr))
        slots = max(0, total - crop) // align
        if self.random_crop:
            slot = int(np.random.default_rng([self.seed, self.epoch, index]).integers(0, slots + 1))
        else:
            slot = slots // 2
        return slot * align, crop

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        start, duration = self.crop_window(index)
        try:
            wav = load_audio(rec["path"], start=start, duration=duration, target_sr=self.target_sr)
        except AudioError as exc:
            if not self.skip_unreadable:
                raise
            return {"id": rec["id"], "load_error": exc}
        item: dict[str, Any] = {"id": rec["id"], "wav": wav}
        for field in self.label_fields:
            item[field] = rec[field]
        if self.targets is not None:
            offset = 0
            if self.max_seconds is not None and self.full_durations[index] > self.max_seconds:
                offset = self._aligned_crop(index)[0]
            item["targets"] = self.targets.crop(rec["id"], offset, int(wav.shape[0]))
        return item


def collate_audio(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pad waveforms into a batch.

    Args:
        items: dataset items ``{"id", "wav": Tensor[L_i], <labels>}``.
    Returns:
        ``{"wavs": Tensor[B, L_max] float32 (zero padded), "lengths": LongTensor[B],
        "ids": list[str], <label>: list}``, plus ``"load_errors"`` (messages) when items of
        ``AudioDataset(skip_unreadable=True)`` failed to load; when all of them did, the first
        error is raised (the whole batch is lost).
    """
    if not items:
        raise ValueError("collate_audio: empty batch")
    failed = [it["load_error"] for it in items if "load_error" in it]
    if failed:
        items = [it for it in items if "load_error" not in it]
        if not items:
            raise failed[0]
    wavs = [torch.as_tensor(it["wav"], dtype=torch.float32) for it in items]
    for it, w in zip(items, wavs):
        if w.ndim != 1:
            raise ValueError(
                f"collate_audio: item {it.get('id')!r} wav must be 1-D, got shape {tuple(w.shape)}"
            )
    out, lengths = pad_to_batch(wavs)
    batch: dict[str, Any] = {"wavs": out, "lengths": lengths, "ids": [it["id"] for it in items]}
    for key in items[0]:
        if key == "targets":  # frame targets (HuBERT): [B, frames, K], -1 = no label
            from speechssl.targets.labels import collate_targets

            batch[key] = collate_targets([it[key] for it in items])
        elif key not in ("id", "wav"):
            batch[key] = [it.get(key) for it in items]
    if failed:
        batch["load_errors"] = [str(e) for e in failed]
    return batch


_WORKER_ERROR = re.compile(r"Caught (\w+) in DataLoader worker")


class AudioLoader:
    """A DataLoader over an :class:`AudioDataset` with a :class:`SecondsBatchSampler`, that
    remembers how many batches it has delivered, so a resumed run continues with the next one.

    Each ``for batch in loader`` runs one epoch; when it completes the epoch advances by one.
    ``state_dict()`` / ``load_state_dict()`` save and restore epoch + position (exact with or
    without workers). A batch whose audio fails to load raises the ``AudioError`` naming the
    file (also when raised in a worker) and counts as delivered: catch it and call ``next``
    again to continue with the following batch.
    """

    def __init__(
        self,
        dataset: AudioDataset,
        sampler: SecondsBatchSampler,
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
    ):
        self.dataset = dataset
        self.sampler = sampler
        self.epoch = sampler.epoch
        self.position = sampler.start_position
        kwargs: dict[str, Any] = {}
        if num_workers > 0 and prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
        self.dataloader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate_audio,
            num_workers=num_workers,
            pin_memory=pin_memory,
            **kwargs,
        )

    def __len__(self) -> int:
        """Batches in the current epoch for this rank (the whole epoch)."""
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """Jump to ``epoch`` (its start, unless it is the epoch being resumed)."""
        if epoch != self.epoch:
            self.position = 0
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Epoch and number of batches of it already delivered (plus the sampler fingerprint)."""
        return {**self.sampler.state_dict(consumed=self.position), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore epoch and position; the next iteration yields the next undelivered batch."""
        self.sampler.load_state_dict(state)
        self.epoch = self.sampler.epoch
        self.position = self.sampler.start_position

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return _LoaderIterator(self)


class _LoaderIterator:
    def __init__(self, loader: AudioLoader):
        self.loader = loader
        if loader.position >= len(loader.sampler.rank_batches(loader.epoch)) and loader.position:
            # the previous epoch was finished (e.g. saved right at its end): move to the next
            loader.epoch += 1
            loader.position = 0
        loader.sampler.set_epoch(loader.epoch)
        loader.sampler.seek(loader.position)
        loader.dataset.set_epoch(loader.epoch)
        self.inner = iter(loader.dataloader)
        self.done = False

    def __iter__(self) -> _LoaderIterator:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.done:
            raise StopIteration
        try:
            batch = next(self.inner)
        except StopIteration:
            self.done = True
            self.loader.epoch += 1
            self.loader.position = 0
            raise
        except RuntimeError as exc:
            failed = self.loader.position
            self.loader.position += 1
            audio_error = self._worker_audio_error(str(exc), failed)
            if audio_error is not None:
                raise audio_error from None
            raise
        except Exception:
            self.loader.position += 1
            raise
        self.loader.position += 1
        return batch

    def _worker_audio_error(self, text: str, position: int) -> AudioError | None:
        """Rebuild the AudioError a worker raised (DataLoader turns it into a RuntimeError)."""
        match = _WORKER_ERROR.search(text)
        cls = getattr(speechssl.audio, match.group(1), None) if match else None
        if not (isinstance(cls, type) and issubclass(cls, AudioError)):
            return None
        last = [line for line in text.splitlines() if line.strip()][-1]
        message = last.split(f"{cls.__name__}: ", 1)[-1]
        batches = self.loader.sampler.rank_batches(self.loader.epoch)
        for index in batches[position] if position < len(batches) else []:
            path = str(self.loader.dataset.records[index]["path"])
            if message.startswith(path + ": "):
                return cls(path, message[len(path) + 2 :])
        return cls("<unknown file>", message)


def _distributed_defaults(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    if num_replicas is not None and rank is not None:
        return num_replicas, rank
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return (
            num_replicas if num_replicas is not None else dist.get_world_size(),
            rank if rank is not None else dist.get_rank(),
        )
    return num_replicas or 1, rank or 0


def make_loader(
    records: Sequence[Mapping[str, Any]],
    max_batch_seconds: float,
    max_seconds: float | None = None,
    min_seconds: float = 0.0,
    shuffle: bool = True,
    random_crop: bool | None = None,
    seed: int = 0,
    num_workers: int = 0,
    num_replicas: int | None = None,
    rank: int | None = None,
    drop_last: bool = False,
    label_fields: Sequence[str] | None = None,
    pool_size: int = 10_000,
    max_batch_size: int | None = None,
    pin_memory: bool = False,
    min_samples: int = 0,
    even_ranks: bool = True,
    targets: Any = None,
    skip_unreadable: bool = False,
) -> AudioLoader:
    """Dataset + seconds-budget sampler + collate in one resumable loader.

    Args:
        records: manifest records.
        max_batch_seconds: padded seconds per batch on this rank.
        max_seconds: crop length (None: whole utterances).
        min_seconds: drop shorter utterances (raised to ``min_samples`` / 16 kHz if that is longer).
        shuffle: training order (random pools and batch order); False sorts by length.
        random_crop: default ``shuffle``.
        num_replicas, rank: default from ``torch.distributed`` when initialised, else 1 and 0.
        min_samples: the model's receptive field in samples at 16 kHz.
        even_ranks: as many batches on every rank (repeats a few; training). False: every batch once
            (evaluation; a rank may get one fewer).
        targets: frame targets for every item (see :class:`AudioDataset`).
        skip_unreadable: leave files that fail to load out of their batch (see :class:`AudioDataset`).
    Raises:
        ValueError: nothing is left after dropping short utterances.
    """
    min_seconds = max(float(min_seconds), min_samples / TARGET_SR)
    dataset = AudioDataset(
        records,
        max_seconds=max_seconds,
        min_seconds=min_seconds,
        random_crop=shuffle if random_crop is None else random_crop,
        seed=seed,
        label_fields=label_fields,
        targets=targets,
        skip_unreadable=skip_unreadable,
    )
    if len(dataset) == 0:
        raise ValueError(
            f"no utterances left: all {len(records)} are shorter than {min_seconds:.3f} s "
            f"(dropped: {dataset.dropped})"
        )
    world, rank = _distributed_defaults(num_replicas, rank)
    sampler = SecondsBatchSampler(
        dataset.durations,
        max_batch_seconds,
        shuffle=shuffle,
        seed=seed,
        num_replicas=world,
        rank=rank,
        drop_last=drop_last,
        even_ranks=even_ranks,
        pool_size=pool_size,
        max_batch_size=max_batch_size,
    )
    return AudioLoader(dataset, sampler, num_workers=num_workers, pin_memory=pin_memory)


def padded_seconds(batch_durations: Sequence[float]) -> float:
    """Padded size of a batch in seconds: longest item times count."""
    return max(batch_durations) * len(batch_durations) if batch_durations else 0.0
