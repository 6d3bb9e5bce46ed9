"""Reading and writing audio files: any format libsndfile reads, mono, 16 kHz, float32.

Usage::

    from speechssl.audio import load_audio, audio_info, save_audio

    wav = load_audio("a.flac")                          # Tensor [samples] float32, 16 kHz, mono
    seg = load_audio("a.flac", start=1.5, duration=2.0)  # only that part is read from disk
    info = audio_info("a.flac")                          # header only: native rate, channels, length
    save_audio("out.wav", wav)                           # atomic 16-bit PCM wav

Multi-channel audio is averaged to mono; other rates are resampled with soxr (high quality).
Both are logged once per channel count / rate, so a corpus at 44.1 kHz gives one note, not one
per file. Every failure raises a subclass of :class:`AudioError` (a ``ValueError``) whose message
names the file and the reason; nothing from inside libsndfile escapes bare.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from speechssl.utils import atomic_path

logger = logging.getLogger(__name__)

TARGET_SR = 16000
# A segment may end up to this many seconds past the end of the file (rounding in segment
# lists written by other tools); it is then cut at the end of the file. Beyond that it is an error.
SEGMENT_END_TOLERANCE = 0.05
# Compressed headers (mp3) only estimate the length; a larger shortfall than this is logged.
TRUNCATION_TOLERANCE = 0.01


class AudioError(ValueError):
    """A file could not be used as audio. ``.path`` is the file, ``.reason`` says why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across processes (default pickling would drop ``reason``)
        return (type(self), (self.path, self.reason))


class AudioNotFoundError(AudioError):
    """The file does not exist."""


class AudioDecodeError(AudioError):
    """The file exists but cannot be decoded (unknown format, corrupt bytes, a folder, ...)."""


class EmptyAudioError(AudioError):
    """The file (or the requested segment) holds no samples."""


class NonFiniteAudioError(AudioError):
    """The decoded samples contain NaN or infinity."""


class AudioTooShortError(AudioError):
    """Fewer samples than the caller's ``min_samples`` (e.g. a model's receptive field)."""


class AudioSegmentError(AudioError):
    """``start``/``duration`` are invalid or lie outside the file."""


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """Header facts about a file, at its native rate."""

    num_samples: int  # samples per channel
    sample_rate: int  # Hz, native
    channels: int
    duration: float  # seconds = num_samples / sample_rate
    format: str = ""  # libsndfile format, e.g. "WAV", "FLAC"
    subtype: str = ""  # e.g. "PCM_16", "FLOAT"


_noted: set[tuple[str, int]] = set()
_noted_lock = threading.Lock()


def _note_once(kind: str, value: int, message: str) -> None:
    with _noted_lock:
        if (kind, value) in _noted:
            return
        _noted.add((kind, value))
    logger.warning(message)


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioNotFoundError(path, "file not found")
    if path.is_dir():
        raise AudioDecodeError(path, "is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise EmptyAudioError(path, "file is empty (0 bytes)")


def _decode_reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"cannot decode audio ({text})"


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read only the header of ``path``.

    Returns:
        AudioInfo: ``num_samples`` per channel, native ``sample_rate``, ``channels``, ``duration`` s.
    Raises:
        AudioNotFoundError, AudioDecodeError, EmptyAudioError.
    """
    path = Path(path)
    _check_exists(path)
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError, ValueError, TypeError) as exc:
        raise AudioDecodeError(path, _decode_reason(exc)) from None
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioDecodeError(path, f"invalid header (rate {info.samplerate}, channels {info.channels})")
    return AudioInfo(
        num_samples=int(info.frames),
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        duration=int(info.frames) / int(info.samplerate),
        format=str(info.format),
        subtype=str(info.subtype),
    )


def _segment_frames(
    path: Path, total: int, sr: int, start: float | None, duration: float | None
) -> tuple[int, int]:
    """(first frame, number of frames) for the requested segment at the native rate."""
    if start is not None and (not math.isfinite(start) or start < 0):
        raise AudioSegmentError(path, f"start must be a finite number >= 0, got {start!r}")
    if duration is not None and (not math.isfinite(duration) or duration <= 0):
        raise AudioSegmentError(path, f"duration must be a finite number > 0, got {duration!r}")
    first = int(round((start or 0.0) * sr))
    if first >= total > 0:
        raise AudioSegmentError(
            path, f"segment starts at {start} s but the file lasts {total / sr:.3f} s"
        )
    if duration is None:
        return first, total - first
    count = int(round(duration * sr))
    if first + count > total:
        over = (first + count - total) / sr
        if over > SEGMENT_END_TOLERANCE:
            raise AudioSegmentError(
                path,
                f"segment [{start or 0.0}, {(start or 0.0) + duration}] s ends {over:.3f} s past "
                f"the end of the file ({total / sr:.3f} s)",
            )
        count = total - first
    return first, count


def to_mono(samples: np.ndarray) -> np.ndarray:
    """[frames, channels] -> [frames] by averaging the channels."""
    if samples.shape[1] == 1:
        return samples[:, 0]
    return samples.mean(axis=1, dtype=np.float32)


def resample(wav: np.ndarray | torch.Tensor, orig_sr: int, target_sr: int = TARGET_SR) -> torch.Tensor:
    """Resample a 1-D signal with soxr (high quality, linear phase).

    Args:
        wav: [samples] float.
    Returns:
        Tensor: [round(samples * target_sr / orig_sr)] float32.
    """
    x = wav.detach().cpu().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if orig_sr != target_sr and x.size > 0:
        x = soxr.resample(x, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(x))


def load_audio(
    path: str | os.PathLike,
    start: float | None = None,
    duration: float | None = None,
    target_sr: int = TARGET_SR,
    min_samples: int = 0,
) -> torch.Tensor:
    """Read ``path`` (or the segment ``[start, start + duration)`` seconds) as mono ``target_sr`` audio.

    Only the requested segment is read from disk. Integer PCM is scaled to [-1, 1).

    Args:
        path: any file libsndfile can read (wav, flac, ogg/vorbis/opus, mp3, aiff, ...).
        start: segment start in seconds (default: beginning of the file).
        duration: segment length in seconds (default: to the end of the file).
        target_sr: output rate in Hz; other rates are resampled (noted once per rate).
        min_samples: raise :class:`AudioTooShortError` below this many output samples.
    Returns:
        Tensor: [samples] float32.
    Raises:
        AudioNotFoundError, AudioDecodeError, EmptyAudioError, NonFiniteAudioError,
        AudioTooShortError, AudioSegmentError (all subclasses of AudioError / ValueError).
    """
    path = Path(path)
    _check_exists(path)
    try:
        with sf.SoundFile(str(path)) as f:
            sr, channels, total = int(f.samplerate), int(f.channels), int(f.frames)
            first, count = _segment_frames(path, total, sr, start, duration)
            if first > 0:
                f.seek(first)
            data = f.read(frames=count, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (RuntimeError, OSError, ValueError, TypeError, EOFError) as exc:
        raise AudioDecodeError(path, _decode_reason(exc)) from None
    if data.shape[0] == 0:
        if count > 0:
            raise AudioDecodeError(path, f"header announces {total} samples but none could be decoded (truncated?)")
        where = "" if start is None and duration is None else f" in segment start={start} duration={duration}"
        raise EmptyAudioError(path, f"no samples{where}")
    if data.shape[0] < count * (1 - TRUNCATION_TOLERANCE):
        logger.warning(
            "%s: decoded %d of the %d samples the header announces (truncated file?)", path, data.shape[0], count
        )
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - finite.sum())
        first_bad = int(np.argmin(finite.all(axis=1)))
        raise NonFiniteAudioError(
            path, f"{bad} non-finite (NaN/inf) sample(s), first at sample {first + first_bad}"
        )
    if channels > 1:
        _note_once("channels", channels, f"downmixing {channels}-channel audio to mono (first: {path})")
    mono = to_mono(data)
    if sr != target_sr:
        _note_once("rate", sr, f"resampling {sr} Hz audio to {target_sr} Hz (first: {path})")
    wav = resample(mono, sr, target_sr)
    if wav.numel() < min_samples:
        raise AudioTooShortError(
            path,
            f"{wav.numel()} samples ({wav.numel() / target_sr:.4f} s) at {target_sr} Hz, "
            f"fewer than the required {min_samples}",
        )
    return wav


def save_audio(path: str | os.PathLike, wav: torch.Tensor | np.ndarray, sample_rate: int = TARGET_SR) -> None:
    """Write a 16-bit PCM wav atomically (temporary file, then rename).

    Args:
        wav: [samples] or [channels, samples] float in [-1, 1] (values outside are clipped).
    Raises:
        ValueError: non-finite samples or a tensor with more than 2 dimensions.
    """
    x = wav.detach().cpu().float().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav, np.float32)
    if x.ndim == 2:
        x = x.T  # soundfile wants [frames, channels]
    elif x.ndim != 1:
        raise ValueError(f"save_audio({path}): expected [samples] or [channels, samples], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"save_audio({path}): waveform has non-finite samples")
    x = np.clip(x, -1.0, 1.0)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), x, int(sample_rate), subtype="PCM_16", format="WAV")
