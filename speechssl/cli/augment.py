"""Write augmented examples (WAV + log-Mel PNG + params.jsonl) to hear and see what a model trains on.

Usage::

    speechssl augment --config recipes/augment/speech.yaml --input data/dev.jsonl --out exp/aug -n 3
    speechssl augment --config recipes/pretrain/simclr_tiny.yaml --input data/dev.jsonl --out exp/aug

``--config`` is an augmentation YAML (sections ``waveform`` / ``spectrogram``) or a pretraining
recipe whose ``model.augment`` section holds them.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="augmentation YAML, or a recipe with model.augment")
    parser.add_argument("--input", required=True, help="manifest (JSONL) of utterances to augment")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("-n", type=int, default=3, help="augmented versions per utterance (default 3)")
    parser.add_argument("--max-utts", type=int, default=4, help="utterances taken from the manifest (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same examples)")


def load_augment_yaml(path: str):
    """An augmentation YAML or a recipe's ``model.augment`` -> AugmentConfig (errors name the file)."""
    from speechssl.augment import augment_config
    from speechssl.config import ConfigError, load_yaml

    data = load_yaml(path)
    try:
        if "model" in data:
            if not isinstance(data["model"], dict) or "augment" not in data["model"]:
                raise ConfigError("a recipe without a model.augment section")
            return augment_config(data["model"]["augment"], where="model.augment")
        return augment_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from speechssl.augment.render import render_examples

    cfg = load_augment_yaml(args.config)
    paths = render_examples(cfg, args.input, args.out, n=args.n, seed=args.seed, max_utts=args.max_utts)
    print(f"wrote {len(paths)} files to {args.out} (waveform: {', '.join(cfg.waveform.enabled()) or 'none'}; "
          f"spectrogram: {', '.join(cfg.spectrogram.enabled()) or 'none'})")
    return 0
