"""Prepare manifests for a known corpus from its local copy (nothing is downloaded).

  speechssl corpus librispeech /data/LibriSpeech --out data/librispeech [--subsets train-clean-100 dev-clean]
  speechssl corpus iemocap /data/IEMOCAP_full_release --out data/iemocap
  speechssl corpus voxceleb1 /data/voxceleb1 --out data/voxceleb1
  speechssl corpus generic /data/my_clips --labels labels.csv --out data/mine
"""

from __future__ import annotations

import argparse

from speechssl.corpora import CORPORA


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("corpus", choices=list(CORPORA), help="which corpus layout to read")
    parser.add_argument("corpus_dir", help="the corpus's local folder")
    parser.add_argument("--out", required=True, help="output folder for the manifests")
    parser.add_argument("--min-seconds", type=float, default=0.0, help="drop shorter files (reported)")
    parser.add_argument("--subsets", nargs="*", help="librispeech: subset folders to read (default all)")
    parser.add_argument("--labels", dest="labels_file", metavar="FILE", help="generic: CSV/TSV with a path or id column and label columns")
    parser.add_argument("--split-file", help="voxceleb1: iden_split.txt (default CORPUS/iden_split.txt)")


def run(args: argparse.Namespace) -> int:
    from speechssl.corpora import prepare_corpus

    written = prepare_corpus(args.corpus, args.corpus_dir, args.out, min_seconds=args.min_seconds,
                             subsets=args.subsets, labels_file=args.labels_file, split_file=args.split_file)
    for name, path in written.items():
        print(f"wrote {name}: {path}")
    return 0
