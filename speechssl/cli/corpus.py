"""Prepare manifests for a known corpus from its local copy (nothing is downloaded).

  speechssl corpus librispeech /data/LibriSpeech --out data/librispeech [--subsets train-clean-100 dev-clean]
  speechssl corpus iemocap /data/IEMOCAP_full_release --out data/iemocap
  speechssl corpus voxceleb1 /data/voxceleb1 --out data/voxceleb1
  speechssl corpus generic /data/my_clips --labels labels.csv --out data/mine
"""

from __future__ import annotations

import argparse

CORPORA = ("librispeech", "iemocap", "voxceleb1", "generic")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("corpus", choices=CORPORA, help="which corpus layout to read")
    parser.add_argument("corpus_dir", help="the corpus's local folder")
    parser.add_argument("--out", required=True, help="output folder for the manifests")
    parser.add_argument("--min-seconds", type=float, default=0.0, help="drop shorter files (reported)")
    parser.add_argument("--subsets", nargs="*", help="librispeech: subset folders to read (default all)")
    parser.add_argument("--labels", help="generic: CSV/TSV with a path or id column and label columns")
    parser.add_argument("--split-file", help="voxceleb1: iden_split.txt (default CORPUS/iden_split.txt)")


def run(args: argparse.Namespace) -> int:
    if args.corpus == "librispeech":
        from speechssl.corpora.librispeech import prepare_librispeech

        written = prepare_librispeech(args.corpus_dir, args.out, subsets=args.subsets, min_seconds=args.min_seconds)
    elif args.corpus == "iemocap":
        from speechssl.corpora.iemocap import prepare_iemocap

        written = prepare_iemocap(args.corpus_dir, args.out, min_seconds=args.min_seconds)
    elif args.corpus == "voxceleb1":
        from speechssl.corpora.voxceleb1 import prepare_voxceleb1

        written = prepare_voxceleb1(args.corpus_dir, args.out, split_file=args.split_file, min_seconds=args.min_seconds)
    else:
        if not args.labels:
            raise ValueError("generic corpus needs --labels FILE (CSV/TSV with a path or id column)")
        from speechssl.corpora.generic import prepare_generic

        written = prepare_generic(args.corpus_dir, args.labels, args.out, min_seconds=args.min_seconds)
    for name, path in written.items():
        print(f"wrote {name}: {path}")
    return 0
