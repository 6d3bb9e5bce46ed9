"""The in-memory cache of a frozen encoder's outputs behind downstream training on ``--encoder``:
every utterance is encoded once (the loop of ``speechssl extract``), then reused by every head,
learning rate, seed or shot of a sweep."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from speechssl.downstream.features import FeatureSet
from speechssl.downstream.memory import available_memory_bytes, size_text
from speechssl.extract.encode import EncodePolicy, Item, encode_records
from speechssl.progress import AUDIO_SECONDS, PROGRESS_EVERY_SECONDS, UTTERANCES, Progress

logger = logging.getLogger(__name__)



def record_key(rec: dict) -> tuple:
    """Identity of an utterance's audio: id, path and segment."""
    return (rec["id"], str(rec.get("path")), rec.get("start"), rec.get("duration"))


def _encoder_name(encoder: Any) -> str:
    """An Encoder's source (``logmel``, a folder), else the module's class name."""
    from speechssl.upstream import Encoder

    return encoder.source if isinstance(encoder, Encoder) and encoder.source else type(encoder).__name__


class EncoderFeatureCache:
    """In-memory cache of a frozen encoder's outputs, keyed by (id, path, start, duration).

    The encoding itself is :func:`speechssl.extract.encode.encode_records` (the loop of
    ``speechssl extract``) with ``errors="raise"``: a file that cannot be read or gives no frame
    stops the run, since a missing utterance would change the task.

    Args:
        encoder: an :class:`~speechssl.upstream.Encoder`, or any module with ``forward(wavs[B, L],
            lengths[B]) -> EncoderOutput`` (files longer than ``chunk_seconds`` also need its
            ``frame_shift`` and ``layer_names``).
        batch_size: utterances per forward pass (sorted by length, so padding stays small).
        dtype: storage dtype of cached features (float16 halves memory).
        device: where the encoder runs.
        name: the encoder's name in messages (default: an Encoder's source, else the class name).
        chunk_seconds, overlap_seconds: files longer than ``chunk_seconds`` are encoded in
            overlapping chunks (bounded memory; see :mod:`speechssl.extract.chunking`).

    When the first batch shows that the features of all requested utterances cannot fit in the
    available memory, it raises MemoryError at once (pointing to ``speechssl extract``, whose
    output is read from disk when it is too big) instead of failing hours later.
    """

    def __init__(self, encoder: Any, batch_size: int = 8, dtype: torch.dtype = torch.float32, device="cpu",
                 name: str | None = None, chunk_seconds: float = 30.0, overlap_seconds: float = 2.0):
        self.encoder = encoder
        self.name = name or _encoder_name(encoder)  # for messages
        self.batch_size = max(1, int(batch_size))
        self.dtype = dtype
        self.device = torch.device(device)
        self._store: dict[tuple, list[torch.Tensor]] = {}
        self.layer_names: list[str] | None = None
        self.frame_shift: int | None = None
        self.encoded = 0  # utterances actually run through the encoder (for tests and logs)
        self.chunk_seconds, self.overlap_seconds = chunk_seconds, overlap_seconds
        self._fit_check: Sequence[dict] | None = None  # records to check the memory for, after the first batch
        self._progress: Progress | None = None  # of the running features() call
        self._counted = (0, 0)  # utterances it has seen finish, of how many
        self._failed: dict[tuple, str] | None = None  # key -> reason, while features(skip_failed=True) runs

    def __len__(self) -> int:
        return len(self._store)

    def begin(self, item: Item, layer_names: list[str], frame_shift: int) -> _CachedUtterance:
        """:class:`~speechssl.extract.encode.FeatureConsumer`: where an utterance's frames go."""
        if self.layer_names is None:
            self.layer_names = list(layer_names)
            self.frame_shift = int(frame_shift)
        elif list(layer_names) != self.layer_names:
            raise ValueError(f"encoder returned layers {layer_names}, earlier {self.layer_names}")
        return _CachedUtterance(self, item.key)

    def failed(self, item: Item, reason: str) -> None:
        # called under errors="skip" only (features(skip_failed=True)); errors="raise" raises instead
        if self._failed is None:
            raise ValueError(f"utterance {item.id!r} ({item.path}): {reason}")
        self._failed[item.key] = reason

    def finished(self, items: list[Item]) -> None:
        self.encoded += sum(i.key in self._store for i in items)  # not the failed ones (skip_failed)
        if self._progress is not None:
            self._count(self._progress, items)
        if self._fit_check is not None:  # after the first batch
            todo, self._fit_check = self._fit_check, None
            self._check_fits(items, todo)

    def _count(self, progress: Progress, items: list[Item]) -> None:
        done, total = self._counted[0] + len(items), self._counted[1]
        self._counted = (done, total)
        if progress.counts is AUDIO_SECONDS:
            progress.set_postfix(utterances=f"{done}/{total}")
            progress.advance(sum(i.seconds for i in items))
        else:
            progress.advance(len(items))

    def _check_fits(self, first: Sequence[Item], todo: Sequence[dict]) -> None:
        """After the first batch: stop early with a clear message when keeping the features of all
        of ``todo`` (estimated from the first batch's bytes per second of audio) cannot fit."""
        first = [i for i in first if i.key in self._store]  # not the failed ones (skip_failed)
        seconds = sum(i.seconds for i in first)
        total = sum(_seconds(r) for r in todo)
        available = available_memory_bytes()
        if seconds <= 0 or available is None:
            return
        stored = sum(t.numel() * t.element_size() for i in first for t in self._store[i.key])
        need = stored / seconds * total
        if need > 0.9 * available:
            raise MemoryError(
                f"encoding {len(todo)} utterances ({total / 3600:.2f} h) with {self.name} would keep "
                f"about {size_text(need)} of features in memory but {size_text(available)} are available; "
                "write them once with `speechssl extract --encoder ... --layers ...` and pass --features DIR "
                "(read from disk when they do not fit), or keep them as float16 (encode.dtype: float16)"
            )

    def features(self, records: Sequence[dict], desc: str = "encoding", skip_failed: bool = False,
                 bar: bool = True) -> FeatureSet:
        """Encode the records not cached yet, then return all of them as a FeatureSet.

        A file that cannot be read or gives no frame raises, naming it; with ``skip_failed`` it is
        left out of the FeatureSet instead and listed in its ``failed`` (``predict`` on new files).
        ``bar``: a tqdm bar on a terminal (log lines every 30 s either way; ``--quiet`` turns it off).
        """
        todo = [r for r in records if record_key(r) not in self._store]
        # unique, sorted by length so batches hold similar lengths
        seen: dict[tuple, dict] = {}
        for r in todo:
            seen.setdefault(record_key(r), r)
        todo = sorted(seen.values(), key=_seconds)
        failed: dict[tuple, str] = {}
        if todo:
            self.encoder.eval()
            items = [Item(r["id"], str(r["path"]), _seconds(r), r.get("start"), r.get("duration"), key=record_key(r))
                     for r in todo]
            policy = EncodePolicy(batch_size=self.batch_size, chunk_seconds=self.chunk_seconds,
                                  overlap_seconds=self.overlap_seconds, errors="skip" if skip_failed else "raise",
                                  device=str(self.device), name=self.name)
            self._fit_check = todo
            self._failed = {} if skip_failed else None
            self._progress, self._counted = _progress(items, desc, bar), (0, len(items))
            try:
                encode_records(self.encoder, items, policy, self)
            finally:
                self._progress.close()
                self._progress = None
                self._fit_check = None
                failed, self._failed = self._failed or {}, None
        kept = [r for r in records if record_key(r) in self._store]
        if self.layer_names is None or not kept:
            detail = f"; e.g. {next(iter(failed.values()))}" if failed else ""
            raise ValueError(f"no utterance to encode ({len(records)} given, {len(failed)} failed{detail})")
        return FeatureSet(
            ids=[r["id"] for r in kept],
            feats=[self._store[record_key(r)] for r in kept],
            layer_names=list(self.layer_names),
            frame_shift=int(self.frame_shift or 0),
            failed={r["id"]: failed[record_key(r)] for r in records if record_key(r) in failed},
        )


def _progress(items: Sequence[Item], desc: str, bar: bool) -> Progress:
    """Progress of encoding ``items``: a bar on a terminal, else a line every
    :data:`PROGRESS_EVERY_SECONDS`; counted in seconds of audio (with the utterances alongside), or
    in utterances when some durations are unknown (``predict`` on a folder)."""
    by_audio = all(i.seconds > 0 for i in items)
    return Progress(sum(i.seconds for i in items) if by_audio else len(items), 0.0, bar=bar,
                    every_seconds=PROGRESS_EVERY_SECONDS, main=True, desc=desc,
                    counts=AUDIO_SECONDS if by_audio else UTTERANCES, logger=logger, leave=False)


class _CachedUtterance:
    """One utterance's frames on their way into an :class:`EncoderFeatureCache`."""

    def __init__(self, cache: EncoderFeatureCache, key: tuple):
        self.cache, self.key = cache, key
        self.parts: list[list[np.ndarray]] = []

    def append(self, arrays: list[np.ndarray]) -> None:
        self.parts.append(arrays)

    def commit(self) -> None:
        layers = zip(*self.parts)
        # a copy in the storage dtype: a view would keep the whole padded batch alive
        self.cache._store[self.key] = [
            torch.from_numpy(p[0] if len(p) == 1 else np.concatenate(p)).to(self.cache.dtype, copy=True)
            for p in layers
        ]

    def abort(self) -> None:
        self.parts = []


def _seconds(rec: dict) -> float:
    """:func:`speechssl.data.record_duration`, or 0 for records without sizes (``predict`` on a folder)."""
    from speechssl.data import record_duration

    try:
        return record_duration(rec)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return 0.0
