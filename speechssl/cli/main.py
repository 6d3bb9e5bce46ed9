"""``speechssl <verb> ...``: a thin dispatcher. Each verb is a module in this package with
``add_arguments(parser)`` and ``run(args) -> int`` that calls one library function."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import speechssl

# verb -> (module, one-line help). Modules are imported only when their verb runs.
VERBS: dict[str, tuple[str, str]] = {
    "synth": ("speechssl.cli.synth", "render the built-in synthetic speech corpus"),
    "prepare": ("speechssl.cli.prepare", "scan an audio folder into a JSONL manifest"),
    "manifest": ("speechssl.cli.manifest", "import/export/split/inspect manifests"),
    "corpus": ("speechssl.cli.corpus", "prepare manifests of a known corpus (LibriSpeech, IEMOCAP, VoxCeleb1, generic)"),
    "targets": ("speechssl.cli.targets", "fit k-means and write frame labels for HuBERT (targets kmeans / assign)"),
    "pretrain": ("speechssl.cli.pretrain", "pretrain an SSL model from a YAML recipe"),
    "augment": ("speechssl.cli.augment", "write augmented examples (WAV + spectrogram PNG) of an augmentation config"),
    "inspect": ("speechssl.cli.inspect", "print a pretraining run's health summary and probe curve"),
    "extract": ("speechssl.cli.extract", "extract frozen-encoder features from audio"),
    "export": ("speechssl.cli.export", "export an encoder to other toolkits"),
    "downstream": ("speechssl.cli.downstream", "train/evaluate/predict SUPERB-style downstream tasks"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechssl",
        description="Speech self-supervised learning: pretrain, extract, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"speechssl {speechssl.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_, help_text) in VERBS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse only the global options and the verb; the verb's own parser reads the rest.
    verb_index = next((i for i, a in enumerate(argv) if a in VERBS), None)
    head = argv if verb_index is None else argv[: verb_index + 1]
    args = parser.parse_args(head)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.verb is None:
        parser.print_help()
        return 2
    module_name, help_text = VERBS[args.verb]
    module = importlib.import_module(module_name)
    verb_parser = argparse.ArgumentParser(
        prog=f"speechssl {args.verb}",
        description=module.__doc__ or help_text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(verb_parser)
    verb_args = verb_parser.parse_args(argv[verb_index + 1 :])
    try:
        return int(module.run(verb_args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, FileNotFoundError, OSError, MemoryError) as exc:
        # Library errors carry the file/line/key; show them without a traceback.
        if args.verbose:
            raise
        # str(KeyError) is the repr of its message (quoted); show the message itself
        message = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else exc
        print(f"speechssl {args.verb}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
