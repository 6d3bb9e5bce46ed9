"""Batched waveform augmentations with explicit parameters (one value per utterance), and crops.

Every function takes a zero-padded batch ``x`` [batch, samples] of 16 kHz audio and ``lengths``
[batch] (valid samples) and returns the augmented batch (padding zero again) and, when the duration
changes, the new lengths. Random draws come from :func:`uniform` / :func:`coin` on the CPU with an
optional ``torch.Generator`` (None: the global RNG, which the Trainer checkpoints, so resumed runs
draw the same augmentations); :mod:`speechssl.augment.pipeline` samples the parameters.

Built on torchaudio's functional ops where they do the job: ``resample`` (speed: exact rational
resampling on a 1 % grid of factors), torchaudio's phase-vocoder recurrence (tempo, and pitch as speed
+ stretch back; :func:`stretch` runs it on the whole batch with a rate per row, in real arithmetic),
FFT convolution (reverberation). torchaudio's own ``pitch_shift`` is not used: it resamples from
``int(sr / rate)`` Hz, an irrational ratio whose sinc kernel is thousands of phases long (seconds per
call on a CPU). FFTs use :func:`fast_len` sizes (2^a 3^b 5^c): a prime width is 10-20x slower, a power
of two up to 1.7x longer than needed. The pipeline runs the costly ops only on the rows whose coin came
up, so their cost scales with ``p``.

Known limit: like torchaudio's ``phase_vocoder`` (no phase locking), the stretch loses power where
adjacent bins' phases interfere (speech of the synthetic corpus: 40-65 % of its power after +-1-2
semitones; a 200 Hz tone stretched at rate 0.94: 6 %); :func:`tempo` and :func:`pitch_shift` restore
each utterance's RMS afterwards, so the level is kept, not the phase coherence (some phasiness).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000
#: Spectral exponent beta (power ~ 1 / f^beta) of each noise colour.
NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0, "blue": -1.0, "violet": -2.0}
_EPS = 1e-10


# ---- random draws (CPU, reproducible with a generator) ------------------------------------------
def uniform(n: int, low: float, high: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """[n] float32 draws from U[low, high] on the CPU."""
    return low + (high - low) * torch.rand(n, generator=generator)


def coin(n: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """[n] bool, each True with probability ``p`` (one draw per item even for p in {0, 1}, so the RNG
    stream does not depend on p)."""
    return torch.rand(n, generator=generator) < p


def fast_len(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: an FFT size pocketfft runs fast (a prime-sized FFT is
    10-20x slower; a power of two can be 1.7x longer than needed: reverb 3x faster than with one)."""
    n = max(1, int(n))
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def valid_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[B, width] bool, True on the first ``lengths[b]`` positions."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def _repad(parts: list[torch.Tensor], lengths: torch.Tensor) -> torch.Tensor:
    """Stack 1-D tensors of valid samples into a zero-padded [B, max length] batch."""
    width = max(1, int(lengths.max())) if len(parts) else 1
    out = parts[0].new_zeros(len(parts), width)
    for i, p in enumerate(parts):
        out[i, : p.numel()] = p
    return out


def _rms(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B] root mean square over the valid samples."""
    m = valid_mask(lengths, x.shape[1]).to(x.dtype)
    return ((x.pow(2) * m).sum(1) / lengths.clamp(min=1).to(x.dtype)).sqrt()


# ---- level and sign -----------------------------------------------------------------------------
def apply_gain(x: torch.Tensor, gain_db: torch.Tensor) -> torch.Tensor:
    """x [B, L] times 10^(gain_db / 20), gain_db [B]."""
    return x * torch.pow(10.0, gain_db.to(x) / 20.0)[:, None]


def apply_polarity(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """x [B, L] with the sign of rows where ``flip`` [B] is True inverted."""
    return torch.where(flip.to(x.device)[:, None], -x, x)


def time_shift(x: torch.Tensor, lengths: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Circular shift of each utterance's valid samples by ``shifts`` [B] samples (positive: later)."""
    width = x.shape[1]
    lens = lengths.to(x.device).clamp(min=1)
    idx = (torch.arange(width, device=x.device)[None, :] - shifts.to(x.device)[:, None]) % lens[:, None]
    return x.gather(1, idx) * valid_mask(lengths.to(x.device), width)


# ---- noise --------------------------------------------------------------------------------------
def coloured_noise(batch: int, width: int, beta: torch.Tensor, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """[batch, width] unit-RMS Gaussian noise with power spectrum ~ 1 / f^beta[b] (0 white, 1 pink, 2 brown)."""
    return colour_noise(torch.randn(batch, width, generator=generator), beta)


def colour_noise(white: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """White noise [B, W] shaped to a power spectrum ~ 1 / f^beta[b] and normalised to unit RMS.
    White rows (beta 0) skip the FFT."""
    if not bool((beta != 0).any()):
        return white / white.pow(2).mean(1, keepdim=True).sqrt().clamp(min=_EPS)
    width = white.shape[1]
    nfft = fast_len(width)
    spec = torch.fft.rfft(white, n=nfft, dim=1)
    # DC shaped as the first bin; frequencies in bins of a width-long transform
    freqs = (torch.arange(spec.shape[1], dtype=torch.float32) * (width / nfft)).clamp(min=1.0)
    spec = spec * freqs[None, :].pow(-beta.float()[:, None] / 2.0)
    noise = torch.fft.irfft(spec, n=nfft, dim=1)[:, :width]
    return noise / noise.pow(2).mean(1, keepdim=True).sqrt().clamp(min=_EPS)


def add_noise(x: torch.Tensor, lengths: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """x + noise scaled so that the SNR over each utterance's valid samples is ``snr_db`` [B].

    A silent utterance stays silent (its SNR is undefined). noise: [B, L] like x.
    """
    lens = lengths.to(x.device)
    noise = noise.to(x) * valid_mask(lens, x.shape[1])
    p_signal = _rms(x, lens).pow(2)
    p_noise = _rms(noise, lens).pow(2).clamp(min=_EPS)
    scale = (p_signal / (p_noise * torch.pow(10.0, snr_db.to(x) / 10.0))).sqrt()
    return x + scale[:, None] * noise


class NoiseBank:
    """Noise recordings from a manifest (the first ``max_files``), cut into random excerpts.

    Raises:
        ValueError: the manifest is missing, empty or unreadable (named).
    """

    def __init__(self, manifest: str | Path, max_files: int = 200):
        from speechssl.audio.io import load_audio
        from speechssl.data.manifest import read_manifest

        records = read_manifest(manifest)[:max_files]
        self.noises = []
        for rec in records:
            wav = load_audio(rec["path"], rec.get("start"), rec.get("duration"))
            if wav.numel() and float(wav.abs().max()) > 0:
                self.noises.append(wav.float())
        if not self.noises:
            raise ValueError(f"noise manifest {manifest}: no non-silent recording among its first {max_files}")
        self.manifest = str(manifest)

    def sample(self, batch: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """[batch, width] excerpts at random offsets of random recordings (looped when shorter)."""
        which = torch.randint(len(self.noises), (batch,), generator=generator).tolist()
        offsets = torch.rand(batch, generator=generator).tolist()
        out = torch.zeros(batch, width)
        for b, (k, u) in enumerate(zip(which, offsets)):
            noise = self.noises[k]
            reps = math.ceil((width + noise.numel()) / noise.numel())
            start = int(u * noise.numel())
            out[b] = noise.repeat(reps)[start: start + width]
        return out


# ---- duration and pitch -------------------------------------------------------------------------
def speed(x: torch.Tensor, lengths: torch.Tensor, factors: torch.Tensor, step: float = 0.01
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Speed perturbation: utterance b resampled so its duration is lengths[b] / factors[b] (pitch x factor).

    Factors are rounded to multiples of ``step`` so that resampling is between small integer rates
    (torchaudio ``resample`` from round(f / step) to round(1 / step)). Returns (x', lengths').
    """
    new_rate = round(1.0 / step)
    rates = [max(1, round(float(f) / step)) for f in factors]
    parts, out_lens = [], []
    for b, rate in enumerate(rates):
        n = int(lengths[b])
        seg = x[b, :n]
        if rate != new_rate:
            seg = AF.resample(seg[None], rate, new_rate)[0]
        parts.append(seg)
        out_lens.append(seg.numel())
    out_lengths = torch.tensor(out_lens, dtype=torch.long, device=lengths.device)
    return _repad(parts, out_lengths), out_lengths


def stretch(x: torch.Tensor, lengths: torch.Tensor, rates: torch.Tensor, n_fft: int = 512, hop: int = 128
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase-vocoder time stretch of a whole batch at once: row b played ``rates[b]`` times faster,
    pitch kept, new length round(lengths[b] / rates[b]). One STFT / ISTFT for the batch and the
    vocoder's magnitude interpolation and phase accumulation vectorised over rows with their own
    rates (the recurrence of ``torchaudio.functional.phase_vocoder``, which takes one rate per call:
    a Python loop over rows cost 5-10x more). Returns (x', lengths')."""
    lens = lengths.to(x.device).long()
    rates = rates.to(x.device, torch.float32).clamp(min=1e-3)
    out_lens = (lens.float() / rates).round().long().clamp(min=1)
    if x.shape[1] < n_fft:  # too short for an STFT frame: plain resampling (pitch changes, barely audible)
        parts = [AF.resample(x[b:b + 1, : int(lens[b])], max(1, round(float(rates[b]) * 100)), 100)[0]
                 for b in range(x.shape[0])]
        out_lens = torch.tensor([p.numel() for p in parts], dtype=torch.long, device=lengths.device)
        return _repad(parts, out_lens), out_lens
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, n_fft, hop, window=window, return_complex=True)  # [B, F, T]
    frames = spec.shape[2]
    out_frames = int(out_lens.max()) // hop + 1
    pos = torch.arange(out_frames, device=x.device, dtype=torch.float32)[None, :] * rates[:, None]  # [B, T']
    i0 = pos.floor().long().clamp(max=frames - 1)
    i1 = (i0 + 1).clamp(max=frames - 1)
    alpha = (pos - pos.floor()).clamp(0.0, 1.0)[:, None, :]
    ri = torch.view_as_real(spec)  # [B, F, T, 2]: real arithmetic (complex abs / div are slow on CPU)
    shape = (-1, spec.shape[1], -1, 2)
    r0, q0 = ri.gather(2, i0[:, None, :, None].expand(*shape)).unbind(-1)
    r1, q1 = ri.gather(2, i1[:, None, :, None].expand(*shape)).unbind(-1)
    mag0, mag1 = torch.sqrt(r0 * r0 + q0 * q0), torch.sqrt(r1 * r1 + q1 * q1)
    m = (1 - alpha) * mag0 + alpha * mag1
    # The vocoder's phase: the first frame's, then each step's phase difference between the two input
    # frames, accumulated. Only exp(i phase) matters, so the accumulation is a running product of unit
    # complex numbers, exp(i (phi1 - phi0)) = s1 conj(s0) / |s1 s0| (no atan2 / sin / cos, which cost most
    # of the time, and no 2 pi wrapping).
    norm = mag0 * mag1
    ok = norm > 1e-20
    inv = torch.where(ok, 1.0 / norm.clamp(min=1e-20), 0.0)
    step_re = torch.where(ok, (r1 * r0 + q1 * q0) * inv, 1.0)
    step_im = (q1 * r0 - r1 * q0) * inv
    first = ri[:, :, :1]
    first_mag = torch.sqrt(first[..., 0] ** 2 + first[..., 1] ** 2)
    first_ok = first_mag > 1e-10
    first_re = torch.where(first_ok, first[..., 0] / first_mag.clamp(min=1e-10), 1.0)
    first_im = torch.where(first_ok, first[..., 1] / first_mag.clamp(min=1e-10), 0.0)
    rotation = torch.complex(torch.cat([first_re, step_re[:, :, :-1]], 2),
                             torch.cat([first_im, step_im[:, :, :-1]], 2)).cumprod(2)
    rot = torch.view_as_real(rotation)
    scale = m / torch.sqrt(rot[..., 0] ** 2 + rot[..., 1] ** 2).clamp(min=1e-12)  # and the product's drift
    out = torch.istft(rotation * scale, n_fft, hop, window=window, length=int(out_lens.max()))
    return out * valid_mask(out_lens, out.shape[1]), out_lens.to(lengths.device)


def tempo(x: torch.Tensor, lengths: torch.Tensor, factors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tempo change without pitch change: duration lengths[b] / factors[b]. Returns (x', lengths')."""
    y, out_lens = stretch(x, lengths, factors.float())
    gain = _rms(x, lengths.to(x.device)) / _rms(y, out_lens.to(y.device)).clamp(min=_EPS)
    return y * gain[:, None], out_lens


def pitch_shift(x: torch.Tensor, lengths: torch.Tensor, semitones: torch.Tensor) -> torch.Tensor:
    """Pitch x 2^(semitones[b] / 12), duration kept: speed change (1 % grid) then one batched
    phase-vocoder :func:`stretch` of every row back to its original length."""
    factors = torch.pow(2.0, semitones.float() / 12.0)
    sped, sped_lens = speed(x, lengths, factors)
    rates = sped_lens.float() / lengths.clamp(min=1).float()
    out, out_lens = stretch(sped, sped_lens, rates)
    out = out * valid_mask(torch.minimum(out_lens, lengths.to(out_lens)), out.shape[1])
    out = torch.nn.functional.pad(out, (0, max(0, x.shape[1] - out.shape[1])))[:, : x.shape[1]]
    lens = lengths.to(x.device)
    return out * (_rms(x, lens) / _rms(out, lens).clamp(min=_EPS))[:, None]  # the vocoder's loss, undone


# ---- room and channel ---------------------------------------------------------------------------
def synthetic_rir(rt60: torch.Tensor, drr_db: torch.Tensor, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """[B, N] room impulse responses: a unit direct path at sample 0 and a Gaussian tail decaying by
    60 dB over rt60[b] seconds (Polack 1988), scaled to a direct-to-reverberant energy ratio drr_db[b]."""
    n = max(2, int(math.ceil(float(rt60.max()) * SAMPLE_RATE)))
    t = torch.arange(n, dtype=torch.float32)[None, :] / SAMPLE_RATE
    decay = torch.exp(-6.9078 * t / rt60.float()[:, None])  # ln(1000): amplitude -60 dB at rt60
    tail = torch.randn(rt60.numel(), n, generator=generator) * decay * (t < rt60.float()[:, None])
    tail[:, 0] = 0.0
    tail_energy = tail.pow(2).sum(1).clamp(min=_EPS)
    tail = tail * (torch.pow(10.0, -drr_db.float() / 10.0) / tail_energy).sqrt()[:, None]
    tail[:, 0] = 1.0
    return tail


def reverberate(x: torch.Tensor, lengths: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """Convolve utterance b with rir[b] [N], keep the first L samples (the direct path at 0 keeps the
    alignment) and each utterance's RMS."""
    lens = lengths.to(x.device)
    width = x.shape[1]
    nfft = fast_len(width + rir.shape[1] - 1)  # linear (not circular) convolution, a fast FFT size
    spec = torch.fft.rfft(x, n=nfft, dim=1) * torch.fft.rfft(rir.to(x), n=nfft, dim=1)
    wet = torch.fft.irfft(spec, n=nfft, dim=1)[:, :width] * valid_mask(lens, width)
    gain = _rms(x, lens) / _rms(wet, lens).clamp(min=_EPS)
    return wet * gain[:, None]


def band_limit(x: torch.Tensor, lengths: torch.Tensor, lowpass_hz: torch.Tensor, highpass_hz: torch.Tensor,
               transition_hz: float = 200.0) -> torch.Tensor:
    """Zero-phase FFT filter: pass [highpass_hz[b], lowpass_hz[b]] with raised-cosine edges of
    ``transition_hz`` (highpass 0: low-pass only)."""
    width = x.shape[1]
    nfft = fast_len(width)
    spec = torch.fft.rfft(x, n=nfft, dim=1)
    freqs = torch.fft.rfftfreq(nfft, d=1.0 / SAMPLE_RATE).to(x.device)[None, :]

    def edge(cut: torch.Tensor) -> torch.Tensor:  # 0 below cut - t/2, 1 above cut + t/2
        z = ((freqs - cut.to(x)[:, None]) / transition_hz + 0.5).clamp(0.0, 1.0)
        return 0.5 - 0.5 * torch.cos(math.pi * z)

    gain = (1.0 - edge(lowpass_hz)) * torch.where(highpass_hz.to(x.device)[:, None] > 0, edge(highpass_hz), 1.0)
    out = torch.fft.irfft(spec * gain, n=nfft, dim=1)[:, :width]
    return out * valid_mask(lengths.to(x.device), width)


def random_eq(x: torch.Tensor, lengths: torch.Tensor, gains_db: torch.Tensor, knots_hz: torch.Tensor) -> torch.Tensor:
    """Zero-phase FFT equaliser: a smooth gain curve per utterance, linear in log frequency between
    ``knots_hz`` [K] with ``gains_db`` [B, K] at the knots (a random microphone / room colouring)."""
    width = x.shape[1]
    nfft = fast_len(width)
    freqs = torch.fft.rfftfreq(nfft, d=1.0 / SAMPLE_RATE).to(x.device)
    logf, logk = torch.log1p(freqs), torch.log1p(knots_hz.to(x.device).float())
    idx = torch.searchsorted(logk, logf).clamp(1, logk.numel() - 1)
    w = ((logf - logk[idx - 1]) / (logk[idx] - logk[idx - 1])).clamp(0.0, 1.0)
    g = gains_db.to(x)
    curve_db = g[:, idx - 1] * (1 - w) + g[:, idx] * w
    out = torch.fft.irfft(torch.fft.rfft(x, n=nfft, dim=1) * torch.pow(10.0, curve_db / 20.0), n=nfft, dim=1)[:, :width]
    return out * valid_mask(lengths.to(x.device), width)


def mu_law_codec(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Mu-law compand, quantise to 2^bits[b] levels and expand (G.711-like at 8 bits), peak-normalised
    per utterance so the quantiser's range is used, then scaled back."""
    peak = x.abs().amax(1, keepdim=True).clamp(min=_EPS)
    y = x / peak
    mu = (torch.pow(2.0, bits.to(x)) - 1.0)[:, None]
    comp = torch.sign(y) * torch.log1p(mu * y.abs()) / torch.log1p(mu)
    q = torch.round((comp + 1.0) / 2.0 * mu) / mu * 2.0 - 1.0
    out = torch.sign(q) * (torch.pow(1.0 + mu, q.abs()) - 1.0) / mu
    return out * peak * (x != 0)


# ---- crops --------------------------------------------------------------------------------------
def random_crop(x: torch.Tensor, lengths: torch.Tensor, crop: int, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One random window of ``crop`` samples per utterance (the whole utterance when shorter).

    Returns ([B, crop] zero-padded, lengths [B])."""
    lens = lengths.cpu()
    starts = (torch.rand(x.shape[0], generator=generator) * (lens - crop).clamp(min=0).add(1)).long()
    return _gather_windows(x, lens, starts, crop)


def two_crops(x: torch.Tensor, lengths: torch.Tensor, crop: int, min_gap: int = 0,
              generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two windows of ``crop`` samples of each utterance (COLA's positives), ``min_gap`` samples apart
    when the utterance is long enough (>= 2 crop + min_gap); otherwise two independent random windows
    (which may overlap), or the whole utterance twice when it is shorter than ``crop``.

    Returns (view_a [B, crop], lengths_a [B], view_b [B, crop], lengths_b [B]); which of the two
    windows comes first in time is random.
    """
    lens = lengths.cpu()
    u = torch.rand(x.shape[0], 3, generator=generator)
    free = (lens - 2 * crop - min_gap).clamp(min=0)
    lo, hi = torch.minimum(u[:, 0], u[:, 1]), torch.maximum(u[:, 0], u[:, 1])
    first = (lo * (free + 1)).long().clamp(max=free)
    second = (hi * (free + 1)).long().clamp(max=free) + crop + min_gap
    apart = lens >= 2 * crop + min_gap
    span = (lens - crop).clamp(min=0).add(1)
    first = torch.where(apart, first, (u[:, 0] * span).long())
    second = torch.where(apart, second, (u[:, 1] * span).long())
    swap = u[:, 2] < 0.5
    start_a, start_b = torch.where(swap, second, first), torch.where(swap, first, second)
    a, la = _gather_windows(x, lens, start_a, crop)
    b, lb = _gather_windows(x, lens, start_b, crop)
    return a, la, b, lb


def _gather_windows(x: torch.Tensor, lens: torch.Tensor, starts: torch.Tensor, crop: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    out_lens = torch.minimum(lens, torch.full_like(lens, crop))
    idx = (starts[:, None] + torch.arange(crop)[None, :]).clamp(max=max(x.shape[1] - 1, 0)).to(x.device)
    out = x.gather(1, idx) * valid_mask(out_lens.to(x.device), crop)
    return out, out_lens.to(x.device)
