"""Scan an audio folder (recursively) into a JSONL manifest and report hours kept and dropped.

Usage: speechssl prepare DIR --out data/train.jsonl [--label-from-path 'speaker={parent}'] [--min-seconds 0.5]
       speechssl prepare DIR --out data/train.jsonl --check-audio   # also decode: drop NaN/inf and silent files

By default only the file headers are read (fast): a file of NaN samples or digital silence is
kept. --check-audio decodes every file and drops those, with reasons (non_finite, silent).

Labels from paths: FIELD=TEMPLATE with {parent} {grandparent} {parentN} {stem} {name} {top},
e.g. 'speaker={parent}'; or a regex with named groups searched in the file stem (in the relative
path when it contains '/'), e.g. '(?P<speaker>\\d+)-(?P<chapter>\\d+)-\\d+'. Repeatable.
Exits 1 only when nothing usable was found.
"""

from __future__ import annotations

import argparse
import sys

from speechssl.data.prepare_defaults import DEFAULT_EXTENSIONS, DEFAULT_SILENCE_PEAK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("folder", metavar="DIR", help="folder to scan recursively")
    parser.add_argument("--out", required=True, help="manifest to write, e.g. data/train.jsonl")
    parser.add_argument(
        "--label-from-path",
        action="append",
        default=[],
        metavar="PATTERN",
        help="derive label fields from each path (repeatable; see above)",
    )
    parser.add_argument("--min-seconds", type=float, default=0.0, help="drop shorter files (default 0)")
    parser.add_argument(
        "--extensions",
        default=",".join(DEFAULT_EXTENSIONS),
        help=f"comma-separated extensions (default {','.join(DEFAULT_EXTENSIONS)})",
    )
    parser.add_argument(
        "--check-audio",
        action="store_true",
        help="decode every file and drop non-finite (NaN/inf) or silent ones; the default reads headers only",
    )
    parser.add_argument(
        "--silence-peak",
        type=float,
        default=DEFAULT_SILENCE_PEAK,
        help=f"with --check-audio, a file whose absolute peak is below this is silent (default {DEFAULT_SILENCE_PEAK:g})",
    )
    parser.add_argument("--report", default=None, help="also write the report as JSON here")


def run(args: argparse.Namespace) -> int:
    from speechssl.data.prepare import PrepareError, prepare_folder  # soundfile, torch: not for --help

    extensions = [e.strip() for e in args.extensions.split(",") if e.strip()]
    try:
        report = prepare_folder(
            args.folder,
            args.out,
            label_from_path=args.label_from_path,
            min_seconds=args.min_seconds,
            extensions=extensions,
            check_audio=args.check_audio,
            silence_peak=args.silence_peak,
        )
    except PrepareError as exc:
        print(f"speechssl prepare: error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    if args.report:
        from speechssl.utils import atomic_write_json

        atomic_write_json(args.report, report.to_dict())
    return 0
