"""Print a pretraining run's health summary and live-probe curve as tables.

Usage::

    speechssl inspect exp/apc_tiny

Reads exp/NAME/metrics.jsonl (and config.yaml): first and last values of the health numbers
(loss, gradient norms per block, codebook perplexity and usage, mask ratio, InfoNCE accuracies,
feature std and effective rank on the probe set), the warnings that hold at the last step, and
the probe accuracy of every label and layer at every probe point.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("exp", help="experiment folder written by `speechssl pretrain` (holds metrics.jsonl)")


def run(args: argparse.Namespace) -> int:
    from speechssl.train.diagnostics import run_report

    print(run_report(args.exp))
    return 0
