"""Shared helpers of the benchmark suite: timing, memory, environment, child processes.

Usage (library only; the entry point is ``tools/bench/run_all.py``)::

    from common import compare, peak_rss_mib
    times = compare({"ours": f, "theirs": g}, repeats=5, warmup=1)

Timing rule of the suite: every comparison runs its candidates interleaved in the same process
(A, B, A, B, ...), after warm-up, and reports the median of the repetitions and the ratio of
medians. On a loaded machine the absolute numbers drift; the ratios stay meaningful.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = Path(__file__).resolve().parent
SAMPLE_RATE = 16000


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (VmHWM; ru_maxrss as a fallback)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def compare(candidates: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds per call of each candidate, interleaved, after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def summarise(times: dict[str, list[float]], reference: str) -> dict[str, dict]:
    """Median seconds per candidate and ``speedup_vs_<reference>`` = median(reference) / median(candidate)."""
    ref = median(times[reference])
    out = {}
    for name, values in times.items():
        m = median(values)
        out[name] = {"median_s": round(m, 5), "min_s": round(min(values), 5), "repeats": len(values),
                     f"speedup_vs_{reference}": round(ref / m, 3) if m > 0 else None}
    return out


def cpu_model() -> str:
    """The CPU's model name (``speechssl.accel.cpu_identity``)."""
    from speechssl.accel import cpu_identity

    return cpu_identity()[1]


def environment() -> dict:
    """Commit, date, CPU, threads, library versions, load average, the kernels speechssl.accel chose."""
    import torch
    import torchaudio

    from speechssl import accel

    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    return {
        "commit": commit + ("-dirty" if dirty else ""),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "kernels": accel.decision().as_dict(),
    }


def run_child(module: str, function: str, spec: dict, timeout: float | None = None) -> dict:
    """Run ``module.function(spec)`` in a fresh interpreter (own peak RSS, own thread pool); returns its dict.

    The child prints one JSON line last; failures come back as ``{"error": <stderr tail>}``.
    """
    code = (f"import json, sys; sys.path.insert(0, {str(BENCH_DIR)!r}); import {module}; "
            f"print(json.dumps({module}.{function}(json.loads(sys.argv[1]))))")
    try:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                              timeout=timeout, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:]}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"no JSON from child; stdout tail: {proc.stdout[-500:]!r} stderr: {proc.stderr[-1500:]!r}"}


def synth_signal(seconds: float, seed: int) -> np.ndarray:
    """Speech-like test signal (numpy float32, 16 kHz): a gliding harmonic source with syllable-rate amplitude modulation."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    out = np.empty(n, np.float32)
    block = SAMPLE_RATE * 60
    phase = 0.0
    for start in range(0, n, block):  # in blocks: bounded memory for an hour of audio
        t = np.arange(start, min(n, start + block)) / SAMPLE_RATE
        f0 = 120 + 30 * np.sin(2 * np.pi * 0.3 * t)
        inst = phase + 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        phase = float(inst[-1])
        x = sum(np.sin(k * inst) / k for k in range(1, 6))
        env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
        out[start:start + t.size] = (0.2 * x * env + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    return out
