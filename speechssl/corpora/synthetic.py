"""The built-in synthetic speech corpus: labelled speakers and speaking styles, no downloads.

Usage::

    speechssl synth --backend formant --out data/synth --speakers 4 --utts-per-speaker 10
    speechssl synth --task words --out data/words --speakers 4 --utts-per-speaker 80   # every word x style

    from speechssl.corpora.synthetic import synthesize_corpus
    manifest = synthesize_corpus("data/synth", speakers=4, utts_per_speaker=10, seed=0)

Output: ``OUT/wavs/<speaker>/<id>.wav`` (16 kHz mono 16-bit PCM), ``OUT/manifest.jsonl`` (the
speechssl manifest: ``id``, ``path`` relative to OUT, ``num_samples``, ``sample_rate`` and the labels
below), ``OUT/synth_config.json`` (how it was made) and ``OUT/.synth_state.json`` (cache keys).

Labels
------
``speaker``
    ``spk<index>`` (formant) or ``espk<index>`` (espeak), index = ``speaker_offset + i``, three
    digits; with ``voice_seed != 0`` a ``v<voice_seed>`` suffix. A speaker's voice depends only on
    (backend, voice_seed, index): the same speaker renders the same voice in every run, whatever
    ``seed``, ``speakers`` or ``utts_per_speaker`` are.
``gender``
    ``female`` for even speaker indices, ``male`` for odd ones. Pitch ranges of the genders do not
    overlap much, but speakers of one gender overlap in mean pitch and differ mainly in vocal-tract
    length (formant scaling), per-phone formant idiosyncrasies, voice quality (open quotient,
    spectral tilt, breathiness, jitter, shimmer, bandwidths), speaking rate and pitch range.
``style``
    A speaking style used as an emotion proxy (acted-emotion corpora label the same way). Mostly
    prosodic, with a random per-utterance intensity (``SynthConfig.style_intensity``):
    ``neutral``: the speaker's own prosody. ``happy``: about +2.5 semitones, 1.7x pitch range,
    10 % faster, slightly louder, a final rise. ``sad``: about -1.5 semitones, 0.4x range, 20 %
    slower, 5 dB softer, breathier and darker, longer pauses. ``angry``: about +1.5 semitones,
    sharp narrow pitch accents, 12 % faster, 5 dB louder, tense (brighter) voice, steep final fall,
    strong stress dynamics. The espeak backend realises styles through pitch, pitch range, rate
    and level only. Utterance ``u`` of speaker ``k`` gets ``styles[(u + k) % len(styles)]``: counts
    per speaker differ by at most one, and the corpus is exactly balanced when ``speakers`` or
    ``utts_per_speaker`` is a multiple of ``len(styles)``.
``text``
    The sentence spoken, from :mod:`speechssl.corpora.text` (the word, in the words task).
``word``
    Only with ``task="words"``: the word spoken, from the closed keyword-spotting vocabulary of
    :mod:`speechssl.corpora.words` (Speech Commands' 20 core words: yes, no, up, down, left, right,
    on, off, stop, go, zero .. nine), or a chosen subset. Each utterance is one isolated word in a
    clip of ``SynthConfig.word_clip_seconds`` (1 s, as in Speech Commands; longer only if a slow
    rendering needs it) at a random position. Utterance ``u`` of speaker ``k`` says
    ``vocabulary[(u + k) % V]`` in style ``styles[(u // V + k) % S]``: with ``utts_per_speaker =
    V x S`` every speaker says every word in every style; with ``V``, every word once while the
    styles rotate across speakers; with fewer, the words rotate across speakers. The formant backend speaks each word with one fixed phone sequence (its lexicon),
    the espeak backend reads the word; everything else (voice, style, jitter, noise, channel)
    varies as for sentences. ``min_seconds``/``max_seconds`` apply to sentences only.
``backend``
    ``formant`` or ``espeak``.

Nuisance variation (all in :class:`SynthConfig`) keeps the task realistic: random text, per-utterance
pitch and rate offsets inside the speaker's range, random level, background noise at a random SNR,
a random channel EQ / band limit, random leading and trailing silence.

Disjoint sets: the utterance seed drives text and all per-utterance randomness, so
``seed=1`` (a large unlabelled pool) and ``seed=2`` (a small labelled set) give the same speakers
saying different things (texts are drawn from a large grammar; an exact repeat is rare, not
impossible); ``speaker_offset`` gives new speakers. Ids contain the seed
(``spk000_s1_0007``; ``spk000_w1_0007`` in the words task, whose random streams are separate from
the sentences' too), so manifests of different seeds and tasks can be concatenated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.signal import firwin2, lfilter, oaconvolve

from speechssl.audio import save_audio
from speechssl.config import to_dict
from speechssl.corpora import espeak as espeak_backend
from speechssl.corpora.formant import FormantParams, render_formant, render_formant_phones
from speechssl.corpora.synth_config import BACKENDS, STYLES, TASKS, StyleSpec, SynthConfig
from speechssl.corpora.text import sentence_with_words
from speechssl.corpora.words import VOCABULARY, check_lexicon, check_vocabulary, word_phones
from speechssl.data.manifest import write_manifest
from speechssl.utils import atomic_write_json, file_sha256

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# Bump when a change alters the rendered audio: cached files are then re-rendered.
SYNTH_VERSION = 2


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: identity label and neutral voice."""

    index: int
    name: str
    gender: str
    formant: FormantParams  # neutral voice for the formant backend
    espeak: espeak_backend.EspeakParams  # neutral voice for the espeak backend


def make_speaker(index: int, backend: str, voice_seed: int = 0, foreign_voices: bool = False) -> Speaker:
    """The voice of speaker ``index`` (depends only on backend, voice_seed and index)."""
    if index < 0:
        raise ValueError(f"speaker index must be >= 0, got {index}")
    rng = np.random.default_rng([voice_seed, index, 7919])
    female = index % 2 == 0
    gender = "female" if female else "male"
    formant = FormantParams(
        f0_hz=float(rng.uniform(165, 235) if female else rng.uniform(90, 150)),
        f0_range_st=float(rng.uniform(3.0, 6.0)),
        formant_scale=float(rng.uniform(1.08, 1.24) if female else rng.uniform(0.92, 1.06)),
        idiolect=0.05,
        idiolect_seed=int(rng.integers(2**31)),
        bandwidth_scale=float(rng.uniform(0.85, 1.3)),
        open_quotient=float(rng.uniform(0.5, 0.72)),
        tilt_db_per_octave=float(rng.uniform(-3.0, 2.0)),
        breathiness=float(rng.uniform(0.02, 0.25)),
        jitter=float(rng.uniform(0.005, 0.02)),
        shimmer=float(rng.uniform(0.02, 0.08)),
        rate=float(rng.uniform(0.88, 1.12)),
        accent_width_s=float(rng.uniform(0.05, 0.08)),
    )
    voices = espeak_backend.ENGLISH_VOICES + (espeak_backend.FOREIGN_VOICES if foreign_voices else ())
    variants = espeak_backend.FEMALE_VARIANTS if female else espeak_backend.MALE_VARIANTS
    espeak = espeak_backend.EspeakParams(
        voice=voices[int(rng.integers(len(voices)))],
        variant=variants[int(rng.integers(len(variants)))],
        words_per_minute=int(rng.uniform(150, 185)),
        pitch=int(rng.uniform(35, 65)),
        range_percent=int(rng.uniform(70, 130)),
    )
    prefix = "spk" if backend == "formant" else "espk"
    name = f"{prefix}{index:03d}" + (f"v{voice_seed}" if voice_seed else "")
    return Speaker(index=index, name=name, gender=gender, formant=formant, espeak=espeak)


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``espeak`` when espeak-ng is installed, else ``formant``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown synth backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "espeak" if espeak_backend.espeak_binary() else "formant"
    if backend == "espeak":
        espeak_backend.require_espeak()
    return backend


def _toward(style: StyleSpec, name: str, k: float) -> float:
    """Field ``name`` of ``style`` at intensity ``k`` (0 = neutral, 1 = as specified, >1 = stronger)."""
    neutral = getattr(STYLES["neutral"], name)
    return neutral + k * (getattr(style, name) - neutral)


def _styled_formant(
    spk: Speaker, style: StyleSpec, k: float, rng: np.random.Generator, cfg: SynthConfig
) -> FormantParams:
    """Speaker voice x style (intensity k) x per-utterance jitter."""
    v = spk.formant
    st = k * style.f0_st + rng.uniform(-cfg.f0_jitter_st, cfg.f0_jitter_st)
    rate_jitter = rng.uniform(1 - cfg.rate_jitter, 1 + cfg.rate_jitter)
    return replace(
        v,
        f0_hz=v.f0_hz * 2 ** (st / 12),
        f0_range_st=v.f0_range_st * _toward(style, "range_factor", k),
        accent_width_s=v.accent_width_s * _toward(style, "accent_width_s", k) / STYLES["neutral"].accent_width_s,
        accent_prob=_toward(style, "accent_prob", k),
        declination_st=_toward(style, "declination_st", k),
        final_st=_toward(style, "final_st", k),
        rate=v.rate * _toward(style, "rate_factor", k) * rate_jitter,
        dynamics_db=_toward(style, "dynamics_db", k),
        breathiness=max(0.0, v.breathiness + _toward(style, "breathiness_add", k)),
        tilt_db_per_octave=v.tilt_db_per_octave + _toward(style, "tilt_db_add", k),
        open_quotient=float(np.clip(v.open_quotient + _toward(style, "open_quotient_add", k), 0.3, 0.9)),
        pause_s=v.pause_s * _toward(style, "pause_factor", k),
    )


def _styled_espeak(
    spk: Speaker, style: StyleSpec, k: float, rng: np.random.Generator, cfg: SynthConfig
) -> espeak_backend.EspeakParams:
    """espeak-ng has no voice-quality controls: styles map to pitch, range and rate only."""
    v = spk.espeak
    st = k * style.f0_st + rng.uniform(-cfg.f0_jitter_st, cfg.f0_jitter_st)
    rate = _toward(style, "rate_factor", k) * rng.uniform(1 - cfg.rate_jitter, 1 + cfg.rate_jitter)
    return replace(
        v,
        pitch=int(np.clip(round(v.pitch + 4.0 * st), 0, 99)),  # espeak -p: about 4 units per semitone
        words_per_minute=int(np.clip(round(v.words_per_minute * rate), 80, 450)),
        range_percent=int(np.clip(round(v.range_percent * _toward(style, "range_factor", k)), 0, 400)),
    )


def _channel(wav: np.ndarray, cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Random smooth EQ (+- channel_eq_db over log frequency) and band limit, as a 129-tap FIR."""
    knots_hz = np.array([0.0, 150.0, 400.0, 1000.0, 2500.0, 5000.0, 8000.0])
    gains_db = rng.uniform(-cfg.channel_eq_db, cfg.channel_eq_db, len(knots_hz))
    cutoff = rng.uniform(*cfg.lowpass_hz)
    grid = np.linspace(0.0, SAMPLE_RATE / 2, 65)
    curve_db = np.interp(np.log1p(grid), np.log1p(knots_hz), gains_db)
    curve_db = np.where(grid > cutoff, curve_db - 40.0 * np.clip((grid - cutoff) / 500.0, 0, 1), curve_db)
    taps = firwin2(129, grid / grid[-1], 10 ** (curve_db / 20))
    return oaconvolve(wav, taps, mode="same")


def _background_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Coloured noise: white through a random one-pole low-pass, plus a little hum half the time."""
    pole = rng.uniform(0.0, 0.97)
    noise = lfilter([1.0 - pole], [1.0, -pole], rng.standard_normal(n))
    if rng.random() < 0.5:
        t = np.arange(n) / SAMPLE_RATE
        f = rng.choice([50.0, 60.0])
        noise = noise / (np.std(noise) + 1e-12) + rng.uniform(0.2, 1.0) * sum(
            np.sin(2 * np.pi * h * f * t + rng.uniform(0, 2 * np.pi)) / h for h in (1, 2, 3)
        )
    return noise / (np.std(noise) + 1e-12)


def render_utterance(
    spk: Speaker, style_name: str, backend: str, seed: int, utt: int, cfg: SynthConfig, tries: int = 8
) -> tuple[np.ndarray, str]:
    """One utterance of ``spk`` in ``style_name``: (wav [samples] float32 16 kHz in [-1, 1], text)."""
    rng = np.random.default_rng([seed, spk.index, utt, 1 if backend == "formant" else 2])
    style = STYLES[style_name]
    k = rng.uniform(*cfg.style_intensity)
    pads = rng.uniform(*cfg.pad_seconds, size=2)
    best: tuple[float, np.ndarray, str] | None = None
    for _ in range(tries):
        target = rng.uniform(cfg.min_seconds, cfg.max_seconds) - pads.sum()
        if backend == "formant":
            params = _styled_formant(spk, style, k, rng, cfg)
            words = max(2, round(target * 2.8 * params.rate))
            text = sentence_with_words(rng, max(1, words - 1), words + 1)
            speech = render_formant(text, params, rng)
        else:
            eparams = _styled_espeak(spk, style, k, rng, cfg)
            words = max(2, round(target * eparams.words_per_minute / 60 * 0.95))
            text = sentence_with_words(rng, max(1, words - 1), words + 1)
            speech = espeak_backend.render_espeak(text, eparams)
        total = len(speech) / SAMPLE_RATE + pads.sum()
        miss = max(cfg.min_seconds - total, total - cfg.max_seconds, 0.0)
        if best is None or miss < best[0]:
            best = (miss, speech, text)
        if miss == 0.0:
            break
    assert best is not None
    _, speech, text = best
    pad_n = np.round(pads * SAMPLE_RATE).astype(int)
    return _finish(speech, (int(pad_n[0]), int(pad_n[1])), k * style.level_db, cfg, rng), text


def render_word(
    spk: Speaker, style_name: str, word: str, backend: str, seed: int, utt: int, cfg: SynthConfig
) -> np.ndarray:
    """``spk`` says ``word`` in ``style_name``: [samples] float32 16 kHz in [-1, 1].

    The clip is ``cfg.word_clip_seconds`` long (longer only when the word plus the minimum pads
    ``cfg.pad_seconds[0]`` on both sides needs it), the word at a uniformly random offset.
    """
    # A stream of its own (last key 3): word utterance u never shares randomness with sentence u.
    rng = np.random.default_rng([seed, spk.index, utt, 1 if backend == "formant" else 2, 3])
    style = STYLES[style_name]
    k = rng.uniform(*cfg.style_intensity)
    if backend == "formant":
        speech = render_formant_phones(word_phones(word), _styled_formant(spk, style, k, rng, cfg), rng, what=word)
    else:
        speech = espeak_backend.render_espeak(word, _styled_espeak(spk, style, k, rng, cfg))
    min_pad = round(cfg.pad_seconds[0] * SAMPLE_RATE)
    clip = max(round(cfg.word_clip_seconds * SAMPLE_RATE), len(speech) + 2 * min_pad)
    lead = int(rng.integers(min_pad, clip - len(speech) - min_pad + 1))
    return _finish(speech, (lead, clip - len(speech) - lead), k * style.level_db, cfg, rng)


def _finish(
    speech: np.ndarray, pad_n: tuple[int, int], level_shift_db: float, cfg: SynthConfig, rng: np.random.Generator
) -> np.ndarray:
    """Dry speech [samples] -> padded, levelled, noisy, channel-filtered utterance (float32)."""
    wav = np.concatenate([np.zeros(pad_n[0]), speech.astype(np.float64), np.zeros(pad_n[1])])
    level_db = cfg.level_dbfs + level_shift_db + rng.uniform(-cfg.level_jitter_db, cfg.level_jitter_db)
    speech_rms = float(np.sqrt(np.mean(speech.astype(np.float64) ** 2)))
    wav *= 10 ** (level_db / 20) / speech_rms
    if rng.random() < cfg.noise_prob:
        snr = rng.uniform(*cfg.snr_db)
        wav += _background_noise(len(wav), rng) * 10 ** ((level_db - snr) / 20)
    if rng.random() < cfg.channel_prob:
        wav = _channel(wav, cfg, rng)
    peak = float(np.max(np.abs(wav)))
    if peak > 0.99:  # rare: only very loud angry utterances
        wav *= 0.99 / peak
    return wav.astype(np.float32)


def _cache_key(backend: str, cfg: SynthConfig, speaker: Speaker, style: str, seed: int, voice_seed: int, utt: int,
               word: str | None = None) -> str:
    config = to_dict(cfg)
    if word is None:  # a words-only knob: leaving it out keeps the keys of existing sentence caches valid
        config.pop("word_clip_seconds")
    info: dict = {
        "version": SYNTH_VERSION,
        "backend": backend,
        "espeak": espeak_backend.espeak_version() if backend == "espeak" else None,
        "config": config,
        "speaker": speaker.index,
        "voice_seed": voice_seed,
        "style": style,
        "seed": seed,
        "utt": utt,
    }
    if word is not None:
        info.update(task="words", word=word, lexicon=list(word_phones(word)) if backend == "formant" else None)
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()


def _render_job(job: dict) -> dict:
    """Render and save one utterance (runs in a worker process when jobs > 1)."""
    if "word" in job:
        word = job["word"]
        wav, text = render_word(job["speaker"], job["style"], word, job["backend"], job["seed"], job["utt"], job["cfg"]), word
    else:
        wav, text = render_utterance(job["speaker"], job["style"], job["backend"], job["seed"], job["utt"], job["cfg"])
    save_audio(job["abs_path"], wav, SAMPLE_RATE)
    return {**job["record"], "num_samples": len(wav), "text": text, "sha256": file_sha256(job["abs_path"])}


def synthesize_corpus(
    out_dir: str | Path,
    backend: str = "formant",
    speakers: int = 4,
    utts_per_speaker: int = 10,
    styles: tuple[str, ...] | list[str] = ("neutral", "happy", "sad", "angry"),
    seed: int = 0,
    speaker_offset: int = 0,
    voice_seed: int = 0,
    config: SynthConfig | None = None,
    jobs: int = 1,
    task: str = "sentences",
    vocabulary: tuple[str, ...] | list[str] | None = None,
) -> Path:
    """Render ``speakers x utts_per_speaker`` utterances into ``out_dir``; return the manifest path.

    ``task="sentences"``: random sentences; ``task="words"``: isolated words from ``vocabulary``
    (default: all of :data:`speechssl.corpora.words.VOCABULARY`), labelled ``word`` (module docstring).

    Re-running is safe: utterances whose cache key (everything that affects the audio) and file
    hash match the previous run are kept, others are re-rendered atomically, and files of the
    previous run that are no longer planned are deleted. ``jobs`` > 1 renders in processes
    (the output does not depend on it).
    """
    cfg = config or SynthConfig()
    cfg.validate()
    backend = resolve_backend(backend)
    styles = tuple(styles)
    if task not in TASKS:
        raise ValueError(f"unknown synth task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "words":
        check_lexicon()
        words = check_vocabulary(VOCABULARY if vocabulary is None else vocabulary)
    elif vocabulary is not None:
        raise ValueError("vocabulary is only used with task='words'")
    if not styles:
        raise ValueError("styles is empty; choose from " + ", ".join(STYLES))
    unknown = [s for s in styles if s not in STYLES]
    if unknown or len(set(styles)) != len(styles):
        raise ValueError(f"styles must be distinct names from {', '.join(STYLES)}; got {', '.join(styles)}")
    for name, value, lo in (("speakers", speakers, 1), ("utts_per_speaker", utts_per_speaker, 1),
                            ("speaker_offset", speaker_offset, 0), ("jobs", jobs, 1), ("seed", seed, 0),
                            ("voice_seed", voice_seed, 0)):  # fmt: skip
        if not isinstance(value, int) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / ".synth_state.json"
    try:
        old_files = json.loads(state_path.read_text())["files"] if state_path.exists() else {}
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring unreadable %s; re-rendering everything", state_path)
        old_files = {}

    start = time.time()
    records: list[dict | None] = []
    todo: list[tuple[int, dict]] = []
    new_files: dict[str, dict] = {}
    for i in range(speakers):
        spk = make_speaker(speaker_offset + i, backend, voice_seed, cfg.espeak_foreign_voices)
        for u in range(utts_per_speaker):
            word = None
            if task == "words":
                word = words[(u + spk.index) % len(words)]
                style = styles[(u // len(words) + spk.index) % len(styles)]
                utt_id = f"{spk.name}_w{seed}_{u:04d}"
            else:
                style = styles[(u + spk.index) % len(styles)]
                utt_id = f"{spk.name}_s{seed}_{u:04d}"
            rel = f"wavs/{spk.name}/{utt_id}.wav"
            key = _cache_key(backend, cfg, spk, style, seed, voice_seed, u, word)
            record = {"id": utt_id, "path": str(out / rel), "num_samples": 0, "sample_rate": SAMPLE_RATE,
                      "speaker": spk.name, "gender": spk.gender, "style": style, "text": "", "backend": backend}  # fmt: skip
            if word is not None:
                record["word"] = word
            old = old_files.get(rel)
            if old and old.get("key") == key and (out / rel).exists() and file_sha256(out / rel) == old.get("sha256"):
                records.append({**record, "num_samples": old["num_samples"], "text": old["text"]})
                new_files[rel] = old
                continue
            records.append(None)
            job = {"speaker": spk, "style": style, "backend": backend, "seed": seed, "utt": u, "cfg": cfg,
                   "abs_path": str(out / rel), "record": record, "key": key, "rel": rel}  # fmt: skip
            if word is not None:
                job["word"] = word
            todo.append((len(records) - 1, job))

    def finish(slot: int, job: dict, result: dict) -> None:
        sha = result.pop("sha256")
        records[slot] = result
        new_files[job["rel"]] = {"key": job["key"], "sha256": sha, "num_samples": result["num_samples"],
                                 "text": result["text"]}  # fmt: skip

    if jobs > 1 and len(todo) > 1:
        # Workers only run numpy/scipy/soundfile (never torch ops, so no OpenMP state to inherit):
        # fork is safe and avoids re-importing torch in every worker.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context(method)) as pool:
            for (slot, job), result in zip(todo, pool.map(_render_job, [j for _, j in todo], chunksize=4)):
                finish(slot, job, result)
    else:
        for slot, job in todo:
            finish(slot, job, _render_job(job))

    for rel in set(old_files) - set(new_files):
        stale = (out / rel).resolve()
        if stale.is_relative_to(out / "wavs") and stale.suffix == ".wav":
            stale.unlink(missing_ok=True)
    final = [r for r in records if r is not None]
    manifest = write_manifest(final, out / "manifest.jsonl")
    atomic_write_json(state_path, {"version": SYNTH_VERSION, "files": new_files})
    atomic_write_json(out / "synth_config.json", {
        "version": SYNTH_VERSION, "backend": backend, "speakers": speakers, "utts_per_speaker": utts_per_speaker,
        "styles": list(styles), "seed": seed, "speaker_offset": speaker_offset, "voice_seed": voice_seed,
        "config": to_dict(cfg), "task": task, **({"vocabulary": list(words)} if task == "words" else {}),
    })  # fmt: skip
    seconds = sum(r["num_samples"] for r in final) / SAMPLE_RATE
    rendered = sum(records[slot]["num_samples"] for slot, _ in todo) / SAMPLE_RATE  # type: ignore[index]
    elapsed = max(time.time() - start, 1e-6)
    speed = f"{rendered / 60:.1f} min rendered in {elapsed:.1f} s ({rendered / elapsed:.0f}x real time)"
    log.info(
        "synth %s %s: %d utterances, %.1f min of audio (%d rendered, %d kept from the last run; %s) -> %s",
        backend, task, len(final), seconds / 60, len(todo), len(final) - len(todo),
        speed if todo else "nothing to render", manifest,
    )  # fmt: skip
    return manifest
