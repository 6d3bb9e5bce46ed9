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
from pathlib import Path


def _labels(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        field, sep, file = item.partition("=")
        if not sep or not field or not file:
            raise ValueError(f"--labels {item!r}: expected FIELD=FILE, e.g. text=train.wrd")
        out[field] = file
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser("import", help="fairseq TSV or Kaldi data folder -> JSONL manifest")
    p.add_argument("--from", dest="fmt", choices=["tsv", "kaldi"], required=True)
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
        help="tsv: line-aligned label file, e.g. text=train.wrd (repeatable)",
    )

    p = sub.add_parser("export", help="JSONL manifest -> fairseq TSV or Kaldi data folder")
    p.add_argument("--to", dest="fmt", choices=["tsv", "kaldi"], required=True)
    p.add_argument("manifest")
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
        help="tsv: also write a line-aligned label file, e.g. text=train.wrd (repeatable)",
    )
    p.add_argument("--speaker-field", default="speaker", help="kaldi: field for utt2spk (default speaker)")

    p = sub.add_parser("split", help="deterministic (optionally speaker-grouped) split into parts")
    p.add_argument("manifest")
    p.add_argument("--out-dir", required=True, help="writes <name>.jsonl per part")
    p.add_argument("--fractions", default="train=0.8,dev=0.1,test=0.1", help="name=share,... (sum 1)")
    p.add_argument("--group-by", default=None, help="label field whose values never straddle parts")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("merge", help="concatenate manifests (ids must stay unique)")
    p.add_argument("manifests", nargs="+")
    p.add_argument("--out", required=True)

    p = sub.add_parser("info", help="hours, counts, duration range and label distributions")
    p.add_argument("manifest")
    p.add_argument("--json", action="store_true", help="print JSON")


def _hours(records: list[dict]) -> str:
    from speechssl.data import total_hours

    return f"{len(records)} utterances, {total_hours(records):.3f} h"


def run(args: argparse.Namespace) -> int:
    from speechssl.data import read_manifest, write_manifest

    if args.action == "import":
        from speechssl.data.formats import read_kaldi_dir, read_tsv

        if args.fmt == "tsv":
            records = read_tsv(args.source, sample_rate=args.sample_rate, label_files=_labels(args.labels))
        else:
            if args.labels or args.sample_rate:
                raise ValueError(
                    "--labels/--sample-rate apply to --from tsv only (Kaldi labels come from "
                    "utt2spk, text and utt2* files)"
                )
            records = read_kaldi_dir(args.source)
        if not records:
            raise ValueError(f"{args.source}: no entries")
        write_manifest(records, args.out)
        print(f"wrote {args.out}: {_hours(records)}")
        return 0

    if args.action == "export":
        from speechssl.data.formats import write_kaldi_dir, write_tsv

        records = read_manifest(args.manifest)
        if args.fmt == "tsv":
            write_tsv(
                records,
                args.out,
                root=args.root,
                label_files=_labels(args.labels),
                manifest_dir=Path(args.manifest).parent,
            )
        else:
            write_kaldi_dir(records, args.out, speaker_field=args.speaker_field)
        print(f"wrote {args.out}: {_hours(records)}")
        return 0

    if args.action == "split":
        from speechssl.data import parse_fractions, split_records

        records = read_manifest(args.manifest)
        parts = split_records(
            records, parse_fractions(args.fractions), group_by=args.group_by, seed=args.seed
        )
        for name, part in parts.items():
            out = Path(args.out_dir) / f"{name}.jsonl"
            write_manifest(part, out)
            groups = (
                f", {len({str(r[args.group_by]) for r in part})} distinct {args.group_by}"
                if args.group_by
                else ""
            )
            print(f"{out}: {_hours(part)}{groups}")
        return 0

    if args.action == "merge":
        merged: list[dict] = []
        first_seen: dict[str, str] = {}
        for manifest in args.manifests:
            for rec in read_manifest(manifest):
                if rec["id"] in first_seen:
                    raise ValueError(f"id {rec['id']!r} is in both {first_seen[rec['id']]} and {manifest}")
                first_seen[rec["id"]] = manifest
                merged.append(rec)
        write_manifest(merged, args.out)
        print(f"wrote {args.out}: {_hours(merged)}")
        return 0

    from speechssl.data import manifest_summary

    summary = manifest_summary(read_manifest(args.manifest))
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    print(f"{args.manifest}: {summary['records']} utterances, {summary['hours']:.3f} h")
    print(
        f"  seconds: min {summary['seconds_min']}, mean {summary['seconds_mean']}, max {summary['seconds_max']}"
    )
    print(f"  sample rates: {', '.join(f'{k} Hz x{v}' for k, v in summary['sample_rates'].items())}")
    if summary["segments"]:
        print(f"  segments: {summary['segments']}")
    for field, entry in summary["labels"].items():
        line = f"  {field}: {entry['distinct']} distinct"
        if entry["missing"]:
            line += f", {entry['missing']} missing"
        if "top" in entry:
            line += ": " + ", ".join(f"{k} x{v}" for k, v in entry["top"].items())
            if entry["distinct"] > len(entry["top"]):
                line += ", ..."
        print(line)
    return 0
