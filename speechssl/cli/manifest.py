"""Import, export, split and inspect JSONL manifests.

Usage:
  speechssl manifest import --from tsv train.tsv --out data/train.jsonl [--sample-rate 16000] [--labels text=train.wrd]
  speechssl manifest import --from kaldi data/train --out data/train.jsonl
  speechssl manifest export --to tsv data/train.jsonl --out fairseq/train.tsv [--labels text=train.wrd]
  speechssl manifest export --to kaldi data/train.jsonl --out kaldi/train
  speechssl manifest split data/all.jsonl --out-dir data --fractions train=0.8,dev=0.1,test=0.1 [--group-by speaker] [--seed 0]
  speechssl manifest merge data/a.jsonl data/b.jsonl --out data/train.jsonl
  speechssl manifest info data/train.jsonl [--json]
"""

from __future__ import annotations

import argparse
import json


def _labels(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        field, sep, file = item.partition("=")
        if not sep or not field or not file:
            raise ValueError(f"--labels {item!r}: expected FIELD=FILE, e.g. text=train.wrd")
        out[field] = file
    return out


def subcommand(sub, name: str, summary: str, description: str, examples: list[str]) -> argparse.ArgumentParser:
    """A sub-verb parser whose ``--help`` shows ``description`` and an ``examples:`` block."""
    return sub.add_parser(
        name, help=summary, description=description,
        epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = subcommand(sub, "import", "fairseq TSV or Kaldi data folder -> JSONL manifest",
                   "Read a fairseq wav2vec TSV (first line the root folder, then relpath<TAB>num_samples) or a "
                   "Kaldi data folder (wav.scp, optional segments/utt2spk/text/utt2*) into a JSONL manifest.",
                   ["speechssl manifest import --from tsv train.tsv --out data/train.jsonl --labels text=train.wrd",
                    "speechssl manifest import --from kaldi data/train --out data/train.jsonl"])
    p.add_argument("--from", dest="fmt", choices=["tsv", "kaldi"], required=True, help="format of SOURCE")
    p.add_argument("source", help="the .tsv file, or the Kaldi data folder / wav.scp")
    p.add_argument("--out", required=True, help="manifest to write")
    p.add_argument(
        "--sample-rate",
        type=int,
        default=None,
        help="tsv: rate of every file (skips reading headers); default read each header",
    )
    p.add_argument(
        "--labels",
        action="append",
        default=[],
        metavar="FIELD=FILE",
        help="tsv: line-aligned label file, e.g. text=train.wrd (a bare file name: next to the TSV; repeatable)",
    )

    p = subcommand(sub, "export", "JSONL manifest -> fairseq TSV or Kaldi data folder",
                   "Write a manifest as a fairseq wav2vec TSV (+ line-aligned label files) or a Kaldi data "
                   "folder (wav.scp, utt2spk, spk2utt, segments when records are segments).",
                   ["speechssl manifest export --to tsv data/train.jsonl --out fairseq/train.tsv --labels text=train.wrd",
                    "speechssl manifest export --to kaldi data/train.jsonl --out kaldi/train"])
    p.add_argument("--to", dest="fmt", choices=["tsv", "kaldi"], required=True, help="format to write")
    p.add_argument("manifest", help="JSONL manifest to export")
    p.add_argument("--out", required=True, help="the .tsv file, or the Kaldi data folder")
    p.add_argument(
        "--root",
        default=None,
        help="tsv: root line, as fairseq's wav2vec_manifest.py ROOT (default: the manifest's "
        "folder if it holds every file, else their common folder)",
    )
    p.add_argument(
        "--labels",
        action="append",
        default=[],
        metavar="FIELD=FILE",
        help="tsv: also write a line-aligned label file, e.g. text=train.wrd (a bare file name: next to the TSV; repeatable)",
    )
    p.add_argument("--speaker-field", default="speaker", help="kaldi: field for utt2spk (default speaker)")

    p = subcommand(sub, "split", "deterministic (optionally speaker-grouped) split into parts",
                   "Split a manifest into parts by share of audio (seconds). The same records, fractions and "
                   "seed give the same split whatever the input order; with --group-by no value of that "
                   "field (e.g. a speaker) is in two parts.",
                   ["speechssl manifest split data/all.jsonl --out-dir data --fractions train=0.8,dev=0.1,test=0.1",
                    "speechssl manifest split data/all.jsonl --out-dir data --group-by speaker --seed 1"])
    p.add_argument("manifest", help="JSONL manifest to split")
    p.add_argument("--out-dir", required=True, help="writes <name>.jsonl per part")
    p.add_argument("--fractions", default="train=0.8,dev=0.1,test=0.1", help="name=share,... (sum 1)")
    p.add_argument("--group-by", default=None, help="label field whose values never straddle parts")
    p.add_argument("--seed", type=int, default=0, help="changes which utterances (or groups) go where")

    p = subcommand(sub, "merge", "concatenate manifests (ids must stay unique)",
                   "Concatenate manifests in the order given into one; an id found in two of them is an "
                   "error naming both files, and nothing is written then.",
                   ["speechssl manifest merge data/a.jsonl data/b.jsonl --out data/train.jsonl"])
    p.add_argument("manifests", nargs="+", help="manifests to concatenate, in order")
    p.add_argument("--out", required=True, help="merged manifest to write")

    p = subcommand(sub, "info", "hours, counts, duration range and label distributions",
                   "Summarise a manifest: utterances, hours, shortest/mean/longest, sample rates, segments, "
                   "and for every label field how many distinct values (with counts when there are few).",
                   ["speechssl manifest info data/train.jsonl", "speechssl manifest info data/train.jsonl --json"])
    p.add_argument("manifest", help="JSONL manifest to summarise")
    p.add_argument("--json", action="store_true", help="print JSON")


def _hours(records: list[dict]) -> str:
    from speechssl.data import total_hours

    return f"{len(records)} utterances, {total_hours(records):.3f} h"


def run(args: argparse.Namespace) -> int:
    from speechssl.data import read_manifest

    if args.action == "import":
        from speechssl.data import import_manifest

        records = import_manifest(args.fmt, args.source, args.out, sample_rate=args.sample_rate,
                                  label_files=_labels(args.labels))
        print(f"wrote {args.out}: {_hours(records)}")
        return 0

    if args.action == "export":
        from speechssl.data import export_manifest

        records = export_manifest(args.fmt, args.manifest, args.out, root=args.root, label_files=_labels(args.labels),
                                  speaker_field=args.speaker_field)
        print(f"wrote {args.out}: {_hours(records)}")
        return 0

    if args.action == "split":
        from speechssl.data import parse_fractions, split_manifest

        parts = split_manifest(args.manifest, args.out_dir, parse_fractions(args.fractions), args.group_by, args.seed)
        for out, part in parts.values():
            groups = f", {len({str(r[args.group_by]) for r in part})} distinct {args.group_by}" if args.group_by else ""
            print(f"{out}: {_hours(part)}{groups}")
        return 0

    if args.action == "merge":
        from speechssl.data import merge_manifests

        merged = merge_manifests(args.manifests, args.out)
        print(f"wrote {args.out}: {_hours(merged)}")
        return 0

    from speechssl.data import format_summary, manifest_summary

    summary = manifest_summary(read_manifest(args.manifest))
    print(json.dumps(summary, indent=2, ensure_ascii=False) if args.json else format_summary(summary, args.manifest))
    return 0
