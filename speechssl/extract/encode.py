"""How a frozen encoder runs over audio: the one loop behind ``speechssl extract`` and the
downstream feature cache.

Usage::

    from speechssl.extract.encode import EncodePolicy, encode_records
    encode_records(encoder, items, EncodePolicy(batch_seconds=30.0, errors="skip"), consumer)

:func:`encode_records` turns utterances (:class:`~speechssl.extract.inputs.Item`) into hidden
states and hands them to a :class:`FeatureConsumer` (extraction's writers + ``index.tsv``, or the
downstream in-memory cache):

* files longer than ``chunk_seconds`` are encoded first, one at a time, in overlapping chunks
  (:mod:`speechssl.extract.chunking`: bounded memory for any length, and the same frames as one
  pass wherever the model allows);
* the other utterances are grouped in the order given (callers sort them by length) into
  consecutive batches under ``batch_seconds`` of padded audio, or of ``batch_size`` utterances
  when that is set, zero-padded and encoded under ``torch.inference_mode``;
* a file that cannot be read, that the encoder refuses or that gives no frame is either reported
  to the consumer and skipped (``errors="skip"``: extraction lists it in ``errors.tsv`` and goes
  on; a failed batch is retried one utterance at a time, so one bad file fails alone) or raised
  (``errors="raise"``: downstream, where a missing utterance would silently change the task).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import numpy as np
import torch

from speechssl.extract.chunking import encode_chunked
from speechssl.extract.inputs import Item
from speechssl.modules.padding import pad_to_batch

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MAX_PADDING = 0.1  # a seconds batch grows only while padding stays under this fraction of its padded audio


@dataclasses.dataclass(frozen=True)
class EncodePolicy:
    """How :func:`encode_records` batches, chunks and handles bad files."""

    batch_seconds: float = 30.0  # padded seconds of audio per forward pass
    batch_size: int | None = None  # instead: this many utterances per forward pass (downstream's encode.batch_size)
    chunk_seconds: float = 30.0  # longer files are encoded alone, in overlapping chunks of this length
    overlap_seconds: float = 2.0  # context on each side of a chunk (>= the receptive field)
    errors: Literal["skip", "raise"] = "skip"  # skip: report to the consumer and go on; raise: stop
    device: str | None = None  # where batches are sent (None: left on the CPU; an Encoder moves them itself)
    name: str = "this encoder"  # the encoder in messages

    def __post_init__(self) -> None:
        if self.chunk_seconds <= 0 or self.batch_seconds <= 0 or self.overlap_seconds < 0:
            raise ValueError(
                f"chunk_seconds ({self.chunk_seconds}) and batch_seconds ({self.batch_seconds}) must be > 0, "
                f"overlap_seconds ({self.overlap_seconds}) >= 0"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.errors not in ("skip", "raise"):
            raise ValueError(f"errors must be 'skip' or 'raise', got {self.errors!r}")


class UtteranceSink(Protocol):
    """One utterance's frames, chunk by chunk; ``abort()`` is called when ``append`` or ``commit`` raised."""

    def append(self, arrays: list[np.ndarray]) -> None:
        """``arrays``: one [frames, dim] float32 array per layer (the next frames of the utterance)."""

    def commit(self) -> object:
        """The utterance is complete: keep it."""

    def abort(self) -> None:
        """Drop what was appended."""


class FeatureConsumer(Protocol):
    """Where :func:`encode_records` puts its results."""

    def begin(self, item: Item, layer_names: list[str], frame_shift: int) -> UtteranceSink:
        """A sink for the frames of ``item`` (``layer_names``/``frame_shift`` as the encoder gave them)."""

    def failed(self, item: Item, reason: str) -> None:
        """``item`` gave no features (``errors="skip"`` only); ``reason`` is one line."""

    def finished(self, items: list[Item]) -> None:
        """Called after every batch and every long file with its items, done or failed (progress)."""


def batches(items: Sequence[Item], policy: EncodePolicy) -> list[list[Item]]:
    """Consecutive runs of ``items``: ``policy.batch_size`` utterances each, or else those of
    :func:`seconds_batches` under ``policy.batch_seconds``."""
    if policy.batch_size is not None:
        return [list(items[i : i + policy.batch_size]) for i in range(0, len(items), policy.batch_size)]
    return seconds_batches(list(items), policy.batch_seconds)


def seconds_batches(items: list[Item], budget: float, max_padding: float = MAX_PADDING) -> list[list[Item]]:
    """Consecutive runs of length-sorted items whose padded size (max * count) fits ``budget``.

    A batch also stops growing where padding would pass ``max_padding`` of it: padded frames cost
    as much as real ones, and on a CPU one utterance per call already keeps the matmuls efficient
    (wav2vec2 Base, tools/bench, 60 s batches of 2-15 s clips: RTF 0.100 without this cap, 0.059 with it
    and the skipped random init at load).
    """
    out: list[list[Item]] = []
    cur: list[Item] = []
    real = 0.0
    for item in items:
        longest = max([item.seconds] + [i.seconds for i in cur])
        padded = longest * (len(cur) + 1)
        if cur and (padded > budget or 1.0 - (real + item.seconds) / padded > max_padding):
            out.append(cur)
            cur, real = [], 0.0
        cur.append(item)
        real += item.seconds
    if cur:
        out.append(cur)
    return out


def load_item(item: Item) -> torch.Tensor:
    """The item's audio: [samples] float32 at 16 kHz (segment only, mono)."""
    from speechssl.audio import load_audio

    return load_audio(item.path, start=item.start, duration=item.duration)


def long_file_reader(item: Item) -> tuple[int, Callable[[int, int], torch.Tensor]]:
    """-> (samples at 16 kHz, ``read(start, end)`` of a window). 16 kHz files are read window by
    window (bounded memory); other rates are resampled once as a whole, because slicing a
    resampled whole avoids misaligned chunk edges."""
    from speechssl.audio import audio_info, load_audio

    info = audio_info(item.path)
    base = float(item.start or 0.0)
    if info.sample_rate == SAMPLE_RATE:
        total = int(round((item.duration or (info.duration - base)) * SAMPLE_RATE))

        def read(ws: int, we: int) -> torch.Tensor:
            return load_audio(item.path, start=base + ws / SAMPLE_RATE, duration=(we - ws) / SAMPLE_RATE)

        return total, read
    whole = load_item(item)
    return whole.numel(), lambda ws, we: whole[ws:we]


def encode_records(encoder, items: Sequence[Item], policy: EncodePolicy, consumer: FeatureConsumer) -> None:
    """Encode ``items`` and hand every utterance's hidden states to ``consumer`` (module docstring).

    Args:
        encoder: an :class:`~speechssl.upstream.Encoder`, or any module with ``forward(wavs [B, L],
            lengths [B]) -> EncoderOutput``; cutting long files also needs its ``frame_shift`` and
            ``layer_names``.
        items: utterances, usually sorted by length so batches hold similar lengths.
        policy: batching, chunking and error handling.
        consumer: receives the frames (one [frames, dim] float32 array per layer) or the failures.
    """
    long_items = [i for i in items if i.seconds > policy.chunk_seconds]
    short_items = [i for i in items if i.seconds <= policy.chunk_seconds]
    for item in long_items:
        _encode_long(encoder, item, policy, consumer)
        consumer.finished([item])
    for batch in batches(short_items, policy):
        _encode_batch(encoder, batch, policy, consumer)
        consumer.finished(batch)


def _give(consumer: FeatureConsumer, item: Item, arrays: list[np.ndarray], names: list[str], shift: int,
          policy: EncodePolicy) -> None:
    try:
        sink = consumer.begin(item, names, shift)
    except (ValueError, OSError) as exc:
        if policy.errors == "raise":
            raise
        consumer.failed(item, f"cannot write features: {exc}")
        return
    try:
        sink.append(arrays)
        sink.commit()
    except (ValueError, OSError) as exc:
        sink.abort()
        if policy.errors == "raise":
            raise
        consumer.failed(item, f"cannot write features: {exc}")
    except BaseException:
        sink.abort()
        raise


def _no_frame(item: Item, samples: int, policy: EncodePolicy, consumer: FeatureConsumer) -> None:
    if policy.errors == "raise":
        raise ValueError(
            f"utterance {item.id!r} ({item.path}, {samples} samples) is too short for encoder {policy.name}: "
            "it gives no frame"
        )
    consumer.failed(item, f"too short: {samples} samples give no frame with this encoder")


def _encode_batch(encoder, items: list[Item], policy: EncodePolicy, consumer: FeatureConsumer) -> None:
    wavs, ok = [], []
    for item in items:
        try:
            wavs.append(load_item(item))
            ok.append(item)
        except (ValueError, OSError) as exc:
            if policy.errors == "raise":
                raise
            consumer.failed(item, str(exc))
    if not ok:
        return
    padded, lengths = pad_to_batch(wavs)
    try:
        with torch.inference_mode():
            if policy.device is not None:
                out = encoder(padded.to(policy.device), lengths.to(policy.device))
            else:
                out = encoder(padded, lengths)
    except (RuntimeError, ValueError) as exc:  # out of memory, or an utterance the model refuses
        if policy.errors == "raise":
            raise
        if len(ok) == 1:
            consumer.failed(ok[0], f"encoder failed: {str(exc)[:300]}")
            return
        log.warning("batch of %d failed (%s); retrying one by one", len(ok), str(exc)[:200])
        for item in ok:
            _encode_batch(encoder, [item], policy, consumer)
        return
    names, shift = list(out.layer_names), int(out.frame_shift)
    for i, item in enumerate(ok):
        n = int(out.lengths[i])
        if n <= 0:
            _no_frame(item, int(lengths[i]), policy, consumer)
            continue
        _give(consumer, item, [h[i, :n].float().cpu().numpy() for h in out.hidden_states], names, shift, policy)


def _encode_long(encoder, item: Item, policy: EncodePolicy, consumer: FeatureConsumer) -> None:
    try:
        total, read = long_file_reader(item)
    except (ValueError, OSError) as exc:
        if policy.errors == "raise":
            raise
        consumer.failed(item, str(exc))
        return
    sink = consumer.begin(item, list(encoder.layer_names), int(encoder.frame_shift))
    try:
        frames = encode_chunked(encoder, read, total, int(policy.chunk_seconds * SAMPLE_RATE),
                                int(policy.overlap_seconds * SAMPLE_RATE), sink.append)
        if frames <= 0:
            raise ValueError(f"too short: {total} samples give no frame with this encoder")
        sink.commit()
    except (ValueError, OSError, RuntimeError) as exc:
        sink.abort()
        if policy.errors == "raise":
            raise
        consumer.failed(item, str(exc)[:300])
    except BaseException:
        sink.abort()
        raise
