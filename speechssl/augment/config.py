"""Typed configuration of the augmentation pipeline: one dataclass per augmentation, each with its
probability ``p`` and its sampling range. An augmentation absent from the YAML (``None``) is off.

YAML (e.g. the ``model.augment`` section of a siamese recipe, or a file for ``speechssl augment``)::

    waveform:
      gain: {p: 0.5, min_db: -6, max_db: 6}
      noise: {p: 0.5, min_snr_db: 5, max_snr_db: 20, colours: [white, pink, brown]}
      reverb: {p: 0.3, min_rt60: 0.1, max_rt60: 0.6}
    spectrogram:
      time_mask: {p: 0.8, num_masks: 2, max_fraction: 0.1}
      mixup: {p: 1.0, max_ratio: 0.4, memory_size: 256, memory_frames: 96}

Waveform augmentations run in the fixed order of :data:`WAVEFORM_ORDER` (the order in which a
signal is degraded in the world: the talker's tempo and pitch, then the room, the noise, the channel,
the recording gain) unless ``waveform.order`` lists another one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from speechssl.config import ConfigError, check_finite, from_dict

#: Default application order of the waveform augmentations (names of WaveformAugmentConfig fields).
WAVEFORM_ORDER = ("speed", "tempo", "pitch", "time_shift", "reverb", "noise", "eq", "band_limit", "codec", "gain",
                  "polarity")
#: Application order of the spectrogram augmentations.
SPECTROGRAM_ORDER = ("mixup", "resize_crop", "freq_mask", "time_mask")


def _check_p(cfg: Any, where: str) -> None:
    check_finite(cfg, where)
    if not 0.0 <= cfg.p <= 1.0:
        raise ConfigError(f"{where}.p must be in [0, 1], got {cfg.p}")


def _check_range(cfg: Any, where: str, lo: str, hi: str, minimum: float | None = None,
                 strict_min: bool = False) -> None:
    a, b = getattr(cfg, lo), getattr(cfg, hi)
    if a > b:
        raise ConfigError(f"{where}.{lo} ({a}) must be <= {where}.{hi} ({b})")
    if minimum is not None and (a < minimum or (strict_min and a <= minimum)):
        raise ConfigError(f"{where}.{lo} must be {'>' if strict_min else '>='} {minimum}, got {a}")


@dataclasses.dataclass
class GainConfig:
    """Multiply by a gain drawn uniformly in dB."""

    p: float = 0.5
    min_db: float = -6.0
    max_db: float = 6.0

    def __post_init__(self) -> None:
        _check_p(self, "gain")
        _check_range(self, "gain", "min_db", "max_db")


@dataclasses.dataclass
class NoiseConfig:
    """Add noise at an SNR drawn uniformly in dB (measured over the utterance's valid samples).

    ``manifest``: a JSONL manifest of noise recordings (random excerpt, looped when short); without it,
    coloured noise with power spectrum 1 / f^beta: white (0), pink (1), brown (2), blue (-1), violet (-2).
    """

    p: float = 0.5
    min_snr_db: float = 5.0
    max_snr_db: float = 20.0
    colours: list[Literal["white", "pink", "brown", "blue", "violet"]] = dataclasses.field(
        default_factory=lambda: ["white", "pink", "brown"])
    manifest: str | None = None
    max_noise_files: int = 200  # noise recordings held in memory (the first ones of the manifest)

    def __post_init__(self) -> None:
        _check_p(self, "noise")
        _check_range(self, "noise", "min_snr_db", "max_snr_db")
        if not self.colours and self.manifest is None:
            raise ConfigError("noise.colours is empty and noise.manifest is not set: no noise to add")
        if self.max_noise_files < 1:
            raise ConfigError(f"noise.max_noise_files must be >= 1, got {self.max_noise_files}")


@dataclasses.dataclass
class SpeedConfig:
    """Speed perturbation (Kaldi/sox ``speed``): resample so that duration becomes L / factor and
    pitch x factor. Factors are drawn uniformly and rounded to ``step`` (exact rational resampling)."""

    p: float = 0.5
    min_factor: float = 0.9
    max_factor: float = 1.1
    step: float = 0.01

    def __post_init__(self) -> None:
        _check_p(self, "speed")
        _check_range(self, "speed", "min_factor", "max_factor", minimum=0.25)
        if not 0.001 <= self.step <= 0.1:
            raise ConfigError(f"speed.step must be in [0.001, 0.1], got {self.step}")


@dataclasses.dataclass
class TempoConfig:
    """Tempo change without pitch change (phase vocoder): duration L / factor."""

    p: float = 0.3
    min_factor: float = 0.9
    max_factor: float = 1.1

    def __post_init__(self) -> None:
        _check_p(self, "tempo")
        _check_range(self, "tempo", "min_factor", "max_factor", minimum=0.25)


@dataclasses.dataclass
class PitchConfig:
    """Pitch shift in semitones, duration kept (speed change + phase-vocoder time stretch back)."""

    p: float = 0.3
    min_semitones: float = -2.0
    max_semitones: float = 2.0

    def __post_init__(self) -> None:
        _check_p(self, "pitch")
        _check_range(self, "pitch", "min_semitones", "max_semitones")
        if max(abs(self.min_semitones), abs(self.max_semitones)) > 12:
            raise ConfigError(f"pitch: semitones must be within [-12, 12], got [{self.min_semitones}, "
                              f"{self.max_semitones}]")


@dataclasses.dataclass
class ReverbConfig:
    """Convolve with a synthetic room impulse response: a direct path plus exponentially decaying
    Gaussian noise (Polack's statistical model) with RT60 drawn uniformly, and a direct-to-reverberant
    ratio drawn uniformly in dB. The output keeps the input's alignment and energy."""

    p: float = 0.3
    min_rt60: float = 0.1
    max_rt60: float = 0.7
    min_drr_db: float = 0.0
    max_drr_db: float = 10.0

    def __post_init__(self) -> None:
        _check_p(self, "reverb")
        _check_range(self, "reverb", "min_rt60", "max_rt60", minimum=0.0, strict_min=True)
        _check_range(self, "reverb", "min_drr_db", "max_drr_db")
        if self.max_rt60 > 2.0:
            raise ConfigError(f"reverb.max_rt60 must be <= 2.0 s, got {self.max_rt60}")


@dataclasses.dataclass
class BandLimitConfig:
    """Band-limiting (telephone / low-bitrate channel): low-pass at a cutoff drawn uniformly in Hz,
    and with probability ``highpass_p`` a high-pass at a cutoff drawn in [min_highpass_hz, max_highpass_hz]."""

    p: float = 0.3
    min_cutoff_hz: float = 3000.0
    max_cutoff_hz: float = 7000.0
    highpass_p: float = 0.5
    min_highpass_hz: float = 100.0
    max_highpass_hz: float = 400.0

    def __post_init__(self) -> None:
        _check_p(self, "band_limit")
        _check_range(self, "band_limit", "min_cutoff_hz", "max_cutoff_hz", minimum=100.0)
        _check_range(self, "band_limit", "min_highpass_hz", "max_highpass_hz", minimum=0.0)
        if self.max_cutoff_hz > 8000:
            raise ConfigError(f"band_limit.max_cutoff_hz must be <= 8000 (Nyquist at 16 kHz), got {self.max_cutoff_hz}")
        if not 0.0 <= self.highpass_p <= 1.0:
            raise ConfigError(f"band_limit.highpass_p must be in [0, 1], got {self.highpass_p}")


@dataclasses.dataclass
class EQConfig:
    """Random equaliser (microphone / channel colouring): gains drawn uniformly in [-max_db, max_db] at
    ``num_knots`` log-spaced frequencies from 100 Hz to 8 kHz (and 0 Hz), linear in log frequency between."""

    p: float = 0.5
    max_db: float = 6.0
    num_knots: int = 6

    def __post_init__(self) -> None:
        _check_p(self, "eq")
        if not 0.0 <= self.max_db <= 40.0:
            raise ConfigError(f"eq.max_db must be in [0, 40], got {self.max_db}")
        if self.num_knots < 2:
            raise ConfigError(f"eq.num_knots must be >= 2, got {self.num_knots}")


@dataclasses.dataclass
class CodecConfig:
    """Codec-like quantisation: mu-law companding to ``bits`` bits drawn uniformly (G.711 is 8)."""

    p: float = 0.2
    min_bits: int = 6
    max_bits: int = 8

    def __post_init__(self) -> None:
        _check_p(self, "codec")
        _check_range(self, "codec", "min_bits", "max_bits", minimum=2)
        if self.max_bits > 16:
            raise ConfigError(f"codec.max_bits must be <= 16, got {self.max_bits}")


@dataclasses.dataclass
class PolarityConfig:
    """Flip the sign of the waveform."""

    p: float = 0.5

    def __post_init__(self) -> None:
        _check_p(self, "polarity")


@dataclasses.dataclass
class TimeShiftConfig:
    """Circular shift within the utterance's valid samples by a fraction drawn in [-max_fraction, max_fraction]."""

    p: float = 0.5
    max_fraction: float = 0.2

    def __post_init__(self) -> None:
        _check_p(self, "time_shift")
        if not 0.0 <= self.max_fraction <= 1.0:
            raise ConfigError(f"time_shift.max_fraction must be in [0, 1], got {self.max_fraction}")


@dataclasses.dataclass
class MaskConfig:
    """SpecAugment masking (Park et al. 2019) along time or frequency: ``num_masks`` masks, each of a
    width drawn uniformly in [0, max_fraction x axis size]; masked values become the utterance mean
    (``fill: mean``, which keeps normalised features in range) or zero."""

    p: float = 0.8
    num_masks: int = 2
    max_fraction: float = 0.1
    fill: Literal["mean", "zero"] = "mean"

    def __post_init__(self) -> None:
        _check_p(self, "mask")
        if self.num_masks < 0:
            raise ConfigError(f"mask.num_masks must be >= 0, got {self.num_masks}")
        if not 0.0 <= self.max_fraction <= 1.0:
            raise ConfigError(f"mask.max_fraction must be in [0, 1], got {self.max_fraction}")


@dataclasses.dataclass
class MixupConfig:
    """BYOL-A mixup (Niizumi et al. 2021): x <- log((1 - r) exp(x) + r exp(m)), r ~ U(0, max_ratio),
    m a random past example from a FIFO memory of ``memory_size`` segments of ``memory_frames`` frames."""

    p: float = 1.0
    max_ratio: float = 0.4
    memory_size: int = 256
    memory_frames: int = 96

    def __post_init__(self) -> None:
        _check_p(self, "mixup")
        if not 0.0 <= self.max_ratio <= 1.0:
            raise ConfigError(f"mixup.max_ratio must be in [0, 1], got {self.max_ratio}")
        if self.memory_size < 1 or self.memory_frames < 1:
            raise ConfigError(f"mixup.memory_size and memory_frames must be >= 1, got {self.memory_size} and "
                              f"{self.memory_frames}")


@dataclasses.dataclass
class ResizeCropConfig:
    """BYOL-A random resize crop: on a canvas ``virtual_scale`` times the input (zero-padded around it),
    crop a region of (time, frequency) size scale x input size, scale ~ U(min_scale, max_scale) per axis,
    and resize it back to the input size (bicubic). ``freq: false`` crops and resizes along time only (the
    frequency axis, hence pitch and spectral envelope, is kept; the freq scales are then unused)."""

    p: float = 1.0
    virtual_scale: float = 1.5
    min_time_scale: float = 0.6
    max_time_scale: float = 1.5
    min_freq_scale: float = 0.6
    max_freq_scale: float = 1.5
    freq: bool = True

    def __post_init__(self) -> None:
        _check_p(self, "resize_crop")
        _check_range(self, "resize_crop", "min_time_scale", "max_time_scale", minimum=0.0, strict_min=True)
        _check_range(self, "resize_crop", "min_freq_scale", "max_freq_scale", minimum=0.0, strict_min=True)
        if self.virtual_scale < 1.0:
            raise ConfigError(f"resize_crop.virtual_scale must be >= 1, got {self.virtual_scale}")
        if max(self.max_time_scale, self.max_freq_scale if self.freq else 0.0) > self.virtual_scale:
            raise ConfigError(f"resize_crop: max scales ({self.max_time_scale}, {self.max_freq_scale}) must be <= "
                              f"virtual_scale {self.virtual_scale}")


@dataclasses.dataclass
class WaveformAugmentConfig:
    """Waveform augmentations (each None = off) and their order."""

    gain: GainConfig | None = None
    noise: NoiseConfig | None = None
    speed: SpeedConfig | None = None
    tempo: TempoConfig | None = None
    pitch: PitchConfig | None = None
    reverb: ReverbConfig | None = None
    eq: EQConfig | None = None
    band_limit: BandLimitConfig | None = None
    codec: CodecConfig | None = None
    polarity: PolarityConfig | None = None
    time_shift: TimeShiftConfig | None = None
    order: list[str] = dataclasses.field(default_factory=lambda: list(WAVEFORM_ORDER))

    def __post_init__(self) -> None:
        unknown = [n for n in self.order if n not in WAVEFORM_ORDER]
        if unknown or len(set(self.order)) != len(self.order):
            raise ConfigError(f"waveform.order {self.order}: each name at most once, from {list(WAVEFORM_ORDER)}")
        missing = [n for n in WAVEFORM_ORDER if getattr(self, n) is not None and n not in self.order]
        if missing:
            raise ConfigError(f"waveform.order leaves out configured augmentation(s) {missing}")

    def enabled(self) -> list[str]:
        return [n for n in self.order if getattr(self, n) is not None]


@dataclasses.dataclass
class SpectrogramAugmentConfig:
    """Log-Mel augmentations (each None = off), applied in :data:`SPECTROGRAM_ORDER`."""

    mixup: MixupConfig | None = None
    resize_crop: ResizeCropConfig | None = None
    freq_mask: MaskConfig | None = None
    time_mask: MaskConfig | None = None

    def enabled(self) -> list[str]:
        return [n for n in SPECTROGRAM_ORDER if getattr(self, n) is not None]


@dataclasses.dataclass
class AugmentConfig:
    """The whole pipeline: ``waveform`` then (inside a model, after its frontend) ``spectrogram``."""

    waveform: WaveformAugmentConfig = dataclasses.field(default_factory=WaveformAugmentConfig)
    spectrogram: SpectrogramAugmentConfig = dataclasses.field(default_factory=SpectrogramAugmentConfig)


def augment_config(data: Mapping[str, Any] | AugmentConfig | None, where: str = "augment") -> AugmentConfig:
    """A mapping (from YAML) -> :class:`AugmentConfig`; unknown keys are errors naming them."""
    if isinstance(data, AugmentConfig):
        return data
    return from_dict(AugmentConfig, data or {}, where=where)


def default_augment() -> AugmentConfig:
    """A speech-safe default set: every waveform group on at moderate strength, SpecAugment masks.

    The ranges keep speaker and content recognisable (speed and pitch within 10 % / 2 semitones,
    SNR >= 5 dB, RT60 <= 0.7 s, cutoff >= 3 kHz), so positives stay positives.
    """
    return AugmentConfig(
        waveform=WaveformAugmentConfig(
            gain=GainConfig(), noise=NoiseConfig(), speed=SpeedConfig(p=0.3), pitch=PitchConfig(p=0.2),
            reverb=ReverbConfig(), band_limit=BandLimitConfig(), polarity=PolarityConfig(),
            time_shift=TimeShiftConfig(p=0.0)),
        spectrogram=SpectrogramAugmentConfig(freq_mask=MaskConfig(), time_mask=MaskConfig()),
    )
