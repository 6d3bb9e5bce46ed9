"""Pretrain an SSL model from a YAML recipe; rerunning the same command resumes.

Usage::

    speechssl pretrain --config recipes/pretrain/apc.yaml --train data/train.jsonl \\
        --valid data/dev.jsonl --exp exp/apc [--init-from CKPT_OR_ENCODER] [optim.lr=1e-3 ...]
    torchrun --nproc_per_node 2 -m speechssl pretrain ...     # DistributedDataParallel
    speechssl pretrain --config C --train T --exp exp/apc --overfit-one-batch 200   # can it fit one batch?

Writes exp/<name>/{config.yaml, metrics.jsonl, tensorboard/, checkpoints/, loss_curve.png, encoder/}.
Exit status: 0 finished (or train.max_minutes reached), 128+signal when stopped by SIGTERM/SIGINT
(a checkpoint was written), 1 on errors.
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="recipe YAML (sections model/data/optim/train)")
    parser.add_argument("--train", required=True, help="training manifest (JSONL)")
    parser.add_argument("--valid", default=None, help="validation manifest (JSONL); omitted: no validation")
    parser.add_argument("--exp", required=True, help="experiment folder (created; resumed if it has checkpoints)")
    parser.add_argument("--init-from", default=None,
                        help="load model weights only from a checkpoint, an experiment folder or a released encoder")
    parser.add_argument("--overfit-one-batch", type=int, default=None, metavar="STEPS",
                        help="instead of pretraining: train STEPS steps on one batch at the recipe's peak lr and say "
                             "whether the loss falls to half (writes EXP/overfit_one_batch/overfit.{json,png}); "
                             "exit status 0 if it does, 3 if not")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. optim.lr=1e-3")


def run(args: argparse.Namespace) -> int:
    from speechssl.train.config import load_pretrain_config
    from speechssl.train.trainer import TrainingError, pretrain

    cfg = load_pretrain_config(args.config, args.overrides)
    if args.overfit_one_batch is not None:
        from speechssl.train.overfit import overfit_one_batch

        verdict = overfit_one_batch(cfg, args.train, args.exp, steps=args.overfit_one_batch)
        print(f"overfit one batch ({verdict['steps']} steps): {verdict['message']}")
        return 0 if verdict["fits"] is not False else 3
    try:
        result = pretrain(cfg, args.train, args.valid, args.exp, init_from=args.init_from)
    except TrainingError as exc:
        print(f"speechssl pretrain: error: {exc}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        print(f"{result.status} at step {result.step}; checkpoint {result.checkpoint}"
              + (f"; encoder {result.encoder_dir}" if result.encoder_dir else "")
              + (f"; valid loss {result.valid_loss:.4g}" if result.valid_loss is not None else ""))
    if result.status == "interrupted" and result.signal is not None:
        return 128 + int(result.signal)
    return 0
