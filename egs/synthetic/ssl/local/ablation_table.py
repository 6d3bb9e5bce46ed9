"""The augmentation ablation's table, JSON and plot (called by local/ablate_augment.sh).

Reads ``EXP/le_{speaker,style,word}/results.json`` (``speechssl downstream label-efficiency``) and
``EXP/variants.tsv`` (name, description, overrides per line) and writes OUT.md (mean ± std at n=SHOTS
and the change of each variant vs ``full``, in points, with a paired two-sided t-test over the
evaluation seeds when the results keep per-seed scores), OUT.json and OUT.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from speechssl.downstream.significance import format_p, paired_scores, paired_test

TASKS = ("speaker", "style", "word")
ALPHA = 0.05  # a change with p >= ALPHA is within the seeds' noise


def load(exp: Path, shots: int) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict]]:
    """({task: {encoder: {"mean", "std", ...}}} at ``shots`` labels per class, {task: results.json})."""
    out, results = {}, {}
    for task in TASKS:
        path = exp / f"le_{task}" / "results.json"
        if not path.is_file():
            sys.exit(f"ablation_table: {path} not found (run the label-efficiency stage first)")
        curves = json.loads(path.read_text()).get("curves")
        if not isinstance(curves, dict):
            sys.exit(f"ablation_table: {path} has no 'curves' (not a label-efficiency result)")
        out[task] = {enc: c[str(shots)] for enc, c in curves.items() if str(shots) in c}
        results[task] = json.loads(path.read_text())
    return out, results


def two_sided_p(result: dict[str, Any], name: str, shots: int) -> float | None:
    """Does variant ``name`` score differently from ``full``? The paired t-test over the evaluation
    seeds, two-sided (an ablation can move either way); None without per-seed scores."""
    pairs = paired_scores(result, name, "full", shots)
    if isinstance(pairs, str):
        return None
    return paired_test(*pairs, against="full", two_sided=True).p_value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--exp_dir", required=True, type=Path)
    ap.add_argument("--variants", required=True, type=Path)
    ap.add_argument("--shots", type=int, default=2)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--out", required=True, help="path without extension: OUT.md, OUT.json, OUT.png")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)

    rows = []
    for line in args.variants.read_text().splitlines():
        if line.strip():
            name, desc, overrides = (line.split("\t") + ["", ""])[:3]
            rows.append({"name": name, "description": desc, "overrides": overrides.split()})
    scores, results = load(args.exp_dir, args.shots)
    ref = {t: scores[t].get("full") for t in TASKS}
    for r in rows:
        r["scores"] = {t: scores[t].get(r["name"]) for t in TASKS}
        r["vs_full"] = {t: (None if ref[t] is None or r["scores"][t] is None
                            else r["scores"][t]["mean"] - ref[t]["mean"]) for t in TASKS}
        r["vs_full_p"] = {t: (None if r["name"] == "full" or r["vs_full"][t] is None
                              else two_sided_p(results[t], r["name"], args.shots)) for t in TASKS}
    baselines = {enc: {t: scores[t].get(enc) for t in TASKS} for enc in ("logmel", "simclr_random")}

    def cell(s: dict | None, delta: float | None = None, p: float | None = None) -> str:
        if s is None:
            return "—"
        text = f"{s['mean']:.3f} ± {s['std']:.3f}"
        if delta is None or not rows or abs(delta) < 1e-12:
            return text
        if p is None:
            return f"{text} ({100 * delta:+.1f})"
        return f"{text} ({100 * delta:+.1f}, {format_p(p)})" if p < ALPHA else f"{text} ({100 * delta:+.1f}, noise)"

    lines = [f"# SimCLR augmentation ablation (n={args.shots} labelled utterances per class)", ""]
    if args.note:
        lines += [args.note, ""]
    tested = any(p is not None for r in rows for p in r["vs_full_p"].values())
    lines += ["Accuracy (mean ± std over evaluation seeds) and, in brackets, the change vs the full recipe "
              "in points" + (f" with its p-value (paired two-sided t-test over the evaluation seeds: every "
                             f"variant is scored on the same labelled subsets; 'noise': p ≥ {ALPHA})"
                             if tested else "")
              + "; every variant pretrained with the same steps, seed and data "
              "(`egs/synthetic/ssl/local/ablate_augment.sh`).", "",
              "| variant | " + " | ".join(TASKS) + " |", "|---|" + "---|" * len(TASKS)]
    for r in rows:
        lines.append(f"| {r['name']}: {r['description']} | "
                     + " | ".join(cell(r["scores"][t], r["vs_full"][t], r["vs_full_p"][t]) for t in TASKS) + " |")
    for enc, label in (("simclr_random", "random-init control"), ("logmel", "log-Mel")):
        lines.append(f"| {label} | " + " | ".join(cell(baselines[enc][t]) for t in TASKS) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"shots": args.shots, "steps": args.steps, "note": args.note,
                                                     "variants": rows, "baselines": baselines}, indent=2) + "\n")

    import matplotlib.pyplot as plt
    import numpy as np

    names = [r["name"] for r in rows] + ["control", "logmel"]
    fig, axes = plt.subplots(1, len(TASKS), figsize=(4.2 * len(TASKS), 0.45 * len(names) + 1.5), sharey=True)
    for ax, task in zip(axes, TASKS):
        cells = [r["scores"][task] for r in rows] + [baselines["simclr_random"][task], baselines["logmel"][task]]
        mean = np.array([c["mean"] if c else np.nan for c in cells])
        std = np.array([c["std"] if c else 0.0 for c in cells])
        colours = ["tab:blue"] + ["tab:orange"] * (len(rows) - 1) + ["tab:gray", "tab:gray"]
        ax.barh(np.arange(len(names)), mean, xerr=std, color=colours[: len(names)], alpha=0.85)
        if ref[task]:
            ax.axvline(ref[task]["mean"], color="tab:blue", lw=0.8, ls="--")
        ax.set_title(f"{task} (n={args.shots})")
        ax.set_xlabel("accuracy")
    axes[0].set_yticks(np.arange(len(names)), names)
    axes[0].invert_yaxis()
    fig.suptitle(f"SimCLR ablation, {args.steps} steps per variant")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
