"""Audio I/O: read any libsndfile format as 16 kHz mono float32, header info, atomic wav writes.

See :mod:`speechssl.audio.io` for details.
"""

from speechssl.audio.io import (
    TARGET_SR,
    AudioDecodeError,
    AudioError,
    AudioInfo,
    AudioNotFoundError,
    AudioSegmentError,
    AudioTooShortError,
    EmptyAudioError,
    NonFiniteAudioError,
    audio_info,
    load_audio,
    resample,
    save_audio,
    to_mono,
)

__all__ = [
    "TARGET_SR",
    "AudioDecodeError",
    "AudioError",
    "AudioInfo",
    "AudioNotFoundError",
    "AudioSegmentError",
    "AudioTooShortError",
    "EmptyAudioError",
    "NonFiniteAudioError",
    "audio_info",
    "load_audio",
    "resample",
    "save_audio",
    "to_mono",
]
