"""torch.profiler of the wav2vec2 Base training step and inference, and the APC and CPC steps.

Usage:
  .venv/bin/python tools/bench/run_all.py --only profile --out bench

``profile_model(spec)`` runs one warm-up step then profiles ``steps`` steps (CPU activities, shapes
off), and returns the top operators by self CPU time, the share of the main buckets (matmul-like
ops, convolutions, elementwise, copies, masking and negative sampling from ``record_function``
scopes when the model has them) and "python + dispatch overhead" = wall time minus the summed self
time of all operators. The full tables are written as text next to the results.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from common import median
from pretrain import build, make_batch, train_step_fn

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
          "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_flash_attention_for_cpu_backward")
CONV = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution", "aten::conv1d")
COPY = ("aten::copy_", "aten::contiguous", "aten::clone", "aten::cat", "aten::index", "aten::index_put_",
        "aten::gather", "aten::scatter_add_", "aten::index_select", "aten::embedding_dense_backward",
        "aten::index_add_", "aten::_index_put_impl_")
RNN = ("aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward", "aten::lstm", "aten::gru",
       "aten::_thnn_fused_lstm_cell", "aten::_thnn_fused_gru_cell")


def _buckets(events) -> dict[str, float]:
    totals = {"matmul_attention": 0.0, "conv": 0.0, "rnn": 0.0, "copy_index": 0.0, "other_ops": 0.0}
    for e in events:
        if e.key.startswith("## "):  # record_function scopes are not operators
            continue
        t = e.self_cpu_time_total
        if e.key in MATMUL:
            totals["matmul_attention"] += t
        elif e.key in CONV:
            totals["conv"] += t
        elif e.key in RNN:
            totals["rnn"] += t
        elif e.key in COPY:
            totals["copy_index"] += t
        else:
            totals["other_ops"] += t
    return totals


def profile_model(spec: dict) -> dict:
    """spec: ``family``, ``size``, ``batch_size``, ``crop_seconds``, ``mode`` (train|infer), ``steps``,
    ``threads``, ``table_path``. Returns top ops and time buckets (fractions of profiled wall time)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    torch.set_num_threads(spec["threads"])
    model = build(spec["family"], spec["size"])
    batch = make_batch(spec["batch_size"], spec["crop_seconds"])
    if spec["mode"] == "train":
        fn = train_step_fn(model, batch)
    else:
        model.eval()

        def fn():
            with torch.inference_mode():
                return model.encode(batch["wavs"], batch["lengths"])
    fn()
    walls = []
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for _ in range(spec["steps"]):
            with record_function("## step"):
                t0 = time.perf_counter()
                fn()
                walls.append(time.perf_counter() - t0)
    events = prof.key_averages()
    wall_us = sum(walls) * 1e6
    ops = [e for e in events if not e.key.startswith("## ") and not e.key.startswith("ProfilerStep")]
    op_self = sum(e.self_cpu_time_total for e in ops)
    top = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    buckets = {k: round(v / wall_us, 4) for k, v in _buckets(ops).items()}
    buckets["python_dispatch_overhead"] = round(max(0.0, wall_us - op_self) / wall_us, 4)
    table = events.table(sort_by="self_cpu_time_total", row_limit=40)
    if spec.get("table_path"):
        Path(spec["table_path"]).write_text(table + "\n")
    scopes = {e.key: round(e.cpu_time_total / wall_us, 4) for e in events if e.key.startswith("## ") and e.key != "## step"}
    return {
        "model": f"{spec['family']}_{spec['size']}", "mode": spec["mode"],
        "batch": [spec["batch_size"], spec["crop_seconds"]], "steps": spec["steps"],
        "step_median_s": round(median(walls), 4),
        "op_calls_per_step": round(sum(e.count for e in ops) / spec["steps"]),
        "buckets_fraction_of_wall": buckets, "scopes_fraction_of_wall": scopes,
        "top_ops": [{"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 1e3 / spec["steps"], 2),
                     "fraction": round(e.self_cpu_time_total / wall_us, 4),
                     "calls_per_step": e.count // spec["steps"]} for e in top],
    }
