"""Log-Mel spectrogram frontend (``logmel``), fully batched.

Per frame ``t`` (samples ``[t * hop_length, t * hop_length + win_length)``, no centring)::

    X_t = rfft(window * frame_t, n=n_fft)         # frame zero-padded on the right to n_fft
    P_t = |X_t| ** power                          # power=2: power spectrum
    feats_t = log(max(P_t @ mel_filters, log_floor))

Defaults (and why):

- ``n_fft = win_length = 400``: one 25 ms window, no zero-padding, so the numbers equal
  ``librosa.feature.melspectrogram(n_fft=400, hop_length=160, center=False)`` and torchaudio's
  ``MelSpectrogram(n_fft=400, hop_length=160, center=False)``; 201 frequency bins, 40 Hz apart.
  ``n_fft`` may be larger (e.g. 512): the frame is zero-padded on the right (Kaldi style), which
  keeps the frame-count formula but differs from librosa, which centres the window in n_fft.
- Slaney mel scale with Slaney (area) normalisation: librosa's default (also Whisper's).
  ``mel_scale: htk, mel_norm: none`` gives the HTK/torchaudio-default filters instead.
- Periodic Hann window (librosa/torchaudio default).
- Natural log with a floor of 1e-6 (power of a -60 dB signal): digital silence gives
  log(1e-6) = -13.8 rather than -23 (librosa's amin 1e-10), which keeps zero-padded or muted
  regions from dominating the feature range.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torchaudio

from speechssl.features.base import (
    FRONTENDS,
    SAMPLE_RATE,
    FrontendSpec,
    block_frames_for,
    frame_blocks,
    frame_signal,
    rowwise_matmul,
)
from speechssl.features.cmvn import CMVNFrontend

BLOCK_FRAMES_PER_THREAD = 512  # cache blocking, see speechssl.features.base.frame_blocks


@dataclasses.dataclass
class LogMelConfig:
    n_mels: int = 80  # mel filters = output dimension
    win_length: int = 400  # samples per analysis window (25 ms at 16 kHz) = frame_length
    hop_length: int = 160  # samples between frames (10 ms) = frame_shift
    n_fft: int = 400  # FFT size >= win_length; frames are zero-padded on the right
    f_min: float = 0.0  # Hz, lowest mel filter edge
    f_max: float | None = None  # Hz, highest edge; None = Nyquist (8000)
    window: Literal["hann", "hamming", "povey", "rectangular"] = "hann"  # periodic hann/hamming
    power: float = 2.0  # 2 = power spectrum, 1 = magnitude
    mel_scale: Literal["slaney", "htk"] = "slaney"  # librosa default / HTK formula
    mel_norm: Literal["slaney", "none"] = "slaney"  # slaney = filters of equal area (librosa default)
    log_floor: float = 1e-6  # log(max(x, log_floor))
    cmvn: Literal["none", "utterance", "global"] = "none"  # see speechssl.features.cmvn
    cmvn_norm_vars: bool = True  # CMVN also divides by the std (False: mean only)


def analysis_window(kind: str, length: int, periodic: bool = True) -> torch.Tensor:
    """[length] float32 window: hann | hamming | povey (hann ** 0.85) | rectangular."""
    if kind == "hann":
        return torch.hann_window(length, periodic=periodic)
    if kind == "hamming":
        return torch.hamming_window(length, periodic=periodic, alpha=0.54, beta=0.46)
    if kind == "povey":
        return torch.hann_window(length, periodic=periodic).pow(0.85)
    if kind == "rectangular":
        return torch.ones(length)
    raise ValueError(f"unknown window {kind!r}; choices: hann, hamming, povey, rectangular")


class LogMel(CMVNFrontend):
    """Log-Mel filterbank energies.

    Input ``wavs [batch, samples]`` at 16 kHz; output ``[batch, frames, n_mels]`` with
    ``frames = num_frames(samples)`` (see :mod:`speechssl.features.base`).
    """

    name = "logmel"

    def __init__(self, config: LogMelConfig):
        c = config
        if c.win_length < 2 or c.hop_length < 1 or c.n_fft < c.win_length:
            raise ValueError(
                f"logmel: need win_length >= 2, hop_length >= 1, n_fft >= win_length; got "
                f"win_length={c.win_length}, hop_length={c.hop_length}, n_fft={c.n_fft}"
            )
        f_max = SAMPLE_RATE / 2 if c.f_max is None else c.f_max
        if not 0 <= c.f_min < f_max <= SAMPLE_RATE / 2:
            raise ValueError(f"logmel: need 0 <= f_min < f_max <= {SAMPLE_RATE // 2}, got {c.f_min}, {f_max}")
        if c.n_mels < 1 or c.power <= 0 or not c.log_floor > 0:
            raise ValueError(f"logmel: need n_mels >= 1, power > 0, log_floor > 0; got {c.n_mels}, {c.power}, {c.log_floor}")
        super().__init__(config, out_dim=c.n_mels)
        self.frame_length = c.win_length
        self.frame_shift = c.hop_length
        self.register_buffer("window", analysis_window(c.window, c.win_length), persistent=False)
        fb = torchaudio.functional.melscale_fbanks(
            c.n_fft // 2 + 1,
            float(c.f_min),
            float(f_max),
            c.n_mels,
            SAMPLE_RATE,
            norm=None if c.mel_norm == "none" else "slaney",
            mel_scale=c.mel_scale,
        )
        self.register_buffer("mel_filters", fb.float().contiguous(), persistent=False)  # [n_fft//2+1, n_mels]

    def compute(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        frames = frame_signal(wavs, self.frame_length, self.frame_shift)  # [B, T, W] view, no copy
        batch, count = frames.shape[:2]
        out = wavs.new_zeros(batch, count, self.out_dim)
        for rows, cols in frame_blocks(batch, count, block_frames_for(wavs.device, BLOCK_FRAMES_PER_THREAD)):
            out[rows, cols] = self._block(frames[rows, cols])
        return out

    def _block(self, x: torch.Tensor) -> torch.Tensor:
        """Frames [b, t, win_length] -> log-Mel [b, t, n_mels]."""
        c = self.config
        if c.n_fft == c.win_length:
            windowed = x * self.window
        else:  # zero-pad each frame on the right to n_fft, written in place
            windowed = x.new_zeros(*x.shape[:-1], c.n_fft)
            torch.mul(x, self.window, out=windowed[..., : c.win_length])
        parts = torch.view_as_real(torch.fft.rfft(windowed))  # [b, t, F, 2], a fresh tensor
        parts.square_()
        power = parts[..., 0] + parts[..., 1]  # |X|^2
        if c.power != 2.0:
            power = power.pow_(c.power / 2.0)
        mel = rowwise_matmul(power, self.mel_filters)  # [b, t, n_mels]
        return mel.clamp_(min=c.log_floor).log_()


FRONTENDS.register("logmel", FrontendSpec(LogMelConfig, LogMel))
