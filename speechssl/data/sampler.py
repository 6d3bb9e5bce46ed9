"""Batches by total padded seconds of audio, length-bucketed, resumable and distributed-aware.

How an epoch's batches are built (the same on every rank):

1. ``shuffle=True``: the indices are permuted by an RNG seeded with ``(seed, epoch)`` and cut into
   pools of ``pool_size`` items; each pool is sorted by duration (longest first) so that
   utterances of similar length share a batch and padding stays small. ``shuffle=False``: one
   pool, the whole dataset sorted by duration (ties by index).
2. Each pool is cut greedily into batches whose padded size ``max duration * count`` stays within
   ``max_batch_seconds`` (and ``max_batch_size`` items if set). An item longer than the budget
   on its own forms a batch of one; crop training utterances so this does not happen.
3. ``shuffle=True``: the order of the batches is shuffled with the same RNG.
4. With ``num_replicas`` ranks the global list is padded by repeating its first batches (or,
   with ``drop_last=True``, trimmed) to a multiple of ``num_replicas``; rank ``r`` takes batches
   ``r::num_replicas``. Every rank therefore gets the same number of batches and DDP never
   waits for a rank that ran out. ``even_ranks=False`` (evaluation) skips the padding: every batch
   is seen exactly once, and ranks may get one batch fewer (or none).

This is the scheme of fairseq's wav2vec 2.0 ``batch_by_size`` and lhotse's
``DynamicBucketingSampler``, with the pool making the buckets.

Resuming: ``state_dict()`` holds the epoch and how many of this rank's batches were consumed;
after ``load_state_dict`` the next iteration continues with the very next batch. With DataLoader
workers the sampler runs ahead of the training loop; use :class:`speechssl.data.AudioLoader`
(from :func:`speechssl.data.make_loader`), whose ``state_dict`` counts batches actually delivered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def build_batches(
    durations: np.ndarray, order: np.ndarray, max_batch_seconds: float, max_batch_size: int | None = None
) -> list[list[int]]:
    """Cut ``order`` (indices, longest first) greedily into batches within the padded budget.

    Args:
        durations: [N] seconds per item.
        order: indices into ``durations``, sorted by decreasing duration.
        max_batch_seconds: budget for ``max duration in batch * batch size``.
        max_batch_size: optional cap on items per batch.
    Returns:
        list of batches (lists of indices).
    """
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0.0
    for idx in order.tolist():
        d = float(durations[idx])
        new_longest = max(longest, d)
        too_many = max_batch_size is not None and len(current) + 1 > max_batch_size
        if current and (new_longest * (len(current) + 1) > max_batch_seconds or too_many):
            batches.append(current)
            current, new_longest = [], d
        current.append(idx)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


class SecondsBatchSampler(torch.utils.data.Sampler):
    """Yield lists of dataset indices whose padded total duration fits ``max_batch_seconds``.

    Args:
        durations: seconds per item (use ``AudioDataset.durations``: they are already cropped).
        max_batch_seconds: budget per batch for ``longest item * items`` (per rank).
        shuffle: random pools and batch order per epoch (training); else sorted by length.
        seed: with the epoch, fixes the batches; identical on all ranks.
        num_replicas: world size; ``rank``: this process's rank.
        drop_last: with several ranks, drop the leftover batches instead of repeating some.
        even_ranks: pad (or, with ``drop_last``, trim) to a multiple of ``num_replicas`` so every
            rank gets as many batches (training under DDP); False: each batch exactly once (evaluation).
        pool_size: items sorted together; larger means less padding but less variety.
        max_batch_size: optional cap on the number of items per batch.
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        pool_size: int = 10_000,
        max_batch_size: int | None = None,
        even_ranks: bool = True,
    ):
        if max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be > 0, got {max_batch_seconds}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank} num_replicas={num_replicas}")
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
        self.durations = np.asarray(durations, dtype=np.float64)
        if self.durations.ndim != 1 or len(self.durations) == 0:
            raise ValueError(f"durations must be a non-empty 1-D sequence, got shape {self.durations.shape}")
        if not np.all(np.isfinite(self.durations)) or np.any(self.durations < 0):
            raise ValueError("durations must be finite and >= 0")
        self.max_batch_seconds = float(max_batch_seconds)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.even_ranks = bool(even_ranks)
        self.pool_size = pool_size
        self.max_batch_size = max_batch_size
        self.epoch = 0
        self._start = 0  # batches of this rank to skip at the next iteration (resume)
        self._dispatched = 0  # batches of this rank handed out in the current/last iteration
        self._cache: tuple[int, list[list[int]]] | None = None
        over = int(np.sum(self.durations > self.max_batch_seconds))
        if over:
            log.warning(
                "%d item(s) are longer than max_batch_seconds=%.1f and will be batches of one "
                "(longest %.1f s); crop them (max_seconds) to keep memory bounded",
                over,
                self.max_batch_seconds,
                float(self.durations.max()),
            )

    # ---- batch construction -------------------------------------------------
    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All ranks' batches of ``epoch`` (default: current), before padding to the world size."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.durations)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(n)
            batches: list[list[int]] = []
            for lo in range(0, n, self.pool_size):
                pool = perm[lo : lo + self.pool_size]
                # stable sort keeps the random order among equal durations
                pool = pool[np.argsort(-self.durations[pool], kind="stable")]
                batches.extend(
                    build_batches(self.durations, pool, self.max_batch_seconds, self.max_batch_size)
                )
            order = rng.permutation(len(batches))
            return [batches[i] for i in order]
        order = np.lexsort((np.arange(n), -self.durations))
        return build_batches(self.durations, order, self.max_batch_seconds, self.max_batch_size)

    def rank_batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of ``epoch`` (default: current)."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        batches = self.global_batches(epoch)
        world = self.num_replicas
        if not self.even_ranks:
            mine = batches[self.rank :: world]
            self._cache = (epoch, mine)
            return mine
        if len(batches) % world:
            if self.drop_last:
                batches = batches[: len(batches) - len(batches) % world]
            else:
                extra = world - len(batches) % world
                batches = batches + [batches[i % len(batches)] for i in range(extra)]
        if not batches:
            raise ValueError(
                f"only {len(self.global_batches(epoch))} batches for {world} ranks with drop_last=True: "
                "every rank would get none; use drop_last=False or a smaller max_batch_seconds"
            )
        mine = batches[self.rank :: world]
        self._cache = (epoch, mine)
        return mine

    # ---- Sampler protocol -----------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's batches. A different epoch than the resumed one starts at its beginning."""
        if epoch != self.epoch:
            self._start = 0
        self.epoch = int(epoch)

    @property
    def start_position(self) -> int:
        """Batches of the current epoch the next iteration skips (set by resume or :meth:`seek`)."""
        return self._start

    def seek(self, position: int) -> None:
        """Make the next iteration start at this rank's batch ``position`` of the current epoch."""
        if position < 0:
            raise ValueError(f"position must be >= 0, got {position}")
        self._start = int(position)

    def __len__(self) -> int:
        """Number of batches this rank gets in the current epoch (the whole epoch, not what remains)."""
        return len(self.rank_batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches()
        start, self._start = self._start, 0
        self._dispatched = start
        for batch in batches[start:]:
            self._dispatched += 1
            yield list(batch)

    # ---- resume -----------------------------------------------------------------
    def _fingerprint(self) -> dict[str, Any]:
        return {
            "num_items": int(len(self.durations)),
            "total_seconds": round(float(self.durations.sum()), 3),
            "max_batch_seconds": self.max_batch_seconds,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "pool_size": self.pool_size,
            "max_batch_size": self.max_batch_size,
        }

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Epoch and position. ``consumed``: batches of this rank the caller has really used
        (default: those the sampler handed out, exact when the loader has no workers)."""
        consumed = self._dispatched if consumed is None else int(consumed)
        return {
            "epoch": self.epoch,
            "consumed": consumed,
            "global_consumed": consumed * self.num_replicas,
            "num_replicas": self.num_replicas,
            **self._fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = False) -> None:
        """Continue from ``state``: the next iteration starts with the next unseen batch.

        If the state was saved for different data or batching settings (e.g. a new
        ``max_batch_seconds`` after an out-of-memory error), the batches differ, so the saved
        epoch restarts from its beginning with a warning; ``strict=True`` raises instead.

        Raises:
            ValueError: ``strict`` and the settings differ.
        """
        mismatched = {k: (state.get(k), v) for k, v in self._fingerprint().items() if state.get(k) != v}
        self.epoch = int(state["epoch"])
        if mismatched:
            detail = ", ".join(f"{k}: saved {a!r} now {b!r}" for k, (a, b) in mismatched.items())
            if strict:
                raise ValueError(
                    f"sampler state does not match this data/batching ({detail}); "
                    "resume with the same manifest and data settings"
                )
            log.warning(
                "sampler state was saved with other data/batching (%s): epoch %d restarts from "
                "its first batch",
                detail,
                self.epoch,
            )
            self._start = 0
        elif int(state["num_replicas"]) == self.num_replicas:
            self._start = int(state["consumed"])
        else:
            # A different world size: continue after the global batches already seen (a few may repeat).
            self._start = int(state["global_consumed"]) // self.num_replicas
            log.warning(
                "resuming with %d ranks instead of %d: up to %d batches of epoch %d are repeated",
                self.num_replicas,
                state["num_replicas"],
                self.num_replicas,
                self.epoch,
            )
        self._dispatched = self._start
