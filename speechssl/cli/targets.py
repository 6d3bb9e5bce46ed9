"""Offline discrete targets for HuBERT: fit k-means on a sample of frames, label every utterance.

Usage:
  speechssl targets kmeans --features mfcc --train data/train.jsonl --k 100 --sample-hours 1 --out exp/km_mfcc
  speechssl targets kmeans --features exp/hubert_it1/encoder --layer layer_6 --train data/train.jsonl --k 500 --out exp/km_it2
  speechssl targets assign --kmeans exp/km_mfcc --input data/train.jsonl --out exp/labels_it1
  torchrun --nproc_per_node 2 -m speechssl.cli.main targets assign --kmeans exp/km_mfcc --input data/train.jsonl --out L
  speechssl targets report exp/labels_it1 --input data/dev.jsonl --labels speaker

Labels carry their frame rate and the hash of the k-means (and so of the encoder and layer) they came
from; pass the label folder to pretraining as data.targets=[DIR]. Rerunning assign resumes.
"""

from __future__ import annotations

import argparse
import json

from speechssl.cli.manifest import subcommand


def _fields(text: str | None) -> list[str] | None:
    return None if text in (None, "auto") else [f for f in text.split(",") if f]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = subcommand(sub, "kmeans", "fit k-means on a bounded random sample of frames",
                   "Fit scikit-learn MiniBatchKMeans (fairseq's settings) on the frames of a random sample of "
                   "--sample-hours of the training manifest, from 39-dim MFCC or one layer of an encoder.",
                   ["speechssl targets kmeans --features mfcc --train data/train.jsonl --k 100 --out exp/km1",
                    "speechssl targets kmeans --features exp/it1/encoder --layer layer_6 --train data/train.jsonl "
                    "--k 500 --out exp/km2"])
    p.add_argument("--features", required=True, help="mfcc (39-dim, 100 Hz) or an encoder folder / baseline name")
    p.add_argument("--layer", default=None, help="layer of the encoder (default: features for mfcc, else context)")
    p.add_argument("--train", required=True, help="manifest to sample frames from")
    p.add_argument("--k", type=int, default=100, help="clusters (default %(default)s)")
    p.add_argument("--sample-hours", type=float, default=1.0, help="hours of audio sampled (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling and k-means seed (default %(default)s)")
    p.add_argument("--n-init", type=int, default=20, help="k-means++ initialisations tried (default %(default)s)")
    p.add_argument("--batch-seconds", type=float, default=60.0, help="padded seconds per encoder forward pass")
    p.add_argument("--device", default="cpu", help="where the encoder runs (cpu, cuda)")
    p.add_argument("--out", required=True, help="k-means folder to write (kmeans.json, centroids.npy)")

    p = subcommand(sub, "assign", "label every utterance of a manifest with its nearest clusters",
                   "Label every frame of every utterance with its nearest centroid; resumable (chunks), sharded "
                   "over torchrun ranks; writes index.json and a cluster report (JSON + PNG).",
                   ["speechssl targets assign --kmeans exp/km1 --input data/train.jsonl --out exp/labels1",
                    "speechssl targets assign --kmeans exp/km1 --input data/dev.jsonl --out exp/labels1"])
    p.add_argument("--kmeans", required=True, help="folder written by `speechssl targets kmeans`")
    p.add_argument("--input", required=True, help="manifest to label")
    p.add_argument("--out", required=True, help="label folder (one k-means per folder; several manifests may share it)")
    p.add_argument("--chunk-size", type=int, default=200, help="utterances per chunk file (default %(default)s)")
    p.add_argument("--batch-seconds", type=float, default=60.0, help="padded seconds per encoder forward pass")
    p.add_argument("--device", default="cpu", help="where the encoder runs (cpu, cuda)")
    p.add_argument("--report-labels", default="auto",
                   help="comma-separated manifest fields for cluster purity / PNMI (default: every label field)")

    p = subcommand(sub, "report", "cluster usage, entropy, purity and PNMI of a label folder",
                   "Write report-<manifest>.json and .png in the label folder: cluster usage histogram, entropy, "
                   "and purity / PNMI against manifest label fields.",
                   ["speechssl targets report exp/labels1 --input data/dev.jsonl --labels speaker,style"])
    p.add_argument("folder", help="label folder written by `speechssl targets assign`")
    p.add_argument("--input", required=True, help="a manifest labelled into the folder")
    p.add_argument("--labels", default="auto", help="comma-separated label fields (default: every label field)")


def run(args: argparse.Namespace) -> int:
    from speechssl.targets import assign_labels, cluster_report, fit_kmeans

    if args.action == "kmeans":
        meta = fit_kmeans(args.features, args.layer, args.train, args.out, k=args.k, sample_hours=args.sample_hours,
                          seed=args.seed, n_init=args.n_init, batch_seconds=args.batch_seconds, device=args.device)
        print(f"k-means {meta['hash']}: k={meta['k']} on {meta['sample']['frames']} frames "
              f"({meta['sample']['hours']:.2f} h) of {meta['features']['features']} {meta['features']['layer']} "
              f"-> {args.out}")
        return 0
    if args.action == "assign":
        summary = assign_labels(args.kmeans, args.input, args.out, chunk_size=args.chunk_size,
                                batch_seconds=args.batch_seconds, device=args.device,
                                report_labels=_fields(args.report_labels))
        print(f"labelled {summary.labelled} utterances ({summary.skipped_chunks} chunks already done) of "
              f"{summary.utterances} -> {args.out}" + (f"; report {summary.report}" if summary.report else ""))
        return 0
    path = cluster_report(args.folder, args.input, _fields(args.labels))
    report = json.loads(path.read_text())
    print(json.dumps({k: report[k] for k in ("used_clusters", "k", "entropy_bits", "perplexity", "labels")}, indent=2))
    return 0
