"""Train, evaluate, predict and compare SUPERB-style downstream tasks on frozen encoders.

  speechssl downstream train --encoder logmel --train tr.jsonl --valid dv.jsonl --test te.jsonl \\
      --label emotion --config recipes/downstream/emotion.yaml --exp exp/er [optim.lr=1e-3 ...]
  speechssl downstream train --features exp/feats ... (features from `speechssl extract`)
  speechssl downstream train ... --lrs 1e-4,1e-3,1e-2          (learning-rate sweep, pick by dev)
  speechssl downstream train --data all.jsonl --split-by speaker ...  (speaker-independent split)
  speechssl downstream kfold --encoder logmel --data all.jsonl --label emotion --group session --exp exp/er5
  speechssl downstream label-efficiency --encoders logmel,exp/apc/encoder --train tr.jsonl --test te.jsonl \\
      --label speaker --shots 1,2,4,8 --seeds 3 --out exp/le
  speechssl downstream predict --model exp/er --input DIR|manifest.jsonl|file.wav [--out preds.tsv]
  speechssl downstream summary speaker=exp/le_speaker style=exp/le_style --out exp/summary.md --png exp/summary.png
  speechssl downstream compare exp/a exp/b [--png cmp.png]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger("speechssl.downstream")


def _common(p: argparse.ArgumentParser, encoder_required: bool = False) -> None:
    p.add_argument("--encoder", help="encoder name (logmel, fbank, mfcc) or folder (released encoder, checkpoint)")
    p.add_argument("--features", help="folder written by `speechssl extract` (index.tsv); skips the encoder")
    p.add_argument("--label", help="manifest field to predict (overrides task.label of the config)")
    p.add_argument("--config", help="downstream YAML (recipes/downstream/*.yaml)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. optim.lr=1e-3")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("train", help="train a head, early-stop on dev, score test")
    _common(p)
    p.add_argument("--train", help="training manifest")
    p.add_argument("--valid", help="dev manifest (early stopping / model selection)")
    p.add_argument("--test", help="test manifest")
    p.add_argument("--data", help="one manifest to split into train/dev/test (with --split-by or stratified)")
    p.add_argument("--split-by", help="with --data: group field for a group-independent split (e.g. speaker)")
    p.add_argument("--fractions", default="train=0.8,dev=0.1,test=0.1", help="with --data: split fractions")
    p.add_argument("--dev-fraction", type=float, default=0.0,
                   help="without --valid: carve this stratified fraction of --train as dev")
    p.add_argument("--lrs", help="comma-separated learning rates: run a sweep and keep the best on dev")
    p.add_argument("--exp", required=True, help="experiment folder")
    p.add_argument("--restart", action="store_true",
                   help="with --lrs: train every learning rate again (default: a rerun reads back the ones finished)")

    p = sub.add_parser("kfold", help="k-fold cross-validation by a group field, mean ± std")
    _common(p)
    p.add_argument("--data", required=True, help="manifest with all utterances")
    p.add_argument("--group", required=True, help="group field; folds never share a value (e.g. session)")
    p.add_argument("--k", type=int, help="number of folds (default: one per group)")
    p.add_argument("--dev-fraction", type=float, default=0.1, help="dev share of each fold's training part")
    p.add_argument("--exp", required=True)
    p.add_argument("--restart", action="store_true",
                   help="train every fold again (default: a rerun reads back the folds already finished)")

    p = sub.add_parser("label-efficiency", help="n labelled utterances per class x seeds x encoders")
    p.add_argument("--encoders", required=True,
                   help="comma-separated encoders: a name (logmel), a folder (released encoder, checkpoint), or "
                        "NAME=PATH to name it, where PATH may also be a `speechssl extract` folder (index.tsv)")
    p.add_argument("--train", required=True, help="pool to draw the labelled utterances from")
    p.add_argument("--valid", help="dev manifest (default: carve --dev-per-class from the pool)")
    p.add_argument("--dev-per-class", type=int, default=0, help="without --valid: dev utterances per class taken "
                   "out of the pool (0: no dev, the last step is kept)")
    p.add_argument("--test", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--shots", default="1,2,4,8", help="utterances per class, comma-separated")
    p.add_argument("--seeds", default="3", help="a count (3 -> seeds 0,1,2) or a comma-separated list")
    p.add_argument("--metric", default="accuracy", choices=["accuracy", "ua", "macro_f1"])
    p.add_argument("--config")
    p.add_argument("--out", required=True)
    p.add_argument("--restart", action="store_true",
                   help="train every run again (default: a rerun reads back the runs in OUT/runs.jsonl)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*")

    p = sub.add_parser("predict", help="label new audio with a trained downstream model")
    p.add_argument("--model", required=True, help="experiment folder (model.json + model.safetensors)")
    p.add_argument("--input", required=True, help="audio folder, JSONL manifest or one audio file")
    p.add_argument("--out", help="output TSV (default MODEL/predictions.tsv)")
    p.add_argument("--encoder", help="override the encoder recorded in the model")
    p.add_argument("--features", help="precomputed features for the input (index.tsv)")

    p = sub.add_parser("summary", help="label-efficiency verdict: SSL vs log-Mel vs random-init controls")
    p.add_argument("tasks", nargs="+", metavar="TASK=DIR", help="label-efficiency output folders, e.g. speaker=exp/le_spk")
    p.add_argument("--out", required=True, help="markdown summary (a .json verdict is written beside it)")
    p.add_argument("--png", help="plot with one panel per task")
    p.add_argument("--reference", default="logmel", help="the baseline every SSL encoder must beat")
    p.add_argument("--note", default="", help="a line under the title (date, machine)")

    p = sub.add_parser("compare", help="markdown table (and PNG) of several experiments")
    p.add_argument("exps", nargs="+")
    p.add_argument("--png", help="bar chart PNG")
    p.add_argument("--out", help="also write the table to this file")


def _config(args: argparse.Namespace):
    from speechssl.config import apply_overrides, load_yaml
    from speechssl.downstream import downstream_config

    raw = load_yaml(args.config) if args.config else {}
    raw = apply_overrides(raw, list(args.overrides or []))
    label = getattr(args, "label", None)
    if label:
        raw.setdefault("task", {})["label"] = label
    cfg = downstream_config(raw, where=args.config or "config")
    if not cfg.task.label:
        raise ValueError("no label field: pass --label FIELD (or task.label in the config)")
    return cfg


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def _print_summary(results: dict) -> None:
    split = results.get("summary_split")
    s = results.get("summary") or {}
    parts = [f"{m} {v['mean']:.4f}" + (f" ± {v['std']:.4f}" if v.get("n", 1) > 1 else "") for m, v in s.items()]
    print(f"{split}: " + ", ".join(parts))


def run_train(args: argparse.Namespace) -> int:
    from speechssl.data import parse_fractions, read_manifest, split_records
    from speechssl.downstream import run_experiment, run_lr_sweep, source_from_config, stratified_split
    from speechssl.downstream.protocols import carve_dev

    cfg = _config(args)
    label = cfg.task.label
    if args.data:
        if args.train or args.valid or args.test:
            raise ValueError("give either --data (to split) or --train/--valid/--test, not both")
        records = read_manifest(args.data)
        fractions = parse_fractions(args.fractions)
        if args.split_by:
            splits = split_records(records, fractions, group_by=args.split_by, seed=cfg.train.seed)
        else:
            splits = stratified_split(records, label, fractions, seed=cfg.train.seed)
        protocol = {"name": "superb", "split": {"from": str(Path(args.data).resolve()), "group_by": args.split_by,
                                                "fractions": fractions, "seed": cfg.train.seed}}
    else:
        if not args.train:
            raise ValueError("--train (or --data) is required")
        splits = {"train": read_manifest(args.train)}
        splits["dev"] = read_manifest(args.valid) if args.valid else []
        splits["test"] = read_manifest(args.test) if args.test else []
        if not args.valid and args.dev_fraction > 0:
            splits["train"], splits["dev"] = carve_dev(splits["train"], label, args.dev_fraction, cfg.train.seed)
        protocol = {"name": "superb", "manifests": {k: str(Path(v).resolve()) for k, v in
                                                    (("train", args.train), ("dev", args.valid), ("test", args.test)) if v}}
    for name, recs in splits.items():
        logger.info("%s: %d utterances", name, len(recs))
    source = source_from_config(cfg, args.encoder, args.features)
    if args.lrs:
        results = run_lr_sweep(source, splits, label, cfg, _floats(args.lrs, "--lrs"), args.exp, not args.quiet,
                               resume=not args.restart)
        for run in results["sweep"]:
            print(f"lr {run['lr']:g}: dev {cfg.train.metric} {run['dev'][cfg.train.metric]:.4f}")
        print(f"selected lr {results['protocol']['selected_lr']:g}")
    else:
        results, _ = run_experiment(source, splits, label, cfg, args.exp, protocol, not args.quiet)
    _print_summary(results)
    print(f"wrote {Path(args.exp) / 'results.json'}")
    return 0


def run_kfold_cmd(args: argparse.Namespace) -> int:
    from speechssl.data import read_manifest
    from speechssl.downstream import run_kfold, source_from_config

    cfg = _config(args)
    source = source_from_config(cfg, args.encoder, args.features)
    results = run_kfold(source, read_manifest(args.data), cfg.task.label, args.group, cfg, args.exp, args.k,
                        args.dev_fraction, not args.quiet, resume=not args.restart)
    for fold in results["folds"]:
        print(f"fold {fold['fold']} (test {', '.join(map(str, fold['test_groups']))}): "
              f"accuracy {fold['test']['accuracy']:.4f}, UA {fold['test']['ua']:.4f}")
    _print_summary(results)
    print(f"wrote {Path(args.exp) / 'results.json'}")
    return 0


def run_label_efficiency_cmd(args: argparse.Namespace) -> int:
    from speechssl.data import read_manifest
    from speechssl.downstream import run_label_efficiency, sample_per_class, source_from_config

    cfg = _config(args)
    label = cfg.task.label
    pool = read_manifest(args.train)
    test = read_manifest(args.test)
    if args.valid:
        dev = read_manifest(args.valid)
    elif args.dev_per_class > 0:
        # a fixed dev set, the same for every encoder, shot count and seed (seed -1 never trains)
        dev = sample_per_class(pool, label, args.dev_per_class, seed=-1)
        taken = {r["id"] for r in dev}
        pool = [r for r in pool if r["id"] not in taken]
    else:
        dev = []
    shots = [int(x) for x in _floats(args.shots, "--shots")]
    seeds = ([int(x) for x in _floats(args.seeds, "--seeds")] if "," in args.seeds else list(range(int(args.seeds))))
    sources = {}
    for item in (e.strip() for e in args.encoders.split(",") if e.strip()):
        name, _, path = item.partition("=") if "=" in item else (item, "", item)
        if name in sources:
            raise ValueError(f"--encoders: {name!r} is given twice")
        is_features = (Path(path) / "index.tsv").is_file()
        sources[name] = source_from_config(cfg, None if is_features else path, path if is_features else None)
    results = run_label_efficiency(sources, pool, dev, test, label, cfg, shots, seeds, args.out, args.metric,
                                   not args.quiet, resume=not args.restart)
    print((Path(args.out) / "label_efficiency.md").read_text(), end="")
    print(f"wrote {Path(args.out) / 'results.json'}, {Path(args.out) / 'label_efficiency.png'}")
    return 0 if results else 1


def run(args: argparse.Namespace) -> int:
    if args.command == "train":
        return run_train(args)
    if args.command == "kfold":
        return run_kfold_cmd(args)
    if args.command == "label-efficiency":
        return run_label_efficiency_cmd(args)
    if args.command == "predict":
        from speechssl.downstream import predict

        out = predict(args.model, args.input, args.out, encoder=args.encoder, features=args.features)
        n = sum(1 for _ in open(out)) - 1
        print(f"wrote {n} predictions to {out}")
        return 0
    if args.command == "summary":
        from speechssl.downstream.summary import summarize_label_efficiency

        tasks = {}
        for item in args.tasks:
            task, sep, folder = item.partition("=")
            if not sep or not task or not folder:
                raise ValueError(f"expected TASK=DIR, got {item!r}")
            tasks[task] = folder
        summarize_label_efficiency(tasks, args.out, args.png, reference=args.reference, note=args.note)
        print(Path(args.out).read_text(), end="")
        return 0
    if args.command == "compare":
        from speechssl.downstream import compare
        from speechssl.downstream.inference import save_table

        table = compare(args.exps, png=args.png)
        print(table, end="")
        if args.out:
            save_table(table, args.out)
        if args.png:
            print(f"wrote {args.png}")
        return 0
    raise ValueError(f"unknown command {args.command!r}")

