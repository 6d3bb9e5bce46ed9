"""Time to quality: best-layer live-probe accuracy against pretraining CPU-minutes, for every family of a demo run.

Usage (after ``make demo-all``; reads only what the runs wrote, trains nothing)::

    .venv/bin/python tools/bench/run_all.py --only quality --from egs/synthetic/ssl/exp_all --out bench
    .venv/bin/python tools/bench/quality.py egs/synthetic/ssl/exp_all --out bench   # the same, alone

Input: every sub-folder of ``EXP_DIR`` with a ``metrics.jsonl`` holding probe records and a
``config.yaml`` that is not a random-init control (``train.control_of`` unset and ``max_steps`` > 0).
The live probe (:mod:`speechssl.train.probe`) writes ``{"split": "probe", "step": s,
"probe/<label>/<layer>": acc, "probe_seconds": ...}`` at step 0 (the random-init value: the
weights before any update, the same seed as the family's control) and every ``train.probe.every``
steps; ``{"split": "train", "step": s, "time": wall seconds since the start}`` every ``log_every`` steps.

Per probe point:

* **CPU-minutes** = threads x (wall seconds at that step - the probe's own seconds so far) / 60.
  Threads: ``train.num_threads`` of the run's ``config.yaml`` (the demo recipes say 1), else
  ``threads`` (``--quality-threads``); which one was used is recorded. The wall time at a probe step is
  the ``time`` of the train record of that step, linearly interpolated between train records
  (extrapolated at the last step with the last logged rate); validation passes stay in (they are not
  timed separately). A HuBERT iteration 2 folder (``<family>.encoders`` of run.sh names an earlier
  iteration's encoder) starts at the CPU-minutes of that earlier run's last probe; the k-means fits
  and label assignment between the iterations are not in metrics.jsonl and are not counted.
* **best-layer accuracy** per label = the highest accuracy over the probed layers at that point (the
  layer is recorded). Chance (majority class) is recorded from ``probe_chance/<label>``.

Output: ``OUT/quality.json`` (every curve point, the accuracy at fixed CPU-minute marks: the last probe
at or before the mark) and ``OUT/quality.png`` (one panel per label, one line per family, x log-scaled
from the first probe after step 0; step 0 drawn at the left edge).

On a loaded machine the wall time of a run includes waiting for the CPU: the CPU-minutes are an upper
bound of the work (the demo runs two families at a time on two cores, so an idle machine gives the
intended number).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MARKS = (1.0, 2.0, 4.0, 8.0)


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not JSON ({err})") from None
    return out


def _config(folder: Path) -> dict:
    from speechssl.config import load_yaml

    path = folder / "config.yaml"
    return load_yaml(path) if path.is_file() else {}


def _wall_at(steps: list[int], times: list[float], step: int) -> float:
    """Wall seconds at ``step`` from (step, time) train records; 0 at step 0."""
    if step <= 0 or not steps:
        return 0.0
    pts = [(0, 0.0), *zip(steps, times)]
    for (s0, t0), (s1, t1) in zip(pts, pts[1:]):
        if s0 <= step <= s1:
            return t0 + (t1 - t0) * (step - s0) / max(s1 - s0, 1)
    (s0, t0), (s1, t1) = pts[-2], pts[-1]
    rate = (t1 - t0) / max(s1 - s0, 1)
    return t1 + rate * (step - s1)


def run_curve(folder: Path, default_threads: int | None) -> dict | None:
    """The probe curve of one pretraining folder, or None if it is not one (control, no probe records)."""
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        return None
    cfg = _config(folder)
    train_cfg = cfg.get("train") or {}
    if train_cfg.get("control_of") or train_cfg.get("max_steps") == 0:
        return None
    records = _read_jsonl(metrics)
    probes = sorted((r for r in records if r.get("split") == "probe"), key=lambda r: int(r["step"]))
    if not probes:
        return None
    train = sorted((int(r["step"]), float(r["time"])) for r in records
                    if r.get("split") == "train" and isinstance(r.get("time"), (int, float)))
    steps, times = [s for s, _ in train], [t for _, t in train]
    threads, source = train_cfg.get("num_threads"), "config.yaml train.num_threads"
    if threads is None:
        threads, source = default_threads, "--quality-threads"
    if threads is None:
        raise ValueError(f"{folder / 'config.yaml'}: train.num_threads is not set; pass --quality-threads N "
                         "(the threads every pretraining process of the run used)")
    labels = sorted({k.split("/")[1] for r in probes for k in r if k.startswith("probe/") and k.count("/") == 2})
    points, probe_s = [], 0.0
    for r in probes:
        step = int(r["step"])
        wall = max(0.0, _wall_at(steps, times, step) - probe_s)
        probe_s += float(r.get("probe_seconds", 0.0))
        point = {"step": step, "wall_s": round(wall, 2), "cpu_minutes": round(threads * wall / 60.0, 4)}
        for label in labels:
            layers = {k.split("/")[2]: float(v) for k, v in r.items()
                      if k.startswith(f"probe/{label}/") and isinstance(v, (int, float))}
            if layers:
                best = max(layers, key=layers.get)
                point[label] = {"accuracy": round(layers[best], 4), "layer": best,
                                "chance": r.get(f"probe_chance/{label}")}
        points.append(point)
    return {"model": (cfg.get("model") or {}).get("name"), "threads": threads, "threads_from": source,
            "steps": steps[-1] if steps else 0, "labels": labels, "points": points}


def _predecessors(exp: Path) -> dict[str, str]:
    """``{folder: earlier folder}`` from run.sh's ``<family>.encoders`` files (HuBERT: iteration 1)."""
    out = {}
    for f in exp.glob("*.encoders"):
        for line in f.read_text().split():
            enc = Path(line)
            if enc.name == "encoder" and (exp / enc.parent.name).is_dir():
                out[f.stem] = enc.parent.name
    return out


def at_marks(points: list[dict], label: str, marks=MARKS) -> dict[str, float | None]:
    """Accuracy of the last probe at or before each CPU-minute mark (None past the run's end)."""
    out = {}
    last = points[-1]["cpu_minutes"] if points else 0.0
    for m in marks:
        done = [p for p in points if p["cpu_minutes"] <= m and label in p]
        out[f"{m:g}"] = done[-1][label]["accuracy"] if done and m <= last else None
    return out


def build(spec: dict) -> dict:
    """spec: ``exp_dir``, ``out`` (folder), optional ``threads``. Writes quality.json + quality.png; returns the dict."""
    exp, out = Path(spec["exp_dir"]), Path(spec["out"])
    if not exp.is_dir():
        raise FileNotFoundError(f"{exp}: no such experiment folder (a demo run's --exp_dir, e.g. egs/synthetic/ssl/exp_all)")
    curves = {}
    for folder in sorted(p for p in exp.iterdir() if p.is_dir()):
        curve = run_curve(folder, spec.get("threads"))
        if curve is not None:
            curves[folder.name] = curve
    if not curves:
        raise ValueError(f"{exp}: no pretraining folder with probe records in metrics.jsonl (train.probe.labels set, "
                         "train.max_steps > 0)")
    for name, before in _predecessors(exp).items():
        if name in curves and before in curves:
            offset = curves[before]["points"][-1]["cpu_minutes"]
            curves[name]["after"] = before
            curves[name]["cpu_minutes_offset"] = offset
            for p in curves[name]["points"]:
                p["cpu_minutes"] = round(p["cpu_minutes"] + offset, 4)
    labels = sorted({lab for c in curves.values() for lab in c["labels"]})
    for c in curves.values():
        c["at_cpu_minutes"] = {lab: at_marks(c["points"], lab) for lab in c["labels"]}
        c["random_init"] = {lab: c["points"][0][lab]["accuracy"] for lab in c["labels"] if lab in c["points"][0]}
        c["final"] = {lab: c["points"][-1][lab]["accuracy"] for lab in c["labels"] if lab in c["points"][-1]}
    result = {"exp_dir": str(exp.resolve()), "labels": labels, "marks_cpu_minutes": list(MARKS),
              "cpu_minutes": "threads x (wall - probe time) / 60, from metrics.jsonl", "families": curves}
    out.mkdir(parents=True, exist_ok=True)
    from speechssl.utils import atomic_write_json

    atomic_write_json(out / "quality.json", result)
    plot(result, out / "quality.png")
    result["png"] = str(out / "quality.png")
    result["json"] = str(out / "quality.json")
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    labels = result["labels"]
    fig, axes = plt.subplots(1, len(labels), figsize=(6 * len(labels), 4.5), squeeze=False)
    positive = [p["cpu_minutes"] for c in result["families"].values() for p in c["points"] if p["cpu_minutes"] > 0]
    left = min(positive) / 2 if positive else 0.1
    for ax, label in zip(axes[0], labels):
        ax.set_prop_cycle(color=list(plt.cm.tab20.colors))  # 11+ families: distinct colours
        chance = None
        for name, c in result["families"].items():
            pts = [p for p in c["points"] if label in p]
            if not pts:
                continue
            xs = [max(p["cpu_minutes"], left) for p in pts]
            (line,) = ax.plot(xs, [p[label]["accuracy"] for p in pts], marker=".", label=name)
            ax.plot([xs[0]], [pts[0][label]["accuracy"]], marker="o", mfc="none", color=line.get_color())
            chance = chance if chance is not None else pts[0][label].get("chance")
        if chance is not None:
            ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")
        ax.set_xscale("log")
        # CPU-minute marks as plain numbers (the log axis' default minor labels overlap)
        ax.xaxis.set_major_locator(ticker.FixedLocator((0.125, 0.25, 0.5) + MARKS))
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("pretraining CPU-minutes (threads x wall, probe time excluded; log)")
        ax.set_ylabel(f"{label}: best-layer live-probe accuracy")
        ax.set_title(f"{label} (open circle: random init, step 0)")
        ax.grid(alpha=0.3)
    handles, names = axes[0][-1].get_legend_handles_labels()
    fig.tight_layout()
    # right of the panels, so that it covers no point ("tight" grows the canvas to hold it)
    fig.legend(handles, names, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exp_dir")
    p.add_argument("--out", default="bench")
    p.add_argument("--threads", type=int, default=None, help="threads when config.yaml has no train.num_threads")
    args = p.parse_args(argv)
    res = build({"exp_dir": args.exp_dir, "out": args.out, "threads": args.threads})
    for name, c in res["families"].items():
        print(name, {lab: (c["random_init"].get(lab), c["final"].get(lab)) for lab in c["labels"]},
              f"{c['points'][-1]['cpu_minutes']:.2f} CPU-min", file=sys.stderr)
    print(f"wrote {res['json']} and {res['png']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
