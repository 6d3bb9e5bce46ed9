"""Render the built-in synthetic speech corpus (speakers x speaking styles) with a manifest.

Examples:
  speechssl synth --out data/synth --speakers 4 --utts-per-speaker 10      # espeak-ng if installed, else formant
  speechssl synth --backend formant --out data/synth --speakers 4 --utts-per-speaker 10
  speechssl synth --out data/pool --speakers 8 --utts-per-speaker 200 --seed 1 --jobs 2  # unlabelled pool
  speechssl synth --out data/labelled --speakers 8 --utts-per-speaker 20 --seed 2      # same voices, new utterances
  speechssl synth --out data/clean --set noise_prob=0 --set channel_prob=0 --set 'snr_db=[5,20]'
  speechssl synth --task words --out data/words --speakers 8 --utts-per-speaker 80   # 20 words x 4 styles each
  speechssl synth --task words --vocabulary yes no up down --out data/kws --utts-per-speaker 16

Writes OUT/wavs/<speaker>/<id>.wav (16 kHz mono) and OUT/manifest.jsonl with labels speaker,
gender, style, text, backend (and word, with --task words: 1 s clips of one word each; utterance u of
speaker k says word (u + k) mod V of the vocabulary). Same arguments -> identical files; re-running skips finished work.
The backend that ran is printed on stderr; stdout holds only the manifest path.
--set keys: the fields of speechssl.corpora.synthetic.SynthConfig (label meanings: its module docstring).
"""

from __future__ import annotations

import argparse
import sys

from speechssl.corpora.synth_config import BACKENDS, STYLES, TASKS, SynthConfig
from speechssl.corpora.words import VOCABULARY


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="auto (default): espeak-ng if installed, else formant; formant: built-in numpy "
                             "synthesiser; espeak: espeak-ng")  # fmt: skip
    parser.add_argument("--task", choices=TASKS, default="sentences",
                        help="sentences: random sentences (default); words: isolated keywords labelled 'word'")  # fmt: skip
    parser.add_argument("--vocabulary", nargs="+", default=None, metavar="WORD",
                        help=f"--task words: the words, from: {' '.join(VOCABULARY)} (default: all)")  # fmt: skip
    parser.add_argument("--speakers", type=int, default=4, help="number of speakers (default 4)")
    parser.add_argument("--utts-per-speaker", type=int, default=10, help="utterances per speaker (default 10)")
    parser.add_argument("--styles", nargs="+", default=list(STYLES), metavar="STYLE",
                        help=f"speaking styles, from: {' '.join(STYLES)} (default: all)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="utterance seed: text and per-utterance variation")
    parser.add_argument("--speaker-offset", type=int, default=0, help="index of the first speaker (new voices)")
    parser.add_argument("--voice-seed", type=int, default=0, help="seed of the speaker voices (default 0)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (output does not depend on it)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="SynthConfig override, repeatable (e.g. noise_prob=0)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    # The renderer (numpy, scipy, torch) and the config parser (yaml) are imported here, not at
    # load, so that --help is instant.
    from speechssl.config import ConfigError, apply_overrides, from_dict, to_dict
    from speechssl.corpora import espeak
    from speechssl.corpora.synthetic import resolve_backend, synthesize_corpus

    try:
        cfg = from_dict(SynthConfig, apply_overrides(to_dict(SynthConfig()), args.overrides), where="synth --set")
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    backend = resolve_backend(args.backend)
    if args.backend == "auto":
        found = espeak.espeak_binary()
        why = f"auto: espeak-ng found at {found}" if found else "auto: espeak-ng not installed"
    else:
        why = "--backend"
    # stderr, so that stdout stays the manifest path that scripts capture.
    print(f"speechssl synth: backend {backend} ({why})", file=sys.stderr)
    manifest = synthesize_corpus(
        args.out,
        backend=backend,
        speakers=args.speakers,
        utts_per_speaker=args.utts_per_speaker,
        styles=args.styles,
        seed=args.seed,
        speaker_offset=args.speaker_offset,
        voice_seed=args.voice_seed,
        config=cfg,
        jobs=args.jobs,
        task=args.task,
        vocabulary=args.vocabulary,
    )
    print(manifest)
    return 0
