"""Synthetic corpus: manifest, audio format, determinism, re-runs, labels, backends, CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from speechssl.cli.main import main as cli_main
from speechssl.corpora import espeak as espeak_backend
from speechssl.corpora import synthetic
from speechssl.corpora import text as text_gen
from speechssl.corpora.formant import (
    PHONES,
    FormantParams,
    render_formant,
    render_formant_phones,
    text_to_phones,
)
from speechssl.corpora.synthetic import SynthConfig, make_speaker, resolve_backend, synthesize_corpus
from speechssl.corpora.text import generate_sentence, sentence_with_words
from speechssl.corpora.words import PRONUNCIATIONS, VOCABULARY, check_lexicon, word_phones
from speechssl.data.manifest import read_manifest
from speechssl.data.split import split_records

STYLES = ("neutral", "happy", "sad", "angry")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The default corpus of the CLI example: 4 speakers x 10 utterances, seed 0."""
    return synthesize_corpus(tmp_path_factory.mktemp("synth") / "data", speakers=4, utts_per_speaker=10)


def _bytes_by_id(manifest: Path) -> dict[str, bytes]:
    return {r["id"]: Path(r["path"]).read_bytes() for r in read_manifest(manifest)}


def test_manifest_has_balanced_labelled_lines(corpus: Path):
    lines = corpus.read_text().splitlines()
    assert len(lines) == 40
    first = json.loads(lines[0])
    assert not Path(first["path"]).is_absolute() and first["path"].startswith("wavs/")
    recs = read_manifest(corpus)
    for r in recs:
        assert {"id", "path", "num_samples", "sample_rate", "speaker", "gender", "style", "text"} <= set(r)
        assert r["sample_rate"] == 16000 and r["text"] and r["backend"] == "formant"
        assert 1.5 <= r["num_samples"] / 16000 <= 4.0
    assert Counter(r["speaker"] for r in recs) == {f"spk{i:03d}": 10 for i in range(4)}
    assert Counter(r["style"] for r in recs) == {s: 10 for s in STYLES}
    assert Counter(r["gender"] for r in recs) == {"female": 20, "male": 20}
    assert len({r["text"] for r in recs}) >= 38  # random content, not one sentence per style
    config = json.loads((corpus.parent / "synth_config.json").read_text())
    assert config["speakers"] == 4 and config["config"]["noise_prob"] == SynthConfig().noise_prob


def test_wavs_are_16k_mono_float_in_range(corpus: Path):
    for r in read_manifest(corpus):
        info = sf.info(r["path"])
        assert (info.samplerate, info.channels, info.frames) == (16000, 1, r["num_samples"])
        wav, _ = sf.read(r["path"], dtype="float32")
        assert wav.ndim == 1 and np.abs(wav).max() <= 1.0
        assert np.sqrt(np.mean(wav**2)) > 1e-3  # not silent


def test_deterministic_and_seeds_give_disjoint_sets(corpus: Path, tmp_path: Path):
    # Same seed, fewer speakers/utterances, 2 worker processes: the same ids get bitwise-identical files.
    small = synthesize_corpus(tmp_path / "again", speakers=2, utts_per_speaker=3, seed=0, jobs=2)
    reference = _bytes_by_id(corpus)
    again = _bytes_by_id(small)
    assert len(again) == 6 and all(again[k] == reference[k] for k in again)
    # Another seed: same speakers, other utterances (ids, texts and bytes all differ).
    pool = synthesize_corpus(tmp_path / "pool", speakers=2, utts_per_speaker=3, seed=1)
    pool_recs, small_recs = read_manifest(pool), read_manifest(small)
    assert {r["speaker"] for r in pool_recs} == {r["speaker"] for r in small_recs}
    assert not {r["id"] for r in pool_recs} & set(reference)
    assert not {r["text"] for r in pool_recs} & {r["text"] for r in small_recs}
    assert not set(_bytes_by_id(pool).values()) & set(again.values())
    # speaker_offset gives new speakers.
    other = read_manifest(synthesize_corpus(tmp_path / "other", speakers=1, utts_per_speaker=1, speaker_offset=7))
    assert other[0]["speaker"] == "spk007" and other[0]["gender"] == "male"


def test_rerun_skips_repairs_and_cleans(tmp_path: Path, monkeypatch):
    out = tmp_path / "c"
    manifest = synthesize_corpus(out, speakers=2, utts_per_speaker=3)
    original = _bytes_by_id(manifest)
    calls = []
    real = synthetic.render_utterance
    monkeypatch.setattr(synthetic, "render_utterance", lambda *a, **k: calls.append(a) or real(*a, **k))
    synthesize_corpus(out, speakers=2, utts_per_speaker=3)
    assert calls == []  # everything kept
    victim = Path(read_manifest(manifest)[1]["path"])
    victim.write_bytes(b"garbage")
    synthesize_corpus(out, speakers=2, utts_per_speaker=3)
    assert len(calls) == 1 and _bytes_by_id(manifest) == original  # repaired, identical
    synthesize_corpus(out, speakers=2, utts_per_speaker=2)
    recs = read_manifest(manifest)
    assert len(recs) == 4 and len(list((out / "wavs").rglob("*.wav"))) == 4  # stale files removed
    assert not list(out.rglob("*.tmp"))
    # A changed rendering knob re-renders (cache key covers the config).
    synthesize_corpus(out, speakers=2, utts_per_speaker=2, config=SynthConfig(noise_prob=0.0))
    assert len(calls) == 5


def _median_f0(path: str) -> float:
    wav, _ = sf.read(path, dtype="float32")
    f0 = librosa.yin(wav, fmin=60, fmax=450, sr=16000, frame_length=1024, hop_length=160)
    rms = librosa.feature.rms(y=wav, frame_length=1024, hop_length=160)[0][: len(f0)]
    return float(np.median(f0[rms > 0.3 * rms.max()]))


def test_speakers_and_styles_differ_in_f0(corpus: Path):
    recs = read_manifest(corpus)
    semitones = {r["id"]: 12 * np.log2(_median_f0(r["path"])) for r in recs}
    by_speaker: dict[str, list] = {}
    for r in recs:
        by_speaker.setdefault(r["speaker"], []).append(r)
    rel: dict[str, list[float]] = {s: [] for s in STYLES}
    for utts in by_speaker.values():
        neutral = np.mean([semitones[r["id"]] for r in utts if r["style"] == "neutral"])
        for r in utts:
            rel[r["style"]].append(semitones[r["id"]] - neutral)
    mean = {s: float(np.mean(v)) for s, v in rel.items()}
    assert mean["happy"] > mean["angry"] > mean["neutral"] + 0.5 > mean["sad"] + 1.0, mean
    female = [semitones[r["id"]] for r in recs if r["gender"] == "female"]
    male = [semitones[r["id"]] for r in recs if r["gender"] == "male"]
    assert np.mean(female) > np.mean(male) + 5  # > 5 semitones apart on average


def test_speaker_voices_are_stable_and_distinct():
    a, b = make_speaker(3, "formant"), make_speaker(3, "formant")
    assert a == b and a.name == "spk003" and make_speaker(3, "espeak").name == "espk003"
    scales = {make_speaker(i, "formant").formant.formant_scale for i in range(6)}
    assert len(scales) == 6
    assert make_speaker(3, "formant", voice_seed=2).formant != a.formant
    assert make_speaker(3, "formant", voice_seed=2).name == "spk003v2"


def test_formant_scale_moves_spectrum_up():
    text = "The old farmer carried a heavy basket."

    def centroid(scale: float) -> float:
        wav = render_formant(text, FormantParams(f0_hz=140.0, formant_scale=scale), np.random.default_rng(0))
        spec = np.abs(np.fft.rfft(wav)) ** 2
        freqs = np.fft.rfftfreq(len(wav), 1 / 16000)
        band = freqs < 3000  # vowel formant region
        return float((spec[band] * freqs[band]).sum() / spec[band].sum())

    assert centroid(1.2) > 1.08 * centroid(1.0)


def test_text_generator_and_phones_are_deterministic():
    # the seed decides the sentence: equal seeds agree, different seeds give different sentences
    assert generate_sentence(np.random.default_rng(5)) == generate_sentence(np.random.default_rng(5))
    sentences = [generate_sentence(np.random.default_rng(seed)) for seed in range(40)]
    assert len(set(sentences)) > 30
    vocabulary = {w.lower() for words in (text_gen.DETERMINERS, text_gen.ADJECTIVES, text_gen.NOUNS, text_gen.NAMES,
                                          text_gen.TRANSITIVE_VERBS, text_gen.BASE_VERBS, text_gen.INTRANSITIVE_VERBS,
                                          text_gen.ADVERBS, text_gen.PREPOSITIONS, text_gen.INTERJECTIONS) for w in words}
    vocabulary |= {"did", "and"}
    for s in sentences:
        assert s[0].isupper() and s[-1] in ".?", s
        assert {w.strip(",.?").lower() for w in s.split()} <= vocabulary, s
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = len(sentence_with_words(rng, 4, 7).split())
        assert 4 <= n <= 7
    # phones: every phone can be rendered, and the spelling rules hold as relations
    phones = text_to_phones(" ".join(sentences))
    assert {p for p, _, _ in phones} <= set(PHONES)
    assert [p for p, _, _ in text_to_phones("the")][0] == "DH" and [p for p, _, _ in text_to_phones("thin")][0] == "TH"
    assert text_to_phones("hope") == text_to_phones("hop")  # silent final e
    assert text_to_phones("shipp") == text_to_phones("ship")  # a double consonant is one phone
    assert text_to_phones("cell")[0][0] == "S" and text_to_phones("cat")[0][0] == "K"
    # one stressed vowel per content word, none in a function word
    assert sum(stressed for _, stressed, _ in text_to_phones("ship")) == 1
    assert sum(stressed for _, stressed, _ in text_to_phones("the")) == 0
    # a pause after each punctuated word but the last, on that word's last phone
    oh, the, ship, those = (text_to_phones(w) for w in ("oh", "the", "ship", "those"))
    got = text_to_phones("Oh. the ship, those.")
    assert [p for p, _, _ in got] == [p for p, _, _ in oh + the + ship + those]
    pauses = [i for i, (_, _, pause) in enumerate(got) if pause]
    assert pauses == [len(oh) - 1, len(oh) + len(the) + len(ship) - 1]
    with pytest.raises(ValueError, match="no letters"):
        text_to_phones("123 !!")
    with pytest.raises(ValueError, match="min_words"):
        sentence_with_words(rng, 5, 2)


def test_espeak_backend_renders(tmp_path: Path):
    cfg = SynthConfig(f0_jitter_st=0.0, noise_prob=0.0)  # so one happy/neutral pair is ordered
    manifest = synthesize_corpus(tmp_path / "e", backend="espeak", speakers=1, utts_per_speaker=2, seed=3, config=cfg)
    recs = read_manifest(manifest)
    assert [r["style"] for r in recs] == ["neutral", "happy"]
    assert {r["speaker"] for r in recs} == {"espk000"} and recs[0]["backend"] == "espeak"
    for r in recs:
        info = sf.info(r["path"])
        assert (info.samplerate, info.channels) == (16000, 1) and 1.5 <= info.frames / 16000 <= 4.0
    assert _median_f0(recs[1]["path"]) > _median_f0(recs[0]["path"])  # happy is higher
    again = synthesize_corpus(tmp_path / "e2", backend="espeak", speakers=1, utts_per_speaker=2, seed=3, config=cfg)
    assert _bytes_by_id(again) == _bytes_by_id(manifest)


def test_backend_resolution_and_missing_espeak(monkeypatch, tmp_path: Path):
    # espeak-ng is optional: both branches, with the lookup controlled (not whatever this machine has)
    monkeypatch.setattr(espeak_backend, "espeak_binary", lambda: "/opt/fake/espeak-ng")
    assert resolve_backend("auto") == "espeak"
    assert resolve_backend("formant") == "formant"
    monkeypatch.setattr(espeak_backend, "espeak_binary", lambda: None)
    assert resolve_backend("auto") == "formant"
    with pytest.raises(espeak_backend.EspeakNotFoundError, match="apt-get install espeak-ng"):
        synthesize_corpus(tmp_path / "x", backend="espeak", speakers=1, utts_per_speaker=1)
    assert cli_main(["synth", "--out", str(tmp_path / "y"), "--backend", "espeak", "--speakers", "1"]) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "festival"}, "unknown synth backend 'festival'"),
        ({"styles": ("neutral", "bored")}, "styles must be distinct names"),
        ({"styles": ()}, "styles is empty"),
        ({"speakers": 0}, "speakers must be an integer >= 1"),
        ({"utts_per_speaker": 2.5}, "utts_per_speaker must be an integer"),
        ({"config": SynthConfig(min_seconds=5.0)}, "min_seconds"),
        ({"config": SynthConfig(noise_prob=1.5)}, "noise_prob"),
    ],
)
def test_bad_arguments_raise_clear_errors(tmp_path: Path, kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        synthesize_corpus(tmp_path / "bad", **kwargs)


def test_cli(tmp_path: Path, capsys):
    out = tmp_path / "cli"
    argv = ["synth", "--backend", "formant", "--out", str(out), "--speakers", "2", "--utts-per-speaker", "2", "--seed", "4",
            "--styles", "sad", "angry", "--speaker-offset", "2", "--set", "noise_prob=0"]  # fmt: skip
    assert cli_main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve() / "manifest.jsonl")
    recs = read_manifest(out / "manifest.jsonl")
    assert [(r["speaker"], r["style"]) for r in recs] == [
        ("spk002", "sad"), ("spk002", "angry"), ("spk003", "angry"), ("spk003", "sad")
    ]  # fmt: skip
    assert json.loads((out / "synth_config.json").read_text())["config"]["noise_prob"] == 0.0
    assert cli_main(["synth", "--out", str(out), "--styles", "bored"]) == 1
    assert "bored" in capsys.readouterr().err
    assert cli_main(["synth", "--out", str(out), "--speakers", "0"]) == 1
    assert cli_main(["synth", "--out", str(out), "--set", "nope=1"]) == 1
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main(["synth", "--out", str(out), "--backend", "festival"])
    assert exc.value.code == 2


# --- the spoken-word task -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def words_corpus(tmp_path_factory) -> Path:
    """Every word x every style for 2 formant speakers: 2 x 20 x 4 = 160 one-second clips."""
    return synthesize_corpus(tmp_path_factory.mktemp("words") / "w", task="words", speakers=2, utts_per_speaker=80)


def test_words_every_voice_says_every_word_in_every_style(words_corpus: Path):
    recs = read_manifest(words_corpus)
    assert len(recs) == 160
    combos = Counter((r["speaker"], r["word"], r["style"]) for r in recs)
    assert set(combos.values()) == {1}
    assert {w for _, w, _ in combos} == set(VOCABULARY) and len(VOCABULARY) == 20
    assert {(s, st) for s, _, st in combos} == {(f"spk00{i}", st) for i in range(2) for st in STYLES}
    for r in recs:
        assert r["text"] == r["word"] and r["backend"] == "formant" and "_w0_" in r["id"]
        assert r["num_samples"] == 16000  # the 1 s clip: no formant word needs more
        wav, sr = sf.read(r["path"], dtype="float32")
        assert sr == 16000 and np.sqrt(np.mean(wav**2)) > 1e-3 and np.abs(wav).max() <= 1.0
    config = json.loads((words_corpus.parent / "synth_config.json").read_text())
    assert config["task"] == "words" and config["vocabulary"] == list(VOCABULARY)


def test_words_are_deterministic_and_separate_from_sentences(words_corpus: Path, tmp_path: Path):
    # The same seed with fewer utterances and 2 workers: the same ids, labels and bytes.
    again = synthesize_corpus(tmp_path / "again", task="words", speakers=2, utts_per_speaker=25, jobs=2)
    reference = {r["id"]: r for r in read_manifest(words_corpus)}
    for r in read_manifest(again):
        assert (r["word"], r["style"]) == (reference[r["id"]]["word"], reference[r["id"]]["style"])
        assert Path(r["path"]).read_bytes() == Path(reference[r["id"]]["path"]).read_bytes()
    # Utterance u of speaker k says word (u + k) mod 20: the words rotate across speakers.
    assert [r["word"] for r in read_manifest(again)][:2] == ["yes", "no"]
    assert [r["word"] for r in read_manifest(again)][25:27] == ["no", "up"]
    # Another seed: the same word by the same voice is another recording; sentences get other ids.
    other = {r["id"][:6] + r["word"] + r["style"]: Path(r["path"]).read_bytes()
             for r in read_manifest(synthesize_corpus(tmp_path / "s1", task="words", speakers=1, utts_per_speaker=20,
                                                      seed=1))}  # fmt: skip
    ref = {r["id"][:6] + r["word"] + r["style"]: Path(r["path"]).read_bytes() for r in reference.values()}
    assert len(other) == 20 and all(other[k] != ref[k] for k in other)
    sentences = read_manifest(synthesize_corpus(tmp_path / "sent", speakers=1, utts_per_speaker=2))
    assert "word" not in sentences[0] and not {r["id"] for r in sentences} & set(reference)


def test_formant_words_come_from_a_fixed_lexicon():
    check_lexicon()  # known phones, a vowel each, no homophones
    assert len({PRONUNCIATIONS[w] for w in VOCABULARY}) == 20
    assert word_phones("seven") == [("S", False, False), ("EH", True, False), ("V", False, False),
                                    ("AX", False, False), ("N", False, False)]  # fmt: skip
    # The lexicon, not the letter rules: "no" would otherwise be N AA (like "gnaw").
    assert [p for p, _, _ in text_to_phones("no")] == ["N", "AA"] and PRONUNCIATIONS["no"] == ("N", "OW")
    # The same word, the same phones for every speaker: two voices differ only in voice, not content.
    rng = np.random.default_rng
    a = render_formant_phones(word_phones("two"), FormantParams(), rng(0), what="two")
    b = render_formant_phones(word_phones("two"), FormantParams(), rng(0), what="two")
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="same pronunciation"):
        check_lexicon({"no": ("N", "OW"), "know": ("N", "OW")})
    with pytest.raises(ValueError, match="'xyz'.*not in the formant inventory"):
        check_lexicon({"xyz": ("X", "AA")})
    with pytest.raises(ValueError, match="unknown phones"):
        render_formant_phones([("Q", True, False)], FormantParams(), rng(0), what="q")


def test_formant_words_are_speaker_independently_recognisable(words_corpus: Path):
    """Nearest class mean of log-Mel statistics, trained on one speaker, tested on the other (of the
    other gender, in noise and random channels): far above chance, so the words differ acoustically."""
    recs = read_manifest(words_corpus)
    mel = librosa.filters.mel(sr=16000, n_fft=400, n_mels=40)

    def embed(path: str) -> np.ndarray:
        wav, _ = sf.read(path, dtype="float32")
        frames = np.lib.stride_tricks.sliding_window_view(wav, 400)[::160] * np.hanning(400)
        logmel = np.log(mel @ (np.abs(np.fft.rfft(frames, axis=1)) ** 2).T + 1e-6)  # [40, frames]
        energy = logmel.mean(axis=0)
        logmel = logmel[:, energy > energy.max() - 4]  # the word, not the silence around it
        logmel -= logmel.mean(axis=1, keepdims=True)  # per-utterance CMN removes most of voice and channel
        thirds = np.array_split(logmel, 3, axis=1)  # keeps the order of sounds ("no" vs "on")
        return np.concatenate([t.mean(axis=1) for t in thirds] + [logmel.std(axis=1)])

    x = {r["id"]: embed(r["path"]) for r in recs}
    for train_spk, test_spk in (("spk000", "spk001"), ("spk001", "spk000")):
        train = [r for r in recs if r["speaker"] == train_spk]
        means = {w: np.mean([x[r["id"]] for r in train if r["word"] == w], axis=0) for w in VOCABULARY}
        test = [r for r in recs if r["speaker"] == test_spk]
        hits = [min(means, key=lambda w: np.linalg.norm(x[r["id"]] - means[w])) == r["word"] for r in test]
        assert np.mean(hits) > 3 / len(VOCABULARY), (train_spk, np.mean(hits))  # chance is 1/20


def test_espeak_words(tmp_path: Path):
    manifest = synthesize_corpus(tmp_path / "ew", backend="espeak", task="words", speakers=2, utts_per_speaker=20,
                                 vocabulary=VOCABULARY, seed=5)  # fmt: skip
    recs = read_manifest(manifest)
    assert Counter(r["word"] for r in recs) == {w: 2 for w in VOCABULARY}
    assert {r["speaker"] for r in recs} == {"espk000", "espk001"} and {r["backend"] for r in recs} == {"espeak"}
    assert {r["style"] for r in recs} == {"neutral", "happy"}  # speaker k's first 20 words: style k
    for r in recs:
        assert 16000 <= r["num_samples"] <= 24000 and r["text"] == r["word"]
    again = synthesize_corpus(tmp_path / "ew2", backend="espeak", task="words", speakers=2, utts_per_speaker=20, seed=5)
    assert _bytes_by_id(again) == _bytes_by_id(manifest)
    assert [r["word"] for r in read_manifest(again)] == [r["word"] for r in recs]


def test_words_speaker_independent_split(words_corpus: Path):
    parts = split_records(read_manifest(words_corpus), {"pool": 0.5, "test": 0.5}, group_by="speaker")
    assert not {r["speaker"] for r in parts["pool"]} & {r["speaker"] for r in parts["test"]}
    assert {r["word"] for r in parts["pool"]} == {r["word"] for r in parts["test"]} == set(VOCABULARY)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "poems"}, "unknown synth task 'poems'"),
        ({"task": "words", "vocabulary": ("yes", "maybe")}, r"unknown: maybe"),
        ({"task": "words", "vocabulary": ("yes", "yes")}, "repeated words"),
        ({"task": "words", "vocabulary": ()}, "vocabulary is empty"),
        ({"vocabulary": ("yes",)}, "only used with task='words'"),
        ({"task": "words", "config": SynthConfig(word_clip_seconds=0.1)}, "word_clip_seconds"),
    ],
)
def test_bad_word_arguments_raise_clear_errors(tmp_path: Path, kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        synthesize_corpus(tmp_path / "bad", **kwargs)


def test_cli_words(tmp_path: Path, capsys):
    out = tmp_path / "cliw"
    argv = ["synth", "--backend", "formant", "--task", "words", "--vocabulary", "stop", "go", "--out", str(out), "--speakers", "2",
            "--utts-per-speaker", "4", "--styles", "sad", "angry", "--set", "word_clip_seconds=1.2"]  # fmt: skip
    assert cli_main(argv) == 0
    recs = read_manifest(out / "manifest.jsonl")
    assert [(r["speaker"], r["word"], r["style"]) for r in recs] == [
        ("spk000", "stop", "sad"), ("spk000", "go", "sad"), ("spk000", "stop", "angry"), ("spk000", "go", "angry"),
        ("spk001", "go", "angry"), ("spk001", "stop", "angry"), ("spk001", "go", "sad"), ("spk001", "stop", "sad"),
    ]  # fmt: skip
    assert {r["num_samples"] for r in recs} == {19200}
    capsys.readouterr()
    assert cli_main(["synth", "--task", "words", "--vocabulary", "maybe", "--out", str(out)]) == 1
    assert "maybe" in capsys.readouterr().err
