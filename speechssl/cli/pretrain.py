"""Pretrain an SSL model from a YAML recipe; rerunning the same command resumes.

Usage::

    speechssl pretrain --config recipes/pretrain/apc.yaml --train data/train.jsonl \\
        --valid data/dev.jsonl --exp exp/apc [--init-from CKPT_OR_ENCODER] [optim.lr=1e-3 ...]
    torchrun --nproc_per_node 2 -m speechssl pretrain ...     # DistributedDataParallel

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
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. optim.lr=1e-3")


def run(args: argparse.Namespace) -> int:
    from speechssl.train.config import load_pretrain_config
    from speechssl.train.trainer import TrainingError, pretrain

    cfg = load_pretrain_config(args.config, args.overrides)
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
