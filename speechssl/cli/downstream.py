"""Train, evaluate, predict and compare SUPERB-style downstream tasks on frozen encoders.

  speechssl downstream train --encoder logmel --train tr.jsonl --valid dv.jsonl --test te.jsonl \\
      --label emotion --config recipes/downstream/emotion.yaml --exp exp/er [optim.lr=1e-3 ...]
  speechssl downstream train --features exp/feats ... (features from `speechssl extract`)
  speechssl downstream train ... --lrs 1e-4,1e-3,1e-2          (learning-rate sweep, pick by dev)
  speechssl downstream train --data all.jsonl --split-by speaker ...  (speaker-independent split)
  speechssl downstream kfold --encoder logmel --data all.jsonl --label emotion --group session --exp exp/er5
  speechssl downstream label-efficiency --encoders logmel,exp/apc/encoder --train tr.jsonl --test te.jsonl \\
      --label speaker --shots 1,2,4,8 --seeds 3 --out exp/le
  speechssl downstream finetune --encoder exp/apc/encoder --train tr.jsonl --dev dv.jsonl --test te.jsonl \\
      --label emotion --out exp/er_ft finetune.encoder_lr=1e-5 'finetune.freeze=[context.layers.0]'
  speechssl downstream predict --model exp/er --input DIR|manifest.jsonl|file.wav [--out preds.tsv]
  speechssl downstream summary speaker=exp/le_speaker style=exp/le_style --out exp/summary.md --png exp/summary.png
  speechssl downstream compare exp/a exp/b [--png cmp.png]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger("speechssl.downstream")


EXAMPLES = {
    "train": ["speechssl downstream train --encoder logmel --train tr.jsonl --valid dv.jsonl --test te.jsonl "
              "--label emotion --exp exp/er",
              "speechssl downstream train --features exp/feats --data all.jsonl --split-by speaker --label emotion "
              "--exp exp/er_si optim.lr=1e-3",
              "speechssl downstream train --encoder exp/apc/encoder --train tr.jsonl --dev-fraction 0.1 "
              "--label emotion --lrs 1e-4,1e-3,1e-2 --exp exp/er_sweep"],
    "kfold": ["speechssl downstream kfold --encoder logmel --data all.jsonl --label emotion --group session "
              "--exp exp/er5"],
    "label-efficiency": ["speechssl downstream label-efficiency --encoders logmel,apc=exp/apc/encoder "
                         "--train pool.jsonl --test te.jsonl --label speaker --shots 1,2,4,8 --seeds 3 --out exp/le",
                         "speechssl downstream label-efficiency --encoders logmel=exp/feats/logmel,apc=exp/feats/apc "
                         "--train pool.jsonl --dev-per-class 2 --test te.jsonl --label style --out exp/le_style"],
    "finetune": ["speechssl downstream finetune --encoder exp/w2v2/encoder --train tr.jsonl --dev dv.jsonl "
                 "--test te.jsonl --label emotion --config recipes/downstream/emotion.yaml --out exp/er_ft "
                 "finetune.encoder_lr=1e-5 'finetune.freeze=[feature_encoder]'",
                 "speechssl downstream finetune --encoder exp/apc/encoder --train tr.jsonl --dev dv.jsonl --label speaker "
                 "--out exp/sid_ft 'finetune.freeze=[context.layers.0]' train.max_steps=500",
                 "speechssl extract --encoder exp/er_ft/encoder --input te.jsonl --out exp/feats_ft"],
    "predict": ["speechssl downstream predict --model exp/er --input data/new_wavs --out preds.tsv",
                "speechssl downstream predict --model exp/er --input te.jsonl --features exp/feats_te"],
    "summary": ["speechssl downstream summary speaker=exp/le_speaker style=exp/le_style --out exp/summary.md "
                "--png exp/summary.png"],
    "compare": ["speechssl downstream compare exp/er_logmel exp/er_apc --png exp/compare.png --out exp/compare.md"],
}


def subcommand(sub, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    """A sub-verb parser whose ``--help`` shows ``description`` and its :data:`EXAMPLES`."""
    return sub.add_parser(name, help=summary, description=description,
                          epilog="examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[name]),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", help="encoder name (logmel, fbank, mfcc) or folder (released encoder, checkpoint)")
    p.add_argument("--features", help="folder written by `speechssl extract` (index.tsv); skips the encoder")
    p.add_argument("--label", help="manifest field to predict (overrides task.label of the config)")
    p.add_argument("--config", help="downstream YAML (recipes/downstream/*.yaml)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (encoding, head training; log lines every 30 s remain)")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. optim.lr=1e-3")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = subcommand(sub, "train", "train a head, early-stop on dev, score test",
                   "Train a downstream head (featurizer + pooling + classifier) on frozen features, select "
                   "the best dev step, score test, and write model, results.json, plots and predictions to "
                   "--exp. With --lrs, one run per learning rate and the best on dev is kept.")
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
    p.add_argument("--augment", metavar="YAML",
                   help="augmentation YAML (recipes/augment/*.yaml): add waveform-augmented copies of the training "
                        "utterances (needs --encoder)")
    p.add_argument("--augment-copies", type=int, default=1, help="augmented copies per training utterance (default 1)")

    p = subcommand(sub, "kfold", "k-fold cross-validation by a group field, mean ± std",
                   "Cross-validate by a group field: fold i tests on its groups' utterances, carves a "
                   "stratified dev set from the other folds and trains on the rest. Reports mean ± std over "
                   "folds; a rerun reads back the folds already finished.")
    _common(p)
    p.add_argument("--data", required=True, help="manifest with all utterances")
    p.add_argument("--group", required=True, help="group field; folds never share a value (e.g. session)")
    p.add_argument("--k", type=int, help="number of folds (default: one per group)")
    p.add_argument("--dev-fraction", type=float, default=0.1, help="dev share of each fold's training part")
    p.add_argument("--exp", required=True, help="experiment folder (one fold_<i> folder per fold)")
    p.add_argument("--restart", action="store_true",
                   help="train every fold again (default: a rerun reads back the folds already finished)")

    p = subcommand(sub, "label-efficiency", "n labelled utterances per class x seeds x encoders",
                   "For every encoder, every n in --shots and every seed: train on n utterances per class of "
                   "the pool, select on dev, score the same test set. Writes results.json, "
                   "label_efficiency.png/.md and runs.jsonl (a rerun trains only the runs not recorded there).")
    p.add_argument("--encoders", required=True,
                   help="comma-separated encoders: a name (logmel), a folder (released encoder, checkpoint), or "
                        "NAME=PATH to name it, where PATH may also be a `speechssl extract` folder (index.tsv)")
    p.add_argument("--train", required=True, help="pool to draw the labelled utterances from")
    p.add_argument("--valid", help="dev manifest (default: carve --dev-per-class from the pool)")
    p.add_argument("--dev-per-class", type=int, default=0, help="without --valid: dev utterances per class taken "
                   "out of the pool (0: no dev, the last step is kept)")
    p.add_argument("--test", required=True, help="test manifest, the same for every run")
    p.add_argument("--label", required=True, help="manifest field to predict")
    p.add_argument("--shots", default="1,2,4,8", help="utterances per class, comma-separated")
    p.add_argument("--seeds", default="3", help="a count (3 -> seeds 0,1,2) or a comma-separated list")
    p.add_argument("--metric", default="accuracy", choices=["accuracy", "ua", "macro_f1"],
                   help="test metric of the curves and table")
    p.add_argument("--config", help="downstream YAML (recipes/downstream/*.yaml)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--restart", action="store_true",
                   help="train every run again (default: a rerun reads back the runs in OUT/runs.jsonl)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (encoding, head training; log lines every 30 s remain)")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. train.max_steps=100")

    p = subcommand(sub, "finetune", "fine-tune the encoder with a head on labelled audio",
                   "Train the encoder and a downstream head (featurizer + head of the config) end to end on "
                   "audio batches: AdamW with the head at optim.lr and the encoder at finetune.encoder_lr (0: "
                   "frozen), encoder parameters named by finetune.freeze prefixes kept frozen (a prefix that "
                   "matches nothing is an error listing the encoder's prefixes). Selects the best dev step, "
                   "scores test, and writes to --out what `downstream train` writes plus OUT/encoder, the "
                   "fine-tuned encoder as a released encoder folder (for load_encoder, `speechssl extract` "
                   "and `downstream predict --model OUT`). A checkpoint (OUT/checkpoints) is written at every "
                   "evaluation, at the end and on SIGTERM/Ctrl-C: rerun the same command to resume (bit-exactly; "
                   "other settings or inputs are refused, listed); a finished run is reported, not trained again.")
    p.add_argument("--encoder", required=True, help="trained encoder: released folder, experiment folder, checkpoint "
                   "or torchaudio / Hugging Face folder")
    p.add_argument("--train", required=True, help="training manifest")
    p.add_argument("--dev", "--valid", dest="valid", help="dev manifest (model selection; none: the last step is kept)")
    p.add_argument("--test", help="test manifest")
    p.add_argument("--label", help="manifest field to predict (overrides task.label of the config)")
    p.add_argument("--config", help="downstream YAML (recipes/downstream/*.yaml); its finetune section applies")
    p.add_argument("--out", "--exp", dest="out", required=True, help="output folder (the encoder goes to OUT/encoder)")
    p.add_argument("--restart", action="store_true",
                   help="start over from the pretrained encoder, deleting OUT's checkpoints and results (default: a "
                        "rerun resumes from OUT/checkpoints, or reports a finished run)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (encoding, fine-tuning; log lines every 30 s remain)")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. finetune.encoder_lr=1e-5")

    p = subcommand(sub, "predict", "label new audio with a trained downstream model",
                   "Label audio with a model written by `downstream train` (or kfold/label-efficiency folds): "
                   "features are computed with the encoder recorded in the model, the same layers, and "
                   "written as TSV: id, prediction, confidence [, reference when the manifest has the label]. "
                   "Inputs that give no features (unreadable, empty, too short) are skipped with a warning and "
                   "listed in OUT_STEM.errors.tsv (id, path, reason).")
    p.add_argument("--model", required=True, help="experiment folder (model.json + model.safetensors)")
    p.add_argument("--input", required=True, help="audio folder, JSONL manifest or one audio file")
    p.add_argument("--out", help="output TSV (default MODEL/predictions.tsv)")
    p.add_argument("--encoder", help="override the encoder recorded in the model")
    p.add_argument("--features", help="precomputed features for the input (index.tsv)")

    p = subcommand(sub, "summary", "label-efficiency verdict: SSL vs log-Mel vs random-init controls",
                   "Summarise label-efficiency folders of several tasks: one table (encoder x task x labels "
                   "per class), a verdict at the smallest label budget (each SSL encoder vs the reference "
                   "and vs its random-init control, by the roles recorded in results.json, each margin with "
                   "the p-value of a paired one-sided t-test over the seeds) and a plot.")
    p.add_argument("tasks", nargs="+", metavar="TASK=DIR", help="label-efficiency output folders, e.g. speaker=exp/le_spk")
    p.add_argument("--out", required=True, help="markdown summary (a .json verdict is written beside it)")
    p.add_argument("--png", help="plot with one panel per task")
    p.add_argument("--reference", default="logmel", help="the baseline every SSL encoder must beat")
    p.add_argument("--note", default="", help="a line under the title (date, machine)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="significance level: a winner counts as significant only if every margin (vs the "
                        "reference, vs its control, on every task) passes a paired one-sided t-test over the "
                        "seeds at this level; a positive margin with p >= alpha is reported as within noise "
                        "(default 0.05)")

    p = subcommand(sub, "compare", "markdown table (and PNG) of several experiments",
                   "Tabulate the results.json of several experiment folders (encoder, layers, test metrics) "
                   "as markdown, optionally with a bar chart.")
    p.add_argument("exps", nargs="+", help="experiment folders (or results.json files)")
    p.add_argument("--png", help="bar chart PNG")
    p.add_argument("--out", help="also write the table to this file")


def _config(args: argparse.Namespace):
    from speechssl.downstream import load_downstream_config

    return load_downstream_config(args.config, args.overrides or [], args.label)


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
    from speechssl.data import parse_fractions
    from speechssl.downstream import superb

    cfg = _config(args)
    lrs = _floats(args.lrs, "--lrs") if args.lrs else None
    augment = None
    if args.augment:
        from speechssl.cli.augment import load_augment_yaml

        augment = load_augment_yaml(args.augment)
    results = superb(cfg, args.exp, encoder=args.encoder, features=args.features, data=args.data, train=args.train,
                     valid=args.valid, test=args.test, split_by=args.split_by,
                     fractions=parse_fractions(args.fractions), dev_fraction=args.dev_fraction, lrs=lrs,
                     progress=not args.quiet, resume=not args.restart, augment=augment,
                     augment_copies=args.augment_copies)
    for run in results.get("sweep") or []:
        print(f"lr {run['lr']:g}: dev {cfg.train.metric} {run['dev'][cfg.train.metric]:.4f}")
    if lrs:
        print(f"selected lr {results['protocol']['selected_lr']:g}")
    _print_summary(results)
    print(f"wrote {Path(args.exp) / 'results.json'}")
    return 0


def run_kfold_cmd(args: argparse.Namespace) -> int:
    from speechssl.downstream import kfold

    cfg = _config(args)
    results = kfold(cfg, args.data, args.group, args.exp, encoder=args.encoder, features=args.features, k=args.k,
                    dev_fraction=args.dev_fraction, progress=not args.quiet, resume=not args.restart)
    for fold in results["folds"]:
        print(f"fold {fold['fold']} (test {', '.join(map(str, fold['test_groups']))}): "
              f"accuracy {fold['test']['accuracy']:.4f}, UA {fold['test']['ua']:.4f}")
    _print_summary(results)
    print(f"wrote {Path(args.exp) / 'results.json'}")
    return 0


def run_label_efficiency_cmd(args: argparse.Namespace) -> int:
    from speechssl.downstream import label_efficiency
    from speechssl.downstream.protocols import parse_encoder_list

    cfg = _config(args)
    shots = [int(x) for x in _floats(args.shots, "--shots")]
    seeds = ([int(x) for x in _floats(args.seeds, "--seeds")] if "," in args.seeds else list(range(int(args.seeds))))
    results = label_efficiency(cfg, parse_encoder_list(args.encoders), args.train, args.test, args.out,
                               valid=args.valid, dev_per_class=args.dev_per_class, shots=shots, seeds=seeds,
                               metric=args.metric, progress=not args.quiet, resume=not args.restart)
    print((Path(args.out) / "label_efficiency.md").read_text(), end="")
    print(f"wrote {Path(args.out) / 'results.json'}, {Path(args.out) / 'label_efficiency.png'}")
    return 0 if results else 1


def run_finetune_cmd(args: argparse.Namespace) -> int:
    from speechssl.data import read_manifest
    from speechssl.downstream.finetune import ENCODER_FOLDER, FinetuneInterrupted, finetune

    cfg = _config(args)
    try:
        results = finetune(cfg, args.encoder, read_manifest(args.train), args.out,
                           dev=read_manifest(args.valid) if args.valid else None,
                           test=read_manifest(args.test) if args.test else None, progress=not args.quiet,
                           restart=args.restart)
    except FinetuneInterrupted as exc:
        logger.warning("%s", exc)
        return 128 + exc.signal
    print(f"best step {results['best_step']} of {results['steps_run']}")
    if results.get("summary"):
        _print_summary(results)
    # A finished run read back wrote nothing new: name the outputs, not an action.
    print(f"results: {Path(args.out) / 'results.json'}; fine-tuned encoder: {Path(args.out) / ENCODER_FOLDER}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.command == "train":
        return run_train(args)
    if args.command == "finetune":
        return run_finetune_cmd(args)
    if args.command == "kfold":
        return run_kfold_cmd(args)
    if args.command == "label-efficiency":
        return run_label_efficiency_cmd(args)
    if args.command == "predict":
        from speechssl.downstream import predict
        from speechssl.downstream.inference import predict_errors_path

        out = predict(args.model, args.input, args.out, encoder=args.encoder, features=args.features)
        with open(out, encoding="utf-8") as f:
            n = sum(1 for _ in f) - 1  # rows under the header
        errors = predict_errors_path(out)
        failed = 0
        if errors.is_file():
            with open(errors, encoding="utf-8") as f:
                failed = sum(1 for _ in f) - 1
        def count(k: int, noun: str) -> str:
            return f"{k} {noun}" + ("" if k == 1 else "s")

        print(f"wrote {count(n, 'prediction')} to {out}"
              + (f"; {count(failed, 'input')} skipped, listed in {errors}" if failed else ""))
        return 0
    if args.command == "summary":
        from speechssl.downstream.summary import summarize_label_efficiency

        tasks = {}
        for item in args.tasks:
            task, sep, folder = item.partition("=")
            if not sep or not task or not folder:
                raise ValueError(f"expected TASK=DIR, got {item!r}")
            tasks[task] = folder
        summarize_label_efficiency(tasks, args.out, args.png, reference=args.reference, note=args.note,
                                   alpha=args.alpha)
        print(Path(args.out).read_text(), end="")
        return 0
    if args.command == "compare":
        from speechssl.downstream import compare

        print(compare(args.exps, png=args.png, out=args.out), end="")
        written = [str(f) for f in (args.out, args.png) if f]
        if written:
            print(f"wrote {', '.join(written)}")
        return 0
    raise ValueError(f"unknown command {args.command!r}")

