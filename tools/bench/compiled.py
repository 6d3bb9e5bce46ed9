"""torch.compile evaluation: compile time and per-step gain of each family's training step and extraction.

Usage (the entry point is ``tools/bench/run_all.py --only compile``; not in the default sections:
inductor needs minutes per model on a 2-core machine)::

    from compiled import family_compile
    family_compile({"family": "wav2vec2", "batch_size": 4, "crop_seconds": 2.0, "repeats": 5, "threads": 2})

Per family (tiny preset): an eager model and a deep copy compiled with
:func:`speechssl.compilation.compile_model` (inductor, ``fallback_random``: the same RNG draws).

* training: both take their first step from the same seed (the compiled one compiles: its wall
  time minus the eager step is ``compile_s``) and their losses are compared; then the Trainer's
  step (``tools/bench/pretrain.train_step_fn``), interleaved eager/compiled, medians, ``speedup``
  = eager / compiled (> 1: compiled wins);
* extraction: ``encode`` under ``torch.no_grad`` on one batch, the same way (``max_abs_diff`` of the
  last layer).
"""

from __future__ import annotations

import copy
import time

import torch
from common import compare, median
from pretrain import make_batch, train_step_fn

TINY = {"apc": "apc_tiny", "cpc": "cpc_tiny", "wav2vec2": "wav2vec2_tiny", "bestrq": "bestrq_tiny"}


def build_tiny(family: str) -> torch.nn.Module:
    import importlib

    from speechssl.config import to_dict
    from speechssl.models.base import build_model

    cfg = getattr(importlib.import_module(f"speechssl.models.{family}"), TINY[family])()
    torch.manual_seed(0)
    return build_model({"name": family, **to_dict(cfg)})


def _pair(eager_fn, compiled_fn, repeats: int) -> dict:
    times = compare({"eager": eager_fn, "compiled": compiled_fn}, repeats=repeats, warmup=1)
    e, c = median(times["eager"]), median(times["compiled"])
    return {"eager_median_s": round(e, 4), "compiled_median_s": round(c, 4), "speedup": round(e / c, 3),
            "eager_s": [round(t, 4) for t in times["eager"]], "compiled_s": [round(t, 4) for t in times["compiled"]]}


def _train(family: str, batch: dict, backend: str, repeats: int) -> dict:
    from speechssl.compilation import compile_model

    eager = build_tiny(family)
    comp = copy.deepcopy(eager)
    blocks = compile_model(comp, backend)
    eager_step, comp_step = train_step_fn(eager, batch), train_step_fn(comp, batch)
    torch.manual_seed(1)
    t0 = time.perf_counter()
    a = eager_step()
    eager_first = time.perf_counter() - t0
    torch.manual_seed(1)
    t0 = time.perf_counter()
    b = comp_step()
    first = time.perf_counter() - t0
    la, lb = float(a.loss.detach()), float(b.loss.detach())
    out = {"blocks": blocks, "eager_loss": round(la, 6), "compiled_loss": round(lb, 6),
           "loss_rel_diff": abs(la - lb) / max(abs(la), 1e-12), "first_compiled_step_s": round(first, 2),
           "eager_first_step_s": round(eager_first, 3)}
    out.update(_pair(eager_step, comp_step, repeats))
    out["compile_s"] = round(first - out["eager_median_s"], 2)
    return out


def _extract(family: str, batch: dict, backend: str, repeats: int) -> dict:
    from speechssl.compilation import compile_model

    eager = build_tiny(family).eval()
    comp = copy.deepcopy(eager)
    blocks = compile_model(comp, backend)
    wavs, lengths = batch["wavs"], batch["lengths"]

    def run(model):
        def call():
            with torch.no_grad():
                return model.encode(wavs, lengths).hidden_states[-1]
        return call
    ref = run(eager)()
    t0 = time.perf_counter()
    got = run(comp)()
    first = time.perf_counter() - t0
    out = {"blocks": blocks, "max_abs_diff": float((ref - got).abs().max()), "first_compiled_call_s": round(first, 2)}
    out.update(_pair(run(eager), run(comp), repeats))
    out["compile_s"] = round(first - out["eager_median_s"], 2)
    return out


def family_compile(spec: dict) -> dict:
    """spec: ``family``, ``batch_size``, ``crop_seconds``, ``repeats``, ``threads``, optional ``backend``, ``parts``."""
    from speechssl import accel
    from speechssl.compilation import reset

    torch.set_num_threads(spec["threads"])
    backend = spec.get("backend", "inductor")
    batch = make_batch(spec["batch_size"], spec["crop_seconds"])
    out = {"family": spec["family"], "preset": TINY[spec["family"]], "backend": backend,
           "batch": [spec["batch_size"], spec["crop_seconds"]], "kernels_eager": accel.decision().as_dict()}
    parts = spec.get("parts", ["train", "extract"])
    if "train" in parts:
        out["train"] = _train(spec["family"], batch, backend, spec["repeats"])
        reset()
    if "extract" in parts:
        out["extract"] = _extract(spec["family"], batch, backend, spec["repeats"])
        reset()
    return out
