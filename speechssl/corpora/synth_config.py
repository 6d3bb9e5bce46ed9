"""What the synthetic corpus can render, as plain Python: backends, tasks, speaking styles and
:class:`SynthConfig` (the ``speechssl synth --set`` keys).

:mod:`speechssl.corpora.synthetic` renders with them (numpy, scipy); ``speechssl synth --help``
lists them from here without importing the renderer. The labels are described in
:mod:`speechssl.corpora.synthetic`'s docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("formant", "espeak", "auto")
TASKS = ("sentences", "words")


@dataclass(frozen=True)
class StyleSpec:
    """How a style moves the speaker's neutral prosody (at intensity 1)."""

    f0_st: float = 0.0  # mean pitch shift, semitones
    range_factor: float = 1.0  # pitch-accent height factor
    accent_width_s: float = 0.09  # pitch-accent width (small = sharp)
    accent_prob: float = 0.6  # share of stressed syllables with a pitch accent
    declination_st: float = 2.0
    final_st: float = -2.0  # last-syllable movement, semitones
    rate_factor: float = 1.0
    level_db: float = 0.0
    dynamics_db: float = 2.0  # stressed-vowel emphasis
    breathiness_add: float = 0.0
    tilt_db_add: float = 0.0  # dB/octave above 1 kHz
    open_quotient_add: float = 0.0
    pause_factor: float = 1.0


STYLES: dict[str, StyleSpec] = {
    "neutral": StyleSpec(),
    "happy": StyleSpec(f0_st=2.5, range_factor=1.7, accent_width_s=0.1, accent_prob=0.8, declination_st=1.0,
                       final_st=1.0, rate_factor=1.1, level_db=1.5, dynamics_db=3.0, tilt_db_add=1.0,
                       open_quotient_add=-0.03),  # fmt: skip
    "sad": StyleSpec(f0_st=-1.5, range_factor=0.4, accent_width_s=0.14, accent_prob=0.4, declination_st=3.0,
                     final_st=-1.5, rate_factor=0.8, level_db=-5.0, dynamics_db=0.5, breathiness_add=0.2,
                     tilt_db_add=-2.0, open_quotient_add=0.08, pause_factor=1.6),  # fmt: skip
    "angry": StyleSpec(f0_st=1.5, range_factor=1.4, accent_width_s=0.05, accent_prob=0.85, declination_st=2.5,
                       final_st=-5.0, rate_factor=1.12, level_db=5.0, dynamics_db=6.0, breathiness_add=-0.02,
                       tilt_db_add=3.0, open_quotient_add=-0.12),  # fmt: skip
}


@dataclass
class SynthConfig:
    """Rendering knobs. Defaults give a realistic, not trivially separable corpus."""

    min_seconds: float = 1.5  # utterance duration range (incl. silence pads); text is redrawn to fit
    max_seconds: float = 4.0
    pad_seconds: tuple[float, float] = (0.1, 0.3)  # leading / trailing silence, each uniform in range
    f0_jitter_st: float = 1.5  # per-utterance mean-pitch offset, uniform +- semitones
    rate_jitter: float = 0.08  # per-utterance speaking-rate factor, uniform 1 +- this
    style_intensity: tuple[float, float] = (0.7, 1.3)  # per-utterance scale of the style deviations (mean 1)
    level_dbfs: float = -26.0  # RMS level of a neutral utterance before jitter
    level_jitter_db: float = 4.0  # per-utterance level offset, uniform +- dB
    noise_prob: float = 0.5  # share of utterances with background noise
    snr_db: tuple[float, float] = (10.0, 30.0)  # their SNR, uniform in range
    channel_prob: float = 0.7  # share of utterances through a random channel
    channel_eq_db: float = 6.0  # channel EQ: smooth random curve within +- dB
    lowpass_hz: tuple[float, float] = (3400.0, 8000.0)  # channel band limit, uniform in range
    espeak_foreign_voices: bool = False  # espeak: also use non-English voices reading English
    word_clip_seconds: float = 1.0  # words task: clip length (Speech Commands: 1 s); the word at a random offset

    def validate(self) -> None:
        def check(ok: bool, key: str, value: object, what: str) -> None:
            if not ok:
                raise ValueError(f"SynthConfig.{key}: {what}, got {value!r}")

        check(0 < self.min_seconds <= self.max_seconds, "min_seconds/max_seconds", (self.min_seconds, self.max_seconds),
              "need 0 < min_seconds <= max_seconds")  # fmt: skip
        check(0 <= self.pad_seconds[0] <= self.pad_seconds[1], "pad_seconds", self.pad_seconds, "need 0 <= lo <= hi")
        check(2 * self.pad_seconds[1] < self.max_seconds, "pad_seconds", self.pad_seconds, "pads must fit in max_seconds")
        check(0 <= self.f0_jitter_st <= 12, "f0_jitter_st", self.f0_jitter_st, "need 0..12 semitones")
        check(0 <= self.rate_jitter < 0.5, "rate_jitter", self.rate_jitter, "need 0 <= x < 0.5")
        check(0 <= self.style_intensity[0] <= self.style_intensity[1] <= 2, "style_intensity", self.style_intensity,
              "need 0 <= lo <= hi <= 2")  # fmt: skip
        check(-60 <= self.level_dbfs <= -6, "level_dbfs", self.level_dbfs, "need -60..-6 dBFS")
        check(0 <= self.level_jitter_db <= 20, "level_jitter_db", self.level_jitter_db, "need 0..20 dB")
        for key in ("noise_prob", "channel_prob"):
            check(0 <= getattr(self, key) <= 1, key, getattr(self, key), "need a probability in [0, 1]")
        check(self.snr_db[0] <= self.snr_db[1], "snr_db", self.snr_db, "need lo <= hi")
        check(0 <= self.channel_eq_db <= 24, "channel_eq_db", self.channel_eq_db, "need 0..24 dB")
        check(1000 <= self.lowpass_hz[0] <= self.lowpass_hz[1] <= 8000, "lowpass_hz", self.lowpass_hz,
              "need 1000 <= lo <= hi <= 8000 Hz")  # fmt: skip
        check(0.25 <= self.word_clip_seconds <= 10, "word_clip_seconds", self.word_clip_seconds, "need 0.25..10 s")
