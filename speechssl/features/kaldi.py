"""Kaldi-compatible ``fbank`` and ``mfcc`` frontends, batched and vectorised.

The numbers equal ``torchaudio.compliance.kaldi.fbank`` / ``.mfcc`` (and so Kaldi's
``compute-fbank-feats`` / ``compute-mfcc-feats`` on the same waveform scale) run one utterance at
a time with the same options, to float32 rounding (tested to 1e-4 absolute on log values). The
config field names and units are torchaudio's/Kaldi's (``frame_length`` and ``frame_shift`` in
milliseconds), so ``torchaudio.compliance.kaldi.fbank(wav[None], **kaldi_kwargs(cfg))`` is the
reference. Per frame (samples ``[t * shift, t * shift + length)``, Kaldi ``snip_edges=True``):

1. add ``dither * N(0, 1)`` noise, **only in training mode** (eval is deterministic);
2. subtract the frame mean (``remove_dc_offset``); log energy here if ``raw_energy``;
3. pre-emphasis ``x[i] -= coef * x[i - 1]`` (``x[-1] := x[0]``);
4. window (``povey`` = Hann ** 0.85 by default), zero-pad to a power of two (512);
5. power spectrum, Kaldi mel filters (``low_freq`` 20 Hz .. Nyquist), ``log(max(e, float eps))``;
6. MFCC only: orthonormal DCT-II, keep ``num_ceps``, lifter ``1 + L/2 sin(pi i / L)``, then deltas.

Not supported (refused or absent): ``snip_edges=False`` (would break the frame formula),
VTLN warping, ``subtract_mean`` (use ``cmvn``), sample rates other than 16 kHz.

Units: waveforms are floats in [-1, 1], so Kaldi's default ``dither=1.0`` on the int16 scale
corresponds to ``dither ~ 3e-5`` here; log energies are ``2 * log(32768)`` lower than Kaldi's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torchaudio
from torchaudio.compliance import kaldi as ta_kaldi

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
from speechssl.features.logmel import analysis_window

EPSILON = torch.finfo(torch.float32).eps  # Kaldi's numeric_limits<float>::epsilon()
BLOCK_FRAMES_PER_THREAD = 512  # cache blocking, see speechssl.features.base.frame_blocks


@dataclasses.dataclass
class KaldiFrameOptions:
    """Framing and spectrum options shared by fbank and mfcc (names as in Kaldi/torchaudio)."""

    frame_length: float = 25.0  # ms -> 400 samples
    frame_shift: float = 10.0  # ms -> 160 samples
    dither: float = 0.0  # std of Gaussian noise added per frame, TRAINING MODE ONLY (0 = off)
    preemphasis_coefficient: float = 0.97  # x[i] -= coef * x[i-1]
    remove_dc_offset: bool = True  # subtract each frame's mean
    window_type: Literal["povey", "hanning", "hamming", "rectangular", "blackman"] = "povey"
    blackman_coeff: float = 0.42  # only for window_type=blackman
    round_to_power_of_two: bool = True  # FFT size 512 for a 400-sample frame
    snip_edges: bool = True  # must be True: frames lie fully inside the signal (the speechssl formula)
    low_freq: float = 20.0  # Hz, lowest mel filter edge
    high_freq: float = 0.0  # Hz, highest edge; <= 0 means Nyquist + high_freq
    use_energy: bool = False  # fbank: add a log-energy column; mfcc: replace C0 with log energy
    energy_floor: float = 1.0  # floor on the log energy is log(energy_floor); 0 = no floor
    raw_energy: bool = True  # energy before pre-emphasis and window
    htk_compat: bool = False  # energy column last (fbank) / C0 last (mfcc), as HTK orders them
    cmvn: Literal["none", "utterance", "global"] = "none"  # see speechssl.features.cmvn
    cmvn_norm_vars: bool = True  # CMVN also divides by the std (False: mean only)


@dataclasses.dataclass
class FbankConfig(KaldiFrameOptions):
    num_mel_bins: int = 80  # mel filters (torchaudio's default is 23; 80 is the usual SSL/ASR choice)
    use_log_fbank: bool = True  # log(max(e, eps)); False: linear energies
    use_power: bool = True  # power spectrum; False: magnitude


@dataclasses.dataclass
class MfccConfig(KaldiFrameOptions):
    num_mel_bins: int = 23  # mel filters before the DCT (Kaldi default)
    num_ceps: int = 13  # cepstra kept
    cepstral_lifter: float = 22.0  # 0 = no liftering
    delta_order: int = 2  # 0: 13 dims, 1: + deltas (26), 2: + delta-deltas (39; HuBERT iteration-1 targets)
    delta_window: int = 2  # N: deltas use frames t-N..t+N (torchaudio compute_deltas win_length = 2N+1)


def kaldi_kwargs(cfg: KaldiFrameOptions) -> dict:
    """The ``torchaudio.compliance.kaldi.fbank``/``mfcc`` keyword arguments equal to ``cfg``."""
    out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    for key in ("cmvn", "cmvn_norm_vars", "delta_order", "delta_window"):
        out.pop(key, None)
    out["sample_frequency"] = float(SAMPLE_RATE)
    return out


def kaldi_window(kind: str, length: int, blackman_coeff: float = 0.42) -> torch.Tensor:
    """Kaldi's symmetric analysis windows, [length] float32."""
    if kind in ("hanning", "hamming", "povey", "rectangular"):
        return analysis_window("hann" if kind == "hanning" else kind, length, periodic=False)
    if kind == "blackman":
        a = 2 * math.pi / (length - 1)
        n = torch.arange(length, dtype=torch.float32)
        return blackman_coeff - 0.5 * torch.cos(a * n) + (0.5 - blackman_coeff) * torch.cos(2 * a * n)
    raise ValueError(f"unknown window_type {kind!r}; choices: povey, hanning, hamming, rectangular, blackman")


def compute_deltas(feats: torch.Tensor, feat_lengths: torch.Tensor, window: int = 2) -> torch.Tensor:
    """Regression deltas that stop at each utterance's own last frame.

    ``d_t = sum_{n=1..N} n (c_{t+n} - c_{t-n}) / (2 sum n^2)``, with indices clamped to
    ``[0, len - 1]`` of *that* utterance (edge replication, as torchaudio ``compute_deltas``), so
    padding never leaks into valid frames.

    Args:
        feats: [batch, frames, dim].
        feat_lengths: [batch] valid frames.
        window: N (>= 1).
    Returns:
        Tensor: [batch, frames, dim] (values on padding frames are meaningless; mask them).
    """
    batch, frames, dim = feats.shape
    if frames == 0:
        return feats.clone()
    t = torch.arange(frames, device=feats.device)[None, :]
    last = (feat_lengths.to(feats.device) - 1).clamp(min=0)[:, None]  # [B, 1]
    out = torch.zeros_like(feats)
    for n in range(1, window + 1):
        ahead = torch.minimum(t + n, last).expand(batch, frames)
        behind = torch.minimum((t - n).clamp(min=0), last).expand(batch, frames)
        diff = feats.gather(1, ahead[..., None].expand(-1, -1, dim)) - feats.gather(
            1, behind[..., None].expand(-1, -1, dim)
        )
        out = out + n * diff
    return out / (2 * sum(n * n for n in range(1, window + 1)))


class _KaldiBase(CMVNFrontend):
    """Framing, dither, DC removal, pre-emphasis, window, power spectrum and mel energies."""

    def __init__(self, config: KaldiFrameOptions, out_dim: int):
        c = config
        if not c.snip_edges:
            raise ValueError(f"{self.name}: snip_edges=False is not supported (frames must lie inside the signal)")
        self.frame_length = int(SAMPLE_RATE * c.frame_length * 0.001)
        self.frame_shift = int(SAMPLE_RATE * c.frame_shift * 0.001)
        if self.frame_length < 2 or self.frame_shift < 1:
            raise ValueError(
                f"{self.name}: frame_length {c.frame_length} ms / frame_shift {c.frame_shift} ms give "
                f"{self.frame_length} / {self.frame_shift} samples; need >= 2 / >= 1"
            )
        self.padded_length = 1 << (self.frame_length - 1).bit_length() if c.round_to_power_of_two else self.frame_length
        if self.padded_length % 2:
            raise ValueError(f"{self.name}: FFT size {self.padded_length} is odd; use round_to_power_of_two")
        nyquist = SAMPLE_RATE / 2
        high = c.high_freq if c.high_freq > 0 else nyquist + c.high_freq
        if not 0 <= c.low_freq < high <= nyquist:
            raise ValueError(f"{self.name}: need 0 <= low_freq < high_freq <= {nyquist:g}, got {c.low_freq}, {high}")
        if not 0 <= c.preemphasis_coefficient <= 1:
            raise ValueError(f"{self.name}: preemphasis_coefficient must be in [0, 1], got {c.preemphasis_coefficient}")
        if c.dither < 0:
            raise ValueError(f"{self.name}: dither must be >= 0, got {c.dither}")
        if c.num_mel_bins < 3:
            raise ValueError(f"{self.name}: num_mel_bins must be >= 3, got {c.num_mel_bins}")
        super().__init__(config, out_dim)
        self.register_buffer("window", kaldi_window(c.window_type, self.frame_length, c.blackman_coeff), persistent=False)
        banks, _ = ta_kaldi.get_mel_banks(
            c.num_mel_bins, self.padded_length, float(SAMPLE_RATE), c.low_freq, c.high_freq, 100.0, -500.0, 1.0
        )
        banks = torch.nn.functional.pad(banks.float(), (0, 1))  # [M, F]: Nyquist bin has weight 0
        self.register_buffer("mel_banks", banks.T.contiguous(), persistent=False)  # [F, M]

    def _log_energy(self, x: torch.Tensor) -> torch.Tensor:
        energy = x.pow(2).sum(-1).clamp(min=EPSILON).log()
        if self.config.energy_floor > 0:
            energy = energy.clamp(min=math.log(self.config.energy_floor))
        return energy

    def mel_energies(self, wavs: torch.Tensor, use_power: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[batch, samples] -> (mel energies [batch, frames, num_mel_bins] linear, log energy [batch, frames] or None)."""
        frames = frame_signal(wavs, self.frame_length, self.frame_shift)  # [B, T, W] view, no copy
        batch, count = frames.shape[:2]
        mel = wavs.new_zeros(batch, count, self.config.num_mel_bins)
        energy = wavs.new_zeros(batch, count) if self.config.use_energy else None
        for rows, cols in frame_blocks(batch, count, block_frames_for(wavs.device, BLOCK_FRAMES_PER_THREAD)):
            block_mel, block_energy = self._block(frames[rows, cols], use_power)
            mel[rows, cols] = block_mel
            if energy is not None:
                energy[rows, cols] = block_energy
        return mel, energy

    def _block(self, x: torch.Tensor, use_power: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Frames [b, t, W] -> (mel energies [b, t, num_mel_bins], log energy [b, t] or None)."""
        c = self.config
        if self.training and c.dither > 0:
            x = x + torch.randn_like(x) * c.dither
        if c.remove_dc_offset:
            x = x - x.mean(-1, keepdim=True)
        energy = self._log_energy(x) if c.use_energy and c.raw_energy else None
        # The FFT input, zero-padded to padded_length, is written in place (no padding copy).
        padded = x.new_zeros(*x.shape[:-1], self.padded_length)
        body = padded[..., : self.frame_length]
        if c.preemphasis_coefficient != 0:
            torch.sub(x[..., 1:], x[..., :-1] * c.preemphasis_coefficient, out=body[..., 1:])
            torch.sub(x[..., :1], x[..., :1] * c.preemphasis_coefficient, out=body[..., :1])
        else:
            body.copy_(x)
        body.mul_(self.window)
        if c.use_energy and not c.raw_energy:
            energy = self._log_energy(body)
        parts = torch.view_as_real(torch.fft.rfft(padded))  # [b, t, F, 2], a fresh tensor
        parts.square_()
        spec = parts[..., 0] + parts[..., 1]  # [b, t, F] power
        if not use_power:
            spec = spec.sqrt()
        return rowwise_matmul(spec, self.mel_banks), energy


class KaldiFbank(_KaldiBase):
    """Kaldi log-Mel filterbank: ``[batch, samples] -> [batch, frames, num_mel_bins (+1 with use_energy)]``."""

    name = "fbank"

    def __init__(self, config: FbankConfig):
        super().__init__(config, out_dim=config.num_mel_bins + int(config.use_energy))

    def compute(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        c = self.config
        mel, energy = self.mel_energies(wavs, use_power=c.use_power)
        if c.use_log_fbank:
            mel = mel.clamp(min=EPSILON).log()
        if energy is not None:
            parts = (mel, energy[..., None]) if c.htk_compat else (energy[..., None], mel)
            mel = torch.cat(parts, dim=-1)
        return mel


class KaldiMfcc(_KaldiBase):
    """Kaldi MFCC (+ deltas): ``[batch, samples] -> [batch, frames, num_ceps * (1 + delta_order)]``.

    Deltas are computed per utterance up to its own last valid frame (:func:`compute_deltas`), so
    HuBERT-style 39-dim targets do not depend on how an utterance was batched.
    """

    name = "mfcc"

    def __init__(self, config: MfccConfig):
        if not 1 <= config.num_ceps <= config.num_mel_bins:
            raise ValueError(f"mfcc: need 1 <= num_ceps <= num_mel_bins, got {config.num_ceps}, {config.num_mel_bins}")
        if config.delta_order not in (0, 1, 2) or config.delta_window < 1:
            raise ValueError(
                f"mfcc: delta_order must be 0, 1 or 2 and delta_window >= 1; got {config.delta_order}, {config.delta_window}"
            )
        super().__init__(config, out_dim=config.num_ceps * (1 + config.delta_order))
        dct = torchaudio.functional.create_dct(config.num_ceps, config.num_mel_bins, "ortho")  # [M, C]
        self.register_buffer("dct", dct.float().contiguous(), persistent=False)
        lifter = torch.ones(config.num_ceps)
        if config.cepstral_lifter != 0:
            i = torch.arange(config.num_ceps, dtype=torch.float32)
            lifter = 1.0 + 0.5 * config.cepstral_lifter * torch.sin(math.pi * i / config.cepstral_lifter)
        self.register_buffer("lifter", lifter, persistent=False)

    def compute(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        c = self.config
        mel, energy = self.mel_energies(wavs)
        ceps = rowwise_matmul(mel.clamp(min=EPSILON).log(), self.dct) * self.lifter  # [B, T, C]
        if energy is not None:
            ceps = torch.cat([energy[..., None], ceps[..., 1:]], dim=-1)
        if c.htk_compat:
            c0 = ceps[..., :1] if c.use_energy else ceps[..., :1] * math.sqrt(2)
            ceps = torch.cat([ceps[..., 1:], c0], dim=-1)
        feats = [ceps]
        feat_lengths = self.num_frames(lengths)
        for _ in range(c.delta_order):
            feats.append(compute_deltas(feats[-1], feat_lengths, c.delta_window))
        return torch.cat(feats, dim=-1)


FRONTENDS.register("fbank", FrontendSpec(FbankConfig, KaldiFbank))
FRONTENDS.register("mfcc", FrontendSpec(MfccConfig, KaldiMfcc))
