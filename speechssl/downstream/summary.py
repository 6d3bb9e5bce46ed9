"""Summaries across label-efficiency runs: does pretraining pay off with few labels?

Reads the ``results.json`` written by ``speechssl downstream label-efficiency`` for several
tasks and writes one markdown table (encoder x task x labels-per-class, mean ± std over seeds),
a PNG with one panel per task, and a JSON verdict. Each encoder has a role, read from the
``results.json`` (``encoders.<name>.role``, which comes from the released encoder's ``config.json``
or, for features, from ``extract.json`` and the encoder they were extracted with):

* ``baseline``: ``logmel``, ``fbank``, ``mfcc`` (features without learning);
* ``control``: an encoder released untrained (``train.max_steps=0``) — an architecture with random
  initial weights (random recurrent or convolutional features often beat log-Mel on their own, so
  the gain of pretraining is measured over its own control too, as in the CPC paper). A control is
  paired with the SSL encoder it names (``control_of``), else with the SSL encoder of the same
  architecture (model config), else with ``<its name minus _random>``;
* ``ssl``: a pretrained encoder.

Results written before roles were recorded fall back to names: the baseline names above,
``<name>_random`` for controls, everything else SSL (:func:`encoder_kind`).

The verdict compares, at the smallest label budget, every SSL encoder with ``logmel`` and with
its control on every task, and says by how much it wins or loses (accuracy points) and whether the
margin is more than seed-to-seed noise: a paired one-sided t-test over the seeds
(:mod:`speechssl.downstream.significance`). ``winners`` beat both on the means everywhere;
``significant_winners`` are those whose every margin has p < ``alpha`` (requiring every test to pass
at ``alpha`` keeps the claim "better than both on every task" at level ``alpha``, an
intersection-union test); ``winners_not_significant`` names the other winners' weak margins.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from speechssl.downstream.significance import (
    DEFAULT_ALPHA,
    TEST_NAME,
    PairedComparison,
    compare,
    format_p,
    mark,
    seeds_phrase,
)
from speechssl.utils import atomic_path, atomic_write_json, atomic_write_text

BASELINES = ("logmel", "fbank", "mfcc")
CONTROL_SUFFIX = "_random"


def encoder_kind(name: str, described: Mapping[str, Any] | None = None) -> str:
    """``baseline`` | ``control`` | ``ssl``: the recorded ``role`` of ``described`` (an entry of a
    results.json's ``encoders``), else guessed from the name (results without roles)."""
    role = (described or {}).get("role")
    if role in ("baseline", "control", "ssl"):
        return str(role)
    if name in BASELINES:
        return "baseline"
    if name.endswith(CONTROL_SUFFIX):
        return "control"
    return "ssl"


def _described(loaded: Mapping[str, dict]) -> dict[str, dict]:
    """Encoder name -> its description (role, control_of, architecture, spec) over all tasks."""
    out: dict[str, dict] = {}
    for r in loaded.values():
        for name, desc in (r.get("encoders") or {}).items():
            if isinstance(desc, dict) and (name not in out or desc.get("role")):
                out[name] = desc
    return out


def pair_controls(encoders: Sequence[str], described: Mapping[str, dict]) -> dict[str, str]:
    """SSL encoder name -> the name of its control, by ``control_of`` (an encoder name, or the
    spec / experiment folder of the SSL encoder), else by equal architecture, else by name."""
    kinds = {e: encoder_kind(e, described.get(e)) for e in encoders}
    ssl = [e for e in encoders if kinds[e] == "ssl"]
    controls = [e for e in encoders if kinds[e] == "control"]
    pairs: dict[str, str] = {}

    def refs(enc: str) -> set[str]:
        spec = str((described.get(enc) or {}).get("spec") or "")
        names = {enc, spec}
        if spec:
            path = Path(spec)
            names |= {path.name, str(path.parent), path.parent.name} if path.name == "encoder" else {path.name}
        return {n for n in names if n}

    for ctl in controls:
        target = (described.get(ctl) or {}).get("control_of")
        if target:
            for enc in ssl:
                if str(target) in refs(enc):
                    pairs.setdefault(enc, ctl)
    for ctl in controls:
        arch = (described.get(ctl) or {}).get("architecture")
        same = [e for e in ssl if arch and (described.get(e) or {}).get("architecture") == arch]
        for enc in same:
            pairs.setdefault(enc, ctl)
    for enc in ssl:
        if enc + CONTROL_SUFFIX in controls:
            pairs.setdefault(enc, enc + CONTROL_SUFFIX)
    return pairs


def _load(results_dir: str | Path) -> dict:
    path = Path(results_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `speechssl downstream label-efficiency --out {results_dir}` first")
    data = json.loads(path.read_text())
    if data.get("protocol", {}).get("name") != "label_efficiency" or "curves" not in data:
        raise ValueError(f"{path} is not a label-efficiency result (protocol {data.get('protocol')})")
    return data


def _pts(x: float) -> str:
    return f"{100 * x:+.1f} pts"


def summarize_label_efficiency(
    tasks: Mapping[str, str | Path],
    out_md: str | Path,
    out_png: str | Path | None = None,
    reference: str = "logmel",
    note: str = "",
    alpha: float = DEFAULT_ALPHA,
) -> dict[str, Any]:
    """Summarise label-efficiency results.

    Args:
        tasks: ``{task name: folder with results.json}``, e.g. ``{"speaker": "exp/le_speaker"}``.
        out_md: markdown summary to write (atomic).
        out_png: optional PNG with one accuracy-vs-labels panel per task.
        reference: the baseline every SSL encoder must beat.
        note: a line to put under the title (e.g. date and machine).
        alpha: significance level of the paired one-sided t-test over seeds that every margin of a
            winner must pass to count as significant (:mod:`speechssl.downstream.significance`).
    Returns:
        The verdict as a dict (also written beside ``out_md`` as JSON).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    loaded = {task: _load(d) for task, d in tasks.items()}
    metric = {t: r["protocol"].get("metric", "accuracy") for t, r in loaded.items()}
    encoders: list[str] = []
    for r in loaded.values():
        encoders += [e for e in r["curves"] if e not in encoders]
    described = _described(loaded)
    kinds = {e: encoder_kind(e, described.get(e)) for e in encoders}
    control_of = pair_controls(encoders, described)
    family = {e: e for e in encoders} | {ctl: enc for enc, ctl in control_of.items()}
    order = {"baseline": 0, "control": 2, "ssl": 1}
    encoders.sort(key=lambda e: (order[kinds[e]], family[e], e))

    # Table: rows encoders, columns (task, shots).
    cols = [(t, s) for t, r in loaded.items() for s in r["protocol"]["shots"]]
    lines = ["# Label efficiency: pretrained encoders vs log-Mel and random-init controls", ""]
    if note:
        lines += [note, ""]
    lines += [
        "Test " + ", ".join(sorted(set(metric.values()))) + " (mean ± std over seeds) with n labelled utterances "
        "per class; the same head, protocol and held-out test set for every encoder.",
        "",
        "| encoder | kind | " + " | ".join(f"{t} n={s}" for t, s in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for enc in encoders:
        cells = []
        for t, s in cols:
            c = loaded[t]["curves"].get(enc, {}).get(str(s))
            cells.append(f"{c['mean']:.3f} ± {c['std']:.3f}" if c else "—")
        lines.append(f"| {enc} | {kinds[enc]} | " + " | ".join(cells) + " |")

    # Verdict at the smallest label budget of each task.
    verdict: dict[str, Any] = {"reference": reference, "tasks": {}, "encoders": {},
                               "significance": {"test": TEST_NAME, "alpha": alpha}}
    tests: dict[str, dict[str, tuple[PairedComparison | None, PairedComparison | None]]] = {}
    for t, r in loaded.items():
        n = min(r["protocol"]["shots"])
        curves = r["curves"]
        ref = curves.get(reference, {}).get(str(n))
        verdict["tasks"][t] = {"shots": n, "reference": ref["mean"] if ref else None}
        for enc in curves:
            if kinds[enc] != "ssl":
                continue
            mine = curves[enc][str(n)]["mean"]
            control = curves.get(control_of.get(enc, ""), {}).get(str(n))
            by_ref = None if ref is None else compare(r, enc, reference, n, alpha)
            by_ctl = None if control is None else compare(r, enc, control_of[enc], n, alpha)
            tests.setdefault(enc, {})[t] = (by_ref, by_ctl)
            entry = verdict["encoders"].setdefault(enc, {})
            entry[t] = {
                "shots": n,
                "score": mine,
                "vs_reference": None if ref is None else mine - ref["mean"],
                "vs_control": None if control is None else mine - control["mean"],
                "vs_reference_paired": None if by_ref is None else by_ref.to_dict(),
                "vs_control_paired": None if by_ctl is None else by_ctl.to_dict(),
            }
    winners = [
        enc
        for enc, per_task in verdict["encoders"].items()
        if len(per_task) == len(loaded)
        and all(v["vs_reference"] is not None and v["vs_reference"] > 0 for v in per_task.values())
        and all(v["vs_control"] is not None and v["vs_control"] > 0 for v in per_task.values())
    ]
    verdict["winners"] = winners
    # The others, with the margins that are not ahead (or cannot be computed): named, not left out.
    verdict["behind"] = {
        enc: [{"task": t, "against": against, "margin": margin}
              for t, v in per_task.items()
              for against, margin in ((reference, v["vs_reference"]), (control_of.get(enc), v["vs_control"]))
              if margin is None or margin <= 0]
        for enc, per_task in verdict["encoders"].items() if enc not in winners
    }
    # A winner whose every margin is significant; the others with the margins that are not (or unknown).
    unsettled = {enc: [{"task": t, **c.to_dict()} for t, pair in tests[enc].items() for c in pair
                       if c is not None and not c.significant] for enc in winners}
    verdict["significant_winners"] = [enc for enc in winners if not unsettled[enc]]
    verdict["winners_not_significant"] = {enc: cs for enc, cs in unsettled.items() if cs}
    every_test = [c for pairs in tests.values() for pair in pairs.values() for c in pair if c is not None]
    seeds = seeds_phrase(every_test)
    lines += ["", "## Verdict at the smallest label budget", ""]
    if any(c.p_value is not None for c in every_test):
        lines += [f"Margins in points; p: paired one-sided t-test over the {seeds} (for a seed, every encoder "
                  "is trained on the same labelled utterances and scored on the same test set); a positive "
                  f"margin with p ≥ {alpha:g} is within noise.", ""]
    else:
        lines += ["Margins in points, differences of means: these results have no per-seed scores (or one "
                  "seed), so whether a margin exceeds the seed-to-seed noise is unknown.", ""]
    for enc, per_task in verdict["encoders"].items():
        parts = []
        for t, v in per_task.items():
            by_ref, by_ctl = tests[enc][t]
            ref_txt = ("no reference" if v["vs_reference"] is None
                       else f"{_pts(v['vs_reference'])} vs {reference}{mark(by_ref)}")
            ctl_txt = ("no control" if v["vs_control"] is None
                       else f"{_pts(v['vs_control'])} vs {control_of[enc]}{mark(by_ctl)}")
            parts.append(f"{t} (n={v['shots']}): {v['score']:.3f}, {ref_txt}, {ctl_txt}")
        lines.append(f"- **{enc}**: " + "; ".join(parts))
    lines += [""] + _headline(verdict, reference, alpha, seeds)
    verdict["best"] = best_per_task(loaded, kinds)
    lines += ["", "**Best per task** at the smallest label budget: " + "; ".join(
        f"{t} (n={b['shots']}): {b['encoder']} ({b['kind']}) {b['score']:.3f}"
        + ("" if b["best_ssl"] in (None, b["encoder"]) else f", best pretrained {b['best_ssl']} {b['best_ssl_score']:.3f}")
        for t, b in verdict["best"].items()) + "."]  # fmt: skip
    out_md = Path(out_md)
    atomic_write_text(out_md, "\n".join(lines) + "\n")
    atomic_write_json(out_md.with_suffix(".json"), verdict)
    if out_png is not None:
        plot_summary(loaded, out_png, encoders, kinds, family)
    return verdict


def _headline(verdict: Mapping[str, Any], reference: str, alpha: float, seeds: str) -> list[str]:
    """The verdict's last lines: who wins with every margin significant, who wins on the means with
    some margin within noise (named, with those margins), and whose significance is unknown."""
    winners, significant = verdict["winners"], verdict["significant_winners"]
    if not winners:
        return [f"**No pretrained encoder beats both {reference} and its random-init control on every task** at "
                "the smallest label budget in this run."] + _behind(verdict)
    unsettled = verdict["winners_not_significant"]
    noisy = [e for e in winners if any(c["p_value"] is not None for c in unsettled.get(e, []))]
    unknown = [e for e in winners if e not in significant and e not in noisy]
    test = f"paired one-sided t-test over {seeds}, p < {alpha:g}"

    def beat(group: list[str]) -> str:
        one = len(group) == 1
        return (f"{', '.join(group)} beat{'s' if one else ''} both {reference} and {'its' if one else 'their'} "
                "random-init control on every task at the smallest label budget")

    def by_how_much(group: list[str]) -> str:
        per_task = verdict["encoders"]
        best = max(group, key=lambda e: min(v["vs_reference"] for v in per_task[e].values()))
        return (f"{best} by at least {100 * min(v['vs_reference'] for v in per_task[best].values()):.1f} pts over "
                f"{reference} and {100 * min(v['vs_control'] for v in per_task[best].values()):.1f} pts over its "
                "control")

    def margins(enc: str) -> str:
        return "; ".join(f"{c['task']} vs {c['against']} {_pts(c['mean_diff'])}, "
                         + (format_p(c["p_value"]) if c["p_value"] is not None else "significance unknown")
                         for c in unsettled[enc])

    def why_unknown(group: list[str]) -> str:
        return ", ".join(sorted({c["unknown_because"] for e in group for c in unsettled[e] if c["p_value"] is None}))

    if significant:
        lines = [f"**Pretraining pays off**: {beat(significant)}, every margin significant ({test}); "
                 f"{by_how_much(significant)}."]
    elif unknown:
        lines = [f"**Pretraining pays off**: {beat(unknown)}, on the means alone (significance unknown: "
                 f"{why_unknown(unknown)}); {by_how_much(unknown)}."]
    else:
        lines = [f"**No pretrained encoder beats both {reference} and its random-init control significantly on "
                 f"every task** at the smallest label budget ({test})."]
    if noisy:
        one = len(noisy) == 1
        lines += ["", f"**Within noise**: {', '.join(noisy)} beat{'s' if one else ''} both on the means, but "
                  f"{'its' if one else 'their'} win rests on margins that are not significant: "
                  + "; ".join(f"{e} ({margins(e)})" for e in noisy) + "."]
    if unknown and significant:
        lines += ["", f"**Significance unknown** ({why_unknown(unknown)}): {', '.join(unknown)} beat"
                  f"{'s' if len(unknown) == 1 else ''} both on the means."]
    return lines + _behind(verdict)


def _behind(verdict: Mapping[str, Any]) -> list[str]:
    """``**Not ahead on every task**: cpc (speaker vs cpc_random -0.3 pts); ...`` for the pretrained
    encoders that do not beat both on the means, with the margins that are not ahead."""
    behind = verdict.get("behind") or {}
    if not behind:
        return []

    def margin(c: Mapping[str, Any]) -> str:
        against = c["against"] or "its control"
        return f"{c['task']} vs {against} " + ("not measured" if c["margin"] is None else _pts(c["margin"]))

    return ["", "**Not ahead on every task**: " + "; ".join(
        f"{enc} ({', '.join(margin(c) for c in cs)})" for enc, cs in behind.items()) + "."]


def best_per_task(loaded: Mapping[str, dict], kinds: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Which encoder wins each task at its smallest label budget (highest mean), and the best SSL one.

    Returns:
        ``{task: {"shots", "encoder", "kind", "score", "best_ssl", "best_ssl_score"}}`` (``best_ssl``
        is ``None`` when the task has no SSL encoder); ties go to the first name in sorted order.
    """
    best: dict[str, dict[str, Any]] = {}
    for t, r in loaded.items():
        n = str(min(r["protocol"]["shots"]))
        scores = {e: c[n]["mean"] for e, c in sorted(r["curves"].items()) if n in c}
        if not scores:
            continue
        top = max(scores, key=lambda e: scores[e])
        ssl = [e for e in scores if kinds.get(e, encoder_kind(e)) == "ssl"]
        top_ssl = max(ssl, key=lambda e: scores[e]) if ssl else None
        best[t] = {"shots": int(n), "encoder": top, "kind": kinds.get(top, encoder_kind(top)), "score": scores[top],
                   "best_ssl": top_ssl, "best_ssl_score": scores[top_ssl] if top_ssl else None}  # fmt: skip
    return best


def plot_summary(loaded: Mapping[str, dict], out_png: str | Path, encoders: Sequence[str],
                 kinds: Mapping[str, str] | None = None, family: Mapping[str, str] | None = None) -> None:
    """Write :func:`summary_figure` to ``out_png`` (atomically)."""
    import matplotlib.pyplot as plt

    fig = summary_figure(loaded, encoders, kinds, family)
    with atomic_path(out_png) as tmp:
        # "tight" grows the canvas to hold the legend placed right of the panels
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)


def summary_figure(loaded: Mapping[str, dict], encoders: Sequence[str], kinds: Mapping[str, str] | None = None,
                   family: Mapping[str, str] | None = None):
    """One panel per task: score vs labelled utterances per class (log2 axis), error bars = std;
    one legend for all panels, right of them, so that it covers no point and no chance line.

    ``kinds``: encoder -> baseline | control | ssl (default: :func:`encoder_kind` of the name);
    ``family``: encoder -> the SSL encoder whose colour it shares (a control and its encoder).
    Returns the matplotlib Figure."""
    kinds = dict(kinds or {e: encoder_kind(e) for e in encoders})
    family = dict(family or {e: e.removesuffix(CONTROL_SUFFIX) for e in encoders})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(loaded), figsize=(5.5 * len(loaded), 4.2), squeeze=False)
    families = sorted({family[e] for e in encoders if kinds[e] != "baseline"})
    palette = plt.get_cmap("tab10" if len(families) <= 10 else "tab20")  # a colour per family up to 20
    for ax, (task, r) in zip(axes[0], loaded.items()):
        for enc in encoders:
            curve = r["curves"].get(enc)
            if not curve:
                continue
            shots = sorted(int(s) for s in curve)
            means = [curve[str(s)]["mean"] for s in shots]
            stds = [curve[str(s)]["std"] for s in shots]
            kind = kinds[enc]
            if kind == "baseline":
                style = {"color": "black" if enc == "logmel" else "grey", "linestyle": "-", "marker": "s"}
            else:
                fam = family[enc]
                style = {"color": palette(families.index(fam) % palette.N), "marker": "o",
                         "linestyle": "--" if kind == "control" else "-"}
            ax.errorbar(shots, means, yerr=stds, label=enc, capsize=3, linewidth=1.6, **style)
        ax.set_xscale("log", base=2)
        shots_all = r["protocol"]["shots"]
        ax.set_xticks(shots_all)
        ax.set_xticklabels([str(s) for s in shots_all])
        ax.set_xlabel("labelled utterances per class")
        ax.set_ylabel(r["protocol"].get("metric", "accuracy"))
        # n utterances per class were drawn for every run, so classes = train size / n.
        first = (r.get("runs") or [{}])[0]
        n_classes = first.get("train_size", 0) // max(1, first.get("shots", 1))
        if n_classes > 1:
            ax.axhline(1 / n_classes, color="lightgrey", linestyle=":", label="chance")
        ax.set_title(task)
        ax.grid(True, alpha=0.3)
        if not math.isnan(ax.get_ylim()[0]):
            ax.set_ylim(bottom=0)
    handles: dict[str, Any] = {}
    for ax in axes[0]:  # every encoder once, even one that only some tasks have
        for handle, name in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(name, handle)
    if "chance" in handles:  # after the encoders
        handles["chance"] = handles.pop("chance")
    fig.suptitle("SSL encoders (solid) vs random-init controls (dashed) vs log-Mel/fbank")
    fig.tight_layout()
    fig.legend(list(handles.values()), list(handles), fontsize=8, loc="center left",
               bbox_to_anchor=(1.03, 0.5), bbox_transform=axes[0][-1].transAxes, borderaxespad=0.0,
               frameon=False)
    return fig
