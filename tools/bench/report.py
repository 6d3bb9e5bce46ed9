"""Markdown summary of ``bench/results.json`` (written by tools/bench/run_all.py).

Usage:
  .venv/bin/python tools/bench/report.py bench/results.json   # rewrites bench/results.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _get(d: dict, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _status(value, target, higher_is_better: bool = True) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if higher_is_better else value < target
    return "meets" if ok else "MISSES"


def rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(measurement, value, target, status) rows of the summary table."""
    out = []
    fe = results.get("frontends") or {}
    for name in ("logmel", "fbank"):
        sec = fe.get(name)
        if not sec:
            continue
        times = sec["times"]
        detail = ", ".join(f"{k} {v['median_s']:.3g} s" for k, v in times.items())
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in sec["max_abs_diff"].items())
        s = sec["speedup_vs_fastest_reference"]
        out.append((f"frontend {name}, {fe['audio_seconds'] / 60:.0f} min audio ({detail}; max abs diff {diffs})",
                    f"{s:.2f}x fastest reference", ">= 1.0x", _status(s, 1.0)))
    cmp_ = _get(results, "extract", "wav2vec2_base_comparison") or {}
    for dtype in ("fp32", "bf16"):
        sec = cmp_.get(dtype)
        if not sec:
            continue
        s = sec["speechssl"]["speedup_vs_torchaudio"]
        out.append((f"wav2vec2 Base extraction {dtype}: RTF ours {sec['speechssl']['rtf']:.3g}, torchaudio "
                    f"{sec['torchaudio']['rtf']:.3g}, HF {sec['hf']['rtf']:.3g} (HF {sec['hf']['speedup_vs_torchaudio']:.2f}x); "
                    f"max diff ours {sec['speechssl']['max_abs_diff_vs_torchaudio_fp32']:.1e}",
                    f"{s:.2f}x torchaudio", ">= 1.2x" if dtype == "fp32" else "-",
                    _status(s, 1.2) if dtype == "fp32" else "info"))
    if "error" in cmp_:
        out.append(("wav2vec2 Base extraction comparison", "error", ">= 1.2x", "not measured"))
    for fam, r in (_get(results, "extract", "families") or {}).items():
        if "error" in r:
            out.append((f"extract {fam}", "error", "-", "not measured"))
            continue
        out.append((f"extract {fam} ({r['audio_seconds']:g} s audio, paper-sized model)",
                    f"RTF {r['rtf']:.3g}, peak {r['peak_rss_mib']:.0f} MiB", "-", "info"))
    long_runs = [(fam, r) for key in ("long_file", "long_file_60min")
                 for fam, r in (_get(results, "extract", key) or {}).items()]
    for fam, r in long_runs:
        if "error" in r:
            out.append((f"long file {fam}", "error", "< 2 GiB", "not measured"))
            continue
        gib = r["peak_rss_mib"] / 1024
        out.append((f"long file {r['minutes']:g} min, {fam} (RTF {r['rtf']:.3g})", f"peak {gib:.2f} GiB",
                    "< 2 GiB (60 min)", _status(gib, 2.0, higher_is_better=False)))
    pre = results.get("pretrain") or {}
    if pre.get("matmul_peak"):
        mp = pre["matmul_peak"]
        kernels = ", ".join(f"{k} {v:.0f}" for k, v in (mp.get("fp32_kernels") or {}).items())
        out.append((f"dense matmul peak ({mp['size']}^2, best of several" + (f"; fp32 {kernels}" if kernels else "") + ")",
                    f"fp32 {mp['fp32_gflops']:.1f} GFLOP/s, bf16 {_fmt(mp.get('bf16_gflops'))}", "-", "info"))
    kc = pre.get("kernel_check") or {}
    if "chosen_is_fastest" in kc:
        rates = ", ".join(f"{k} {v:.0f}" for k, v in kc["measured_gflops"].items())
        out.append((f"per-CPU matmul choice: {kc['chosen']} ({rates} GFLOP/s)",
                    f"{kc['chosen_over_best']:.2f}x the faster kernel", "the faster one",
                    "meets" if kc["chosen_is_fastest"] else "MISSES"))
    for name, r in (pre.get("models") or {}).items():
        target = ">= 60 %" if name == "wav2vec2_base" else "-"  # issue 19's target (it was 50 % before)
        frac = r["fraction_of_matmul_peak"]
        out.append((f"pretrain {name} ({r['params_m']:.3g} M params, batch {r['batch'][0]} x {r['batch'][1]:g} s): "
                    f"{r['steps_per_s']:.3g} steps/s, {r['audio_s_per_s']:.3g} audio-s/s, {r['gflop_per_step']:.3g} GFLOP/step",
                    f"{100 * frac:.0f} % of matmul peak", target,
                    _status(frac, 0.6) if name == "wav2vec2_base" else "info"))
    out += peer_rows(results.get("peers") or {})
    out += new_rows(results)
    out += compile_rows(results.get("compile") or {})
    for name, r in (_get(results, "data", "models") or {}).items():
        if "keeps_up" not in r:
            continue
        best = max(v["batches_per_s"] for v in r["loader"].values())
        out.append((f"loader vs {name} step ({r['batch_seconds']:g} s batches): loader {best:.3g} batches/s, "
                    f"step {r['train_steps_per_s']:.3g}/s", f"{r['loader_over_consumption']:.3g}x consumption",
                    ">= 1x", "meets" if r["keeps_up"] else "MISSES"))
        if "keeps_up_augmented" in r:
            aug = r["loader_augmented"]
            out.append((f"loader + augmentations (speech.yaml, {len(aug['augmentations'])}) vs {name} step: "
                        f"{aug['batches_per_s']:.3g} batches/s ({100 * aug['augment_time_share']:.0f} % augmenting), "
                        f"step {r['train_steps_per_s']:.3g}/s", f"{r['augmented_loader_over_consumption']:.3g}x consumption",
                        ">= 1x", "meets" if r["keeps_up_augmented"] else "MISSES"))
    fr = _get(results, "data", "formant_renderer") or {}
    if "realtime_factor" in fr:
        rtf = fr["realtime_factor"]
        out.append((f"formant synthesiser ({fr['sentences']} sentences, {fr['audio_seconds']:g} s of audio)",
                    f"{rtf:.3g}x real time (CPU)", "> 25x", _status(rtf, 25)))
    sc = results.get("scaling") or {}
    ext = sc.get("extraction") or {}
    if "time_ratios" in ext:
        out.append((f"scaling: extraction {ext['family']} at data x{ext['audio_ratios']}",
                    f"time x{ext['time_ratios']}, peak RSS x{ext['peak_rss_ratios']}", "~linear time, flat memory", "info"))
    ep = sc.get("epoch") or {}
    if "time_ratios" in ep:
        out.append((f"scaling: one epoch {ep['model']} at data x{ep['audio_ratios']}",
                    f"time x{ep['time_ratios']}, peak RSS x{ep['peak_rss_ratios']}", "~linear time, flat memory", "info"))
    for name, r in (results.get("profile") or {}).items():
        if "error" in r:
            out.append((f"profile {name}", "error", "-", "-"))
            continue
        top = ", ".join(f"{o['op'].replace('aten::', '')} {100 * o['fraction']:.0f}%" for o in r["top_ops"][:4])
        b = r["buckets_fraction_of_wall"]
        out.append((f"profile {name}: top {top}", f"python/dispatch {100 * b['python_dispatch_overhead']:.0f} %, "
                    f"copies/index {100 * b['copy_index']:.0f} %", "-", "info"))
    return out


def peer_rows(peers: dict) -> list[tuple[str, str, str, str]]:
    """Rows of the ``peers`` section: our step vs the peer's, with the loss check."""
    out = []
    for fam, sec in peers.items():
        if "error" in sec:
            out.append((f"{fam} step vs peer", "error", "-", "not measured"))
            continue
        target = sec.get("target_speedup")
        for dtype, r in sec.get("rows", {}).items():
            if "error" in r:
                out.append((f"{fam} {dtype} step vs peer", "error", f">= {target}x", "not measured"))
                continue
            c = r["check"]
            theirs = c.get("theirs_loss_per_masked_frame", c.get("theirs_loss"))
            what = (f"{fam} {sec['size']} training step {dtype} vs {sec['peer']} (batch {sec['batch'][0]} x "
                    f"{sec['batch'][1]:g} s): loss ours {c['ours_loss']:.6g} / theirs {theirs:.6g} "
                    f"(rel diff {c['loss_rel_diff']:.1e}, grads {c['grad_max_rel_diff']:.1e})")
            if "speedup" not in r:
                out.append((what, "losses disagree: not timed", f">= {target}x", "not measured"))
                continue
            out.append((f"{what}; median step ours {r['ours_median_s']:.3g} s, theirs {r['theirs_median_s']:.3g} s",
                        f"{r['speedup']:.2f}x", f">= {target}x", _status(r["speedup"], target)))
            if "fraction_of_matmul_peak" in r:
                out.append((f"{fam} {sec['size']} training step {dtype}: {r['gflop_per_step']:.4g} GFLOP in "
                            f"{r['ours_median_s']:.3g} s vs dense matmul peak {r['peak_gflops_fp32']} GFLOP/s",
                            f"{100 * r['fraction_of_matmul_peak']:.0f} % of matmul peak", "-", "info"))
    return out


def new_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """Rows of the ``hubert``, ``kmeans``, ``data2vec``, ``infonce`` and ``quality`` sections."""
    out = []
    ext = _get(results, "hubert", "extraction") or {}
    if "speedup" in ext:
        f = ext["fp32"]
        out.append((f"HuBERT {ext['size']} extraction fp32 (every layer, {ext['audio_seconds']:g} s of audio) vs "
                    f"{ext['peer']}: RTF ours {f['speechssl']['rtf']:.3g}, torchaudio {f['torchaudio']['rtf']:.3g} "
                    f"(max diff {ext['max_abs_diff_every_layer']:.1e})", f"{ext['speedup']:.2f}x",
                    f">= {ext['target_speedup']}x", _status(ext["speedup"], ext["target_speedup"])))
    elif "error" in ext:
        out.append(("HuBERT extraction vs torchaudio", "error", ">= 1.2x", "not measured"))
    km = results.get("kmeans") or {}
    for name, r in (km.get("rows") or {}).items():
        out.append((f"k-means K={km['k']} (n_init {km['n_init']}) on {name} of {km['features']}: "
                    f"{r['frames']} frames, {r['minibatch_steps']} mini-batches",
                    f"fit {r['fit_s']:.3g} s (CPU {r['fit_cpu_s']:.3g}), assign {r['assign_s']:.3g} s "
                    f"(CPU {r['assign_cpu_s']:.3g})", "-", "info"))
    if "fit_time_ratio" in km:
        out.append((f"k-means at x{km['length_ratio']:g} the frames", f"fit x{km['fit_time_ratio']:g} (CPU "
                    f"x{km['fit_cpu_ratio']:g}), assign x{km['assign_time_ratio']:g} (CPU x{km['assign_cpu_ratio']:g})",
                    "<= linear", "info"))
    for size, sec in (results.get("data2vec") or {}).items():
        if "error" in sec:
            out.append((f"data2vec 2.0 vs wav2vec 2.0 {size}", "error", "-", "not measured"))
            continue
        for fam, r in sec["models"].items():
            out.append((f"{fam} {size} step, interleaved with the other families of the same size (batch "
                        f"{sec['batch'][0]} x {sec['batch'][1]:g} s): {r['step_median_s']:.3g} s, "
                        f"{r['gflop_per_step']:.4g} GFLOP", f"{r['audio_s_per_s']:.3g} audio-s/s, "
                        f"{100 * r['fraction_of_matmul_peak']:.0f} % of matmul peak", "-", "info"))
        for key, v in sec.items():
            if key.endswith("_audio_s_per_s"):
                out.append((f"{size}: {key.replace('_', ' ')}", f"{v:.3g}x", "-", "info"))
    for shape, r in ((results.get("infonce") or {}).get("rows") or {}).items():
        out.append((f"CPC InfoNCE forward + backward, {shape} (batch negatives): gathered {r['gathered_ms']:.3g} ms, "
                    f"dense scores {r['dense_ms']:.3g} ms (loss diff {r['loss_abs_diff']:.1e}); the rule takes "
                    f"{r['rule_takes']}", f"dense {r['dense_speedup']:.2f}x", "rule takes the faster (ties within 5 %)",
                    "meets" if r["rule_took_faster"] else "MISSES"))
    q = results.get("quality") or {}
    for name, c in (q.get("families") or {}).items():
        last = c["points"][-1]
        out.append((f"time to quality {name}: best-layer probe at step 0 -> step {last['step']} "
                    f"({last['cpu_minutes']:.3g} CPU-min)", ", ".join(
                        f"{lab} {c['random_init'].get(lab)} -> {c['final'].get(lab)}" for lab in c["labels"]),
                    "-", "info"))
    return out


def compile_rows(sections: dict) -> list[tuple[str, str, str, str]]:
    """Rows of the ``compile`` section: compiled vs eager step and extraction per family."""
    out = []
    for fam, sec in sections.items():
        if "error" in sec:
            out.append((f"torch.compile {fam}", "error", "-", "not measured"))
            continue
        for part in ("train", "extract"):
            r = sec.get(part)
            if not r:
                continue
            same = (f"loss eager {r['eager_loss']:.6g} / compiled {r['compiled_loss']:.6g}" if part == "train"
                    else f"max abs diff {r['max_abs_diff']:.1e}")
            out.append((f"torch.compile ({sec['backend']}) {fam} tiny {part}, batch {sec['batch'][0]} x "
                        f"{sec['batch'][1]:g} s: compile {r['compile_s']:.3g} s, step eager {r['eager_median_s']:.3g} s / "
                        f"compiled {r['compiled_median_s']:.3g} s; {same}",
                        f"{r['speedup']:.2f}x eager", "> 1x to adopt", "adopt" if r["speedup"] > 1.05 else "keep eager"))
    return out


def write_markdown(results: dict, path: str | Path) -> None:
    from speechssl.utils import atomic_write_text

    env = results.get("environment", {})
    lines = [
        "# speechssl benchmark results", "",
        f"commit `{env.get('commit')}`, {env.get('date')}, CPU {env.get('cpu_model')} ({env.get('cpu_count')} cores), "
        f"threads {env.get('threads')}, torch {env.get('torch')}, torchaudio {env.get('torchaudio')}, "
        f"mode {results.get('mode')}, load average {env.get('load_average')} -> {env.get('load_average_end')}, "
        f"OMP_WAIT_POLICY={env.get('omp_wait_policy')}", "",
        "Ratios are medians of interleaved repetitions after warm-up in one process; absolute times "
        "depend on the machine load.", "",
        "| measurement | value | target | status |", "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(results)]
    errors = [s for s in ("frontends", "extract", "pretrain", "peers", "compile", "data", "scaling", "profile",
                          "hubert", "kmeans", "data2vec", "quality")
              if isinstance(results.get(s), dict) and "error" in results[s]]
    if errors:
        lines += ["", "Sections that failed (see results.json): " + ", ".join(errors)]
    lines += ["", "Section wall times (s): " + json.dumps(results.get("seconds", {}))]
    atomic_write_text(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results.json")
    write_markdown(json.loads(src.read_text()), src.with_name("results.md"))
