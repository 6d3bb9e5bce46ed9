"""eSpeak NG backend for the synthetic corpus: real (if robotic) English phonetics.

Each utterance runs ``espeak-ng -m -v <voice>+<variant> -s <wpm> -p <pitch> -w tmp.wav`` on
SSML ``<speak><prosody range="N%">text</prosody></speak>`` (the pitch *range* is only reachable
through SSML: a voice-variant file passed by path is silently ignored by espeak-ng 1.51), then
reads the 22.05 kHz output and resamples it to 16 kHz with :func:`speechssl.audio.resample`.
eSpeak NG is deterministic, so the same arguments give the same samples.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import soundfile as sf

from speechssl.audio import resample

# English accents shipped with espeak-ng (not the optional mbrola voices).
ENGLISH_VOICES = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
    "en-us-nyc",
)  # fmt: skip
# Other languages reading the English text: strong accents, for extra speaker variety.
FOREIGN_VOICES = ("de", "fr", "nl", "es", "it", "sv", "pl", "pt")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")


class EspeakNotFoundError(OSError):
    """The ``espeak-ng`` program is not installed (or not on PATH)."""


@dataclass
class EspeakParams:
    """Arguments of one espeak-ng call."""

    voice: str = "en-us"  # language/accent voice
    variant: str = "m3"  # voice variant (m1-m7, f1-f5)
    words_per_minute: int = 165  # -s
    pitch: int = 50  # -p, 0-99 (base pitch)
    range_percent: int = 100  # SSML prosody range, percent of the voice's default range


def espeak_binary() -> str | None:
    """Path of ``espeak-ng`` or ``None``."""
    return shutil.which("espeak-ng")


@functools.lru_cache(maxsize=1)
def espeak_version() -> str:
    """``espeak-ng --version`` first line (part of the corpus cache key)."""
    exe = require_espeak()
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"


def require_espeak() -> str:
    exe = espeak_binary()
    if exe is None:
        raise EspeakNotFoundError(
            "the espeak backend needs the espeak-ng program, which is not on PATH; install it "
            "(Debian/Ubuntu: apt-get install espeak-ng; macOS: brew install espeak-ng) or use backend='formant'"
        )
    return exe


def render_espeak(text: str, params: EspeakParams) -> np.ndarray:
    """Speak ``text`` with espeak-ng.

    Returns:
        [samples] float32 at 16 kHz, RMS 0.05, leading/trailing silence trimmed to 20 ms.
    Raises:
        EspeakNotFoundError: espeak-ng is missing. OSError: espeak-ng failed (its stderr is quoted).
    """
    exe = require_espeak()
    for name, value, lo, hi in (("pitch", params.pitch, 0, 99), ("words_per_minute", params.words_per_minute, 80, 450),
                                ("range_percent", params.range_percent, 0, 400)):  # fmt: skip
        if not lo <= value <= hi:
            raise ValueError(f"espeak {name} must be within [{lo}, {hi}], got {value}")
    ssml = f'<speak><prosody range="{int(params.range_percent)}%">{escape(text)}</prosody></speak>'
    with tempfile.TemporaryDirectory(prefix="speechssl-espeak-") as tmp:
        wav_path = Path(tmp) / "out.wav"
        cmd = [exe, "-m", "-v", f"{params.voice}+{params.variant}", "-s", str(int(params.words_per_minute)),
               "-p", str(int(params.pitch)), "-w", str(wav_path), ssml]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0 or not wav_path.exists():
            raise OSError(f"espeak-ng failed (exit {proc.returncode}) for voice {params.voice}+{params.variant}: "
                          f"{proc.stderr.strip() or proc.stdout.strip()}")  # fmt: skip
        wav, sr = sf.read(str(wav_path), dtype="float32")
    if wav.ndim == 2:
        wav = wav.mean(axis=1)
    wav = resample(wav, sr, 16000).numpy()
    active = np.flatnonzero(np.abs(wav) > 1e-3)
    if len(active) == 0:
        raise OSError(f"espeak-ng produced silence for {text!r} with voice {params.voice}+{params.variant}")
    margin = 320
    wav = wav[max(active[0] - margin, 0) : active[-1] + margin]
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))
    return (wav * (0.05 / rms)).astype(np.float32)
