"""Pure-numpy source-filter ("formant") speech synthesiser for the synthetic corpus.

Model (after Klatt 1980, "Software for a cascade/parallel formant synthesizer", JASA 67):

* **Text -> phones.** ``text_to_phones`` maps letters and common digraphs to a 40-phone
  inventory with fixed rules, so the same text always gives the same phone sequence. The first
  vowel of a content word is stressed. ``render_formant_phones`` takes a phone sequence directly
  (the spoken-word task's lexicon, :mod:`speechssl.corpora.words`).
* **Phones -> segments.** Each phone becomes one or more segments with a duration and targets:
  voicing / frication / aspiration amplitudes, formant targets F1-F3 (loci for consonants,
  two targets for diphthongs), a frication band. Stops are closure + burst (+ aspiration).
* **Source.** A Rosenberg glottal-flow pulse train (Rosenberg 1971) driven by an F0 contour:
  declination, pitch accents on stressed syllables (Gaussian bumps, width = contour sharpness),
  a final fall or question rise, slow drift, per-period jitter and shimmer; the flow derivative
  (lip radiation) is the excitation. Aspiration noise is gated by the open phase (breathiness).
* **Filter.** Five resonators (2nd-order all-pole sections with unity DC gain) in cascade,
  speaker-scaled by a vocal-tract-length factor, plus an extra spectral tilt. Frication noise
  goes through a band-pass in log-frequency. The time-varying filters are applied frame by
  frame in the STFT domain (512-point Hann, 128-sample hop, overlap-add), which keeps the
  whole renderer vectorised: about 150x real time (CPU time of one core).

All randomness comes from the ``numpy.random.Generator`` passed in, so output is bitwise
reproducible. The renderer returns "dry" speech at 16 kHz with RMS 0.05; loudness, noise and
channel effects are added by :mod:`speechssl.corpora.synthetic`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 128

# phone -> (kind, F1-F3 targets in Hz for an adult male; a diphthong lists two targets)
# kinds: vowel, approx, nasal, stop, fric, aspirate
_VOWELS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "IY": ((270, 2290, 3010),), "IH": ((390, 1990, 2550),), "EH": ((530, 1840, 2480),),
    "AE": ((660, 1720, 2410),), "AA": ((730, 1090, 2440),), "AO": ((570, 840, 2410),),
    "UH": ((440, 1020, 2240),), "UW": ((300, 870, 2240),), "AH": ((640, 1190, 2390),),
    "ER": ((490, 1350, 1690),), "AX": ((500, 1500, 2500),),
    "EY": ((530, 1840, 2480), (300, 2200, 2900)), "AY": ((730, 1090, 2440), (300, 2200, 2900)),
    "AW": ((730, 1090, 2440), (320, 900, 2240)), "OW": ((570, 840, 2410), (320, 900, 2240)),
    "OY": ((570, 840, 2410), (300, 2200, 2900)),
}  # fmt: skip
_APPROX = {"L": (360, 1300, 2900), "R": (420, 1300, 1600), "W": (300, 700, 2200), "Y": (280, 2250, 3000)}
_NASALS = {"M": (280, 1000, 2200), "N": (280, 1600, 2600), "NG": (280, 2000, 2600)}
# stop -> (voiced, F1-F3 locus, burst centre Hz, burst bandwidth in octaves)
_STOPS = {
    "B": (True, (250, 900, 2300), 1200, 1.5), "P": (False, (250, 900, 2300), 1200, 1.5),
    "D": (True, (250, 1700, 2600), 4500, 1.0), "T": (False, (250, 1700, 2600), 4500, 1.0),
    "G": (True, (250, 2000, 2300), 2200, 0.8), "K": (False, (250, 2000, 2300), 2200, 0.8),
}  # fmt: skip
# fricative -> (voiced, F1-F3 locus, centre Hz, bandwidth octaves, relative amplitude)
_FRICATIVES = {
    "F": (False, (300, 1100, 2400), 6000, 1.6, 0.3), "V": (True, (300, 1100, 2400), 6000, 1.6, 0.3),
    "TH": (False, (300, 1500, 2600), 6500, 1.8, 0.2), "DH": (True, (300, 1500, 2600), 6500, 1.8, 0.2),
    "S": (False, (300, 1700, 2600), 6000, 0.6, 1.0), "Z": (True, (300, 1700, 2600), 6000, 0.6, 1.0),
    "SH": (False, (300, 1900, 2400), 3200, 0.7, 1.0), "ZH": (True, (300, 1900, 2400), 3200, 0.7, 1.0),
}  # fmt: skip
PHONES: tuple[str, ...] = (*_VOWELS, *_APPROX, *_NASALS, *_STOPS, *_FRICATIVES, "H", "CH", "JH")
VOWELS: frozenset[str] = frozenset(_VOWELS)
_PHONE_INDEX = {p: i for i, p in enumerate(PHONES)}

# Grapheme rules, longest first: letters -> phones ("" = silent).
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("tion", ("SH", "AX", "N")), ("igh", ("AY",)), ("ph", ("F",)), ("sh", ("SH",)), ("ch", ("CH",)),
    ("ck", ("K",)), ("ng", ("NG",)), ("qu", ("K", "W")), ("wh", ("W",)), ("ee", ("IY",)),
    ("ea", ("IY",)), ("oo", ("UW",)), ("ou", ("AW",)), ("ow", ("OW",)), ("ai", ("EY",)),
    ("ay", ("EY",)), ("oa", ("OW",)), ("oi", ("OY",)), ("oy", ("OY",)), ("ie", ("IY",)),
    ("er", ("ER",)), ("ir", ("ER",)), ("ur", ("ER",)), ("ar", ("AA", "R")), ("or", ("AO", "R")),
    ("th", ("TH",)), ("a", ("AE",)), ("e", ("EH",)), ("i", ("IH",)), ("o", ("AA",)), ("u", ("AH",)),
    ("b", ("B",)), ("d", ("D",)), ("f", ("F",)), ("g", ("G",)), ("h", ("H",)), ("j", ("JH",)),
    ("k", ("K",)), ("l", ("L",)), ("m", ("M",)), ("n", ("N",)), ("p", ("P",)), ("r", ("R",)),
    ("s", ("S",)), ("t", ("T",)), ("v", ("V",)), ("w", ("W",)), ("x", ("K", "S")), ("z", ("Z",)),
)  # fmt: skip
FUNCTION_WORDS = frozenset(
    "a an the my your our his her this that these those every some and or but did to of in on at "
    "near over under past so oh well".split()
)
_DH_WORDS = frozenset("the this that these those there then they than though".split())


@dataclass
class FormantParams:
    """Everything that shapes one rendered utterance (speaker voice x style x utterance jitter)."""

    f0_hz: float = 120.0  # mean F0 of the utterance
    f0_range_st: float = 3.0  # height of pitch accents, semitones
    accent_prob: float = 0.6  # chance a stressed syllable carries a pitch accent
    accent_width_s: float = 0.09  # std of the accent bump; small = sharp contour
    declination_st: float = 2.0  # F0 drop from start to end of the utterance, semitones
    final_st: float = -2.0  # extra movement on the last syllable (questions add a rise)
    drift_st: float = 0.4  # slow random F0 wander, semitones
    rate: float = 1.0  # speaking-rate factor (durations divided by it)
    duration_jitter: float = 0.12  # log-normal std of every segment's duration
    dynamics_db: float = 2.0  # extra level of stressed vowels
    formant_scale: float = 1.0  # vocal-tract-length factor (female ~1.15)
    idiolect: float = 0.05  # std of per-speaker per-phone formant offsets (fraction)
    idiolect_seed: int = 0  # seeds those offsets: one value per speaker
    bandwidth_scale: float = 1.0  # formant bandwidths factor (higher = duller, breathier)
    open_quotient: float = 0.6  # glottal open quotient: 0.4 tense/bright .. 0.8 lax/soft
    tilt_db_per_octave: float = 0.0  # extra spectral tilt above 1 kHz (negative = darker)
    breathiness: float = 0.05  # aspiration noise relative to the pulses
    jitter: float = 0.01  # per-period F0 perturbation (fraction)
    shimmer: float = 0.05  # per-period amplitude perturbation (fraction)
    pause_s: float = 0.18  # pause at a comma or a sentence end inside the text


def text_to_phones(text: str) -> list[tuple[str, bool, bool]]:
    """Letters to phones: a list of ``(phone, stressed, pause_after)``.

    ``pause_after`` marks a phrase break (``, ; : . ? !`` after a word that is not the last).
    Other non-letters are ignored; a text with no letters raises ``ValueError``.
    """
    out: list[tuple[str, bool, bool]] = []
    words = text.lower().split()
    for w, raw in enumerate(words):
        comma = raw.endswith((",", ";", ":", ".", "?", "!")) and w < len(words) - 1
        word = "".join(c for c in raw if "a" <= c <= "z")
        if not word:
            continue
        phones: list[str] = []
        spelled = word
        if len(word) > 3 and word.endswith("e") and word[-2] not in "aeiouy":
            word = word[:-1]  # silent final e
        i = 0
        while i < len(word):
            if i + 1 < len(word) and word[i] == word[i + 1] and word[i] not in "aeiou":
                i += 1  # double consonant
                continue
            if word[i] == "c":
                phones.append("S" if i + 1 < len(word) and word[i + 1] in "eiy" else "K")
                i += 1
                continue
            if word[i] == "y":
                phones.append("Y" if i == 0 else "IY")
                i += 1
                continue
            for letters, ph in _RULES:
                if word.startswith(letters, i):
                    phones.extend(ph)
                    i += len(letters)
                    break
            else:
                i += 1  # a letter with no rule (a lone q) is silent
        if spelled in _DH_WORDS and phones[:1] == ["TH"]:
            phones[0] = "DH"
        content = spelled not in FUNCTION_WORDS
        stress_at = next((k for k, p in enumerate(phones) if p in _VOWELS), -1) if content else -1
        for k, p in enumerate(phones):
            out.append((p, k == stress_at, comma and k == len(phones) - 1))
    if not out:
        raise ValueError(f"text has no letters to speak: {text!r}")
    return out


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average along the last axis, edges padded with edge values."""
    if width <= 1:
        return x
    pad = width // 2
    xp = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, width - 1 - pad)], mode="edge")
    c = np.cumsum(xp, axis=-1, dtype=np.float64)
    c = np.concatenate([np.zeros(x.shape[:-1] + (1,)), c], axis=-1)
    return (c[..., width:] - c[..., :-width]) / width


def _segments(phones: list[tuple[str, bool, bool]], p: FormantParams, rng: np.random.Generator) -> dict:
    """Phones -> segment table (durations in samples and per-segment targets)."""
    rows: list[tuple] = []  # (dur_s, a_v, a_f, a_h, F1, F2, F3, fc, fbw, accent, last_vowel_marker)
    offsets = np.random.default_rng([p.idiolect_seed, 4099]).normal(0.0, p.idiolect, (len(PHONES), 3))
    vowel_rows = [k for k, (ph, _, _) in enumerate(phones) if ph in _VOWELS]
    last_vowel = vowel_rows[-1] if vowel_rows else -1
    prev_formants = (500, 1500, 2500)
    for k, (ph, stressed, pause_after) in enumerate(phones):
        off = 1.0 + offsets[_PHONE_INDEX[ph]]
        if ph in _VOWELS:
            dur = 0.11 * (1.35 if stressed else 0.8) * (1.4 if k == last_vowel else 1.0)
            amp = 10 ** ((p.dynamics_db if stressed else -2.0) / 20)
            accent = stressed and rng.random() < p.accent_prob
            targets = _VOWELS[ph]
            for j, f in enumerate(targets):
                part = dur / len(targets)
                rows.append((part, amp, 0, 0, *(np.array(f) * off), 4000, 1.0, accent and j == 0, k == last_vowel))
            prev_formants = targets[-1]
        elif ph in _APPROX:
            rows.append((0.06, 0.6, 0, 0, *(np.array(_APPROX[ph]) * off), 4000, 1.0, False, False))
        elif ph in _NASALS:
            rows.append((0.065, 0.35, 0, 0, *(np.array(_NASALS[ph]) * off), 4000, 1.0, False, False))
        elif ph in _STOPS or ph in ("CH", "JH"):
            voiced, locus, fc, fbw = _STOPS["T" if ph == "CH" else "D" if ph == "JH" else ph]
            if ph in ("CH", "JH"):
                voiced, fc, fbw = ph == "JH", 3200, 0.7
            f = np.array(locus) * off
            rows.append((0.05, 0.12 if voiced else 0.0, 0, 0, *f, fc, fbw, False, False))
            rows.append((0.012, 0.3 if voiced else 0.0, 0.8, 0, *f, fc, fbw, False, False))
            if ph in ("CH", "JH"):
                rows.append((0.07, 0.3 if voiced else 0.0, 0.7, 0, *f, fc, fbw, False, False))
            elif not voiced:
                rows.append((0.035, 0, 0, 0.35, *prev_formants, fc, fbw, False, False))
        elif ph in _FRICATIVES:
            voiced, locus, fc, fbw, famp = _FRICATIVES[ph]
            rows.append((0.075 if voiced else 0.095, 0.3 if voiced else 0.0, famp * (0.5 if voiced else 1.0),
                         0, *(np.array(locus) * off), fc, fbw, False, False))  # fmt: skip
        else:  # H: aspiration through the following vowel's tract
            nxt = next((q for q, _, _ in phones[k + 1 :] if q in _VOWELS), "AX")
            rows.append((0.06, 0, 0, 0.5, *(np.array(_VOWELS[nxt][0]) * off), 4000, 1.0, False, False))
        if pause_after:
            rows.append((p.pause_s, 0, 0, 0, 500, 1500, 2500, 4000, 1.0, False, False))
    table = np.array(rows, dtype=np.float64)
    dur = table[:, 0] / p.rate * np.exp(rng.normal(0.0, p.duration_jitter, len(table)))
    samples = np.maximum(np.round(dur * SAMPLE_RATE).astype(np.int64), 16)
    return {"samples": samples, "table": table}


def _f0_contour(seg: dict, p: FormantParams, rng: np.random.Generator, question: bool) -> np.ndarray:
    """Per-sample F0 in Hz: declination + accents + final movement + drift."""
    samples, table = seg["samples"], seg["table"]
    n = int(samples.sum())
    t = np.arange(n) / SAMPLE_RATE
    total = n / SAMPLE_RATE
    starts = np.concatenate([[0], np.cumsum(samples)[:-1]]) / SAMPLE_RATE
    centres = starts + samples / SAMPLE_RATE / 2
    st = p.declination_st * (0.5 - t / total)
    for c in centres[table[:, 9] > 0]:
        height = p.f0_range_st * rng.uniform(0.6, 1.0)
        st += height * np.exp(-0.5 * ((t - c) / p.accent_width_s) ** 2)
    last = np.flatnonzero(table[:, 10] > 0)
    if len(last):
        c0 = starts[last[0]]
        final = p.f0_range_st * 1.3 + 1.0 if question else p.final_st
        st += final * np.clip((t - c0) / max(total - c0, 1e-3), 0.0, 1.0)
    knots = rng.normal(0.0, p.drift_st, int(total / 0.25) + 2)
    st += np.interp(t, np.linspace(0, total, len(knots)), knots)
    return p.f0_hz * 2.0 ** (st / 12.0)


def _resonator_response(freqs: np.ndarray, bws: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """Cascade of 2nd-order all-pole resonators, each with unity DC gain.

    Args:
        freqs, bws: [..., n_formants] centre frequencies and bandwidths (Hz).
        omega: [bins] radian frequencies.
    Returns:
        [..., bins] complex64 response.
    """
    r = np.exp(-np.pi * bws / SAMPLE_RATE)
    c = 2 * r * np.cos(2 * np.pi * freqs / SAMPLE_RATE)
    gain = np.prod(1 - c + r**2, axis=-1, keepdims=True).astype(np.float32)
    z1 = np.exp(-1j * omega).astype(np.complex64)
    z2 = z1 * z1
    den = None
    for i in range(freqs.shape[-1]):  # multiply denominators, divide once
        term = 1 - c[..., i : i + 1].astype(np.float32) * z1 + (r[..., i : i + 1] ** 2).astype(np.float32) * z2
        den = term if den is None else den * term
    return gain / den


def _stft(x: np.ndarray, window: np.ndarray) -> np.ndarray:
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP]
    return np.fft.rfft(frames * window, axis=-1)


def _overlap_add(frames: np.ndarray, length: int) -> np.ndarray:
    """frames [T, N_FFT] (already windowed) -> signal of ``length`` samples."""
    n_frames = frames.shape[0]
    out = np.zeros((n_frames + N_FFT // HOP) * HOP)
    blocks = frames.reshape(n_frames, N_FFT // HOP, HOP)
    for k in range(N_FFT // HOP):
        out[k * HOP : k * HOP + n_frames * HOP] += blocks[:, k, :].reshape(-1)
    return out[:length]


def _check_params(p: FormantParams) -> None:
    if not 40.0 <= p.f0_hz <= 600.0:
        raise ValueError(f"f0_hz must be within [40, 600] Hz, got {p.f0_hz}")
    if not 0.2 <= p.open_quotient <= 0.95:
        raise ValueError(f"open_quotient must be within [0.2, 0.95], got {p.open_quotient}")
    if p.rate <= 0:
        raise ValueError(f"rate must be positive, got {p.rate}")


def render_formant(text: str, params: FormantParams, rng: np.random.Generator) -> np.ndarray:
    """Render ``text`` with ``params`` (letters to phones by :func:`text_to_phones`).

    Returns:
        [samples] float32 at 16 kHz, RMS 0.05 over the whole utterance, no leading/trailing pad.
    """
    _check_params(params)
    return render_formant_phones(text_to_phones(text), params, rng, question=text.rstrip().endswith("?"), what=text)


def render_formant_phones(
    phones: list[tuple[str, bool, bool]],
    params: FormantParams,
    rng: np.random.Generator,
    question: bool = False,
    what: str = "",
) -> np.ndarray:
    """Render a phone sequence as :func:`text_to_phones` returns it: ``(phone, stressed, pause_after)``.

    ``question`` gives the final rise of a question; ``what`` names the input in errors.

    Returns:
        [samples] float32 at 16 kHz, RMS 0.05 over the whole utterance, no leading/trailing pad.
    """
    p = params
    _check_params(p)
    if not phones:
        raise ValueError(f"no phones to render for {what!r}")
    unknown = sorted({ph for ph, _, _ in phones if ph not in _PHONE_INDEX})
    if unknown:
        raise ValueError(f"unknown phones {unknown} for {what!r}; the inventory is {' '.join(PHONES)}")
    seg = _segments(phones, p, rng)
    samples, table = seg["samples"], seg["table"]
    n = int(samples.sum())

    # Per-sample amplitude tracks (5 ms smoothing) and formant tracks (25 ms smoothing: transitions).
    per_sample = np.repeat(table[:, 1:9].T, samples, axis=1)  # [8, n]
    amps = _moving_average(per_sample[:3], int(0.005 * SAMPLE_RATE))
    a_v, a_f, a_h = amps
    formants = _moving_average(per_sample[3:6], int(0.025 * SAMPLE_RATE / p.rate))
    fric_band = per_sample[6:8]

    # Glottal source: Rosenberg flow, derivative taken as the excitation.
    f0 = _f0_contour(seg, p, rng, question=question)
    phase0 = np.cumsum(f0) / SAMPLE_RATE
    n_periods = int(phase0[-1]) + 2
    period0 = phase0.astype(np.int64)
    f0 = f0 * (1.0 + p.jitter * rng.standard_normal(n_periods)[period0])
    phase = np.cumsum(f0) / SAMPLE_RATE
    period = phase.astype(np.int64)
    frac = phase - period
    tp, tn = 0.6 * p.open_quotient, 0.4 * p.open_quotient
    flow = np.where(frac < tp, 0.5 * (1 - np.cos(np.pi * frac / tp)),
                    np.where(frac < tp + tn, np.cos(0.5 * np.pi * (frac - tp) / tn), 0.0))  # fmt: skip
    shimmer = 1.0 + p.shimmer * rng.standard_normal(int(period[-1]) + 2)[period]
    source = np.diff(flow, prepend=0.0) * shimmer * (SAMPLE_RATE / f0) / 6.0  # ~unit peak per period
    noise = rng.standard_normal((2, n))
    open_phase = 0.3 + 0.7 * (frac < tp + tn)
    aspiration = noise[0] * 0.25
    voiced_exc = a_v * (source + p.breathiness * aspiration * open_phase) + a_h * aspiration
    fric_exc = a_f * noise[1] * 0.25

    # Frame-wise filtering in the STFT domain.
    pad = N_FFT // 2
    window = np.hanning(N_FFT + 1)[:-1]
    n_frames = (n + 2 * pad - N_FFT) // HOP + 1
    centres = np.clip(np.arange(n_frames) * HOP, 0, n - 1)
    omega = np.linspace(0.0, np.pi, N_FFT // 2 + 1)
    freq_hz = omega * SAMPLE_RATE / (2 * np.pi)
    scale = p.formant_scale
    f123 = formants[:, centres].T * scale  # [frames, 3]
    f45 = np.minimum(np.array([3300.0, 3750.0]) * scale, 0.45 * SAMPLE_RATE)
    bws = np.array([60.0, 90.0, 120.0, 180.0, 250.0]) * p.bandwidth_scale * np.sqrt(scale)
    tilt = 10 ** (p.tilt_db_per_octave * np.log2(np.maximum(freq_hz, 1000.0) / 1000.0) / 20)
    static = _resonator_response(f45, bws[3:], omega) * tilt.astype(np.float32)  # F4, F5 do not move
    h_voiced = _resonator_response(np.minimum(f123, 0.45 * SAMPLE_RATE), np.broadcast_to(bws[:3], f123.shape), omega)
    h_voiced *= static
    fc = fric_band[0, centres][:, None] * np.sqrt(scale)
    octaves = np.log2(np.maximum(freq_hz, 50.0)[None, :] / fc)
    h_fric = 3.0 * np.exp(-0.5 * (octaves / (fric_band[1, centres][:, None] / 2)) ** 2)

    spec = _stft(np.pad(voiced_exc, pad), window) * h_voiced + _stft(np.pad(fric_exc, pad), window) * h_fric
    frames = np.fft.irfft(spec, n=N_FFT, axis=-1) * window
    norm = _overlap_add(np.broadcast_to(window**2, frames.shape).copy(), n + 2 * pad)
    out = _overlap_add(frames, n + 2 * pad) / np.maximum(norm, 1e-3)
    out = out[pad : pad + n]
    rms = float(np.sqrt(np.mean(out**2)))
    if not np.isfinite(rms) or rms == 0.0:
        raise ValueError(f"formant synthesis produced silence for {what!r}")
    return (out * (0.05 / rms)).astype(np.float32)
