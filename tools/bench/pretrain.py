"""Pretraining benchmarks: step throughput, achieved FLOP/s vs measured matmul peak, loader rate, scaling.

Usage:
  .venv/bin/python tools/bench/run_all.py --only pretrain,data,scaling --out bench

* ``matmul_peak(spec)``: best-of-N dense fp32 (and bf16) matmul of ``size x size``, the best of
  ``torch.mm`` (MKL) and oneDNN's matmul (plain and prepacked weight); FLOP/s = 2 n^3 / t.
* ``kernel_check(peak)``: whether speechssl.accel's per-CPU choice (oneDNN or MKL) was the faster
  fp32 kernel in that measurement (recorded with the throughput rows);
* ``throughput(spec)``: per model (APC, CPC, wav2vec2, data2vec 2.0, TERA, MAE; tiny and base presets) the training step the
  Trainer runs (``loss`` -> ``backward`` -> clip -> Adam step) on a fixed batch of speech-like audio:
  median seconds per step after warm-up, steps/s, audio-seconds/s; FLOPs of one forward+backward
  counted with ``torch.utils.flop_counter.FlopCounterMode`` on the aten path (it counts matmuls,
  convolutions and attention; a GRU decomposes into mm/addmm and is counted, checked against
  the closed form; an LSTM runs as one ``mkldnn_rnn`` operator and is not: CPC's fractions are lower
  bounds); fraction of the matmul peak
  measured in the same process: the fraction is the median over steps of (step FLOP/s) / (peak measured
  just before that step), which cancels most of a changing machine load.
* ``loader_rate(spec)``: batches/s of ``speechssl.data.make_loader`` alone over a formant synthetic
  corpus, with the same batch seconds and crop as the training step.
* ``formant_render_rate(spec)``: real-time factor (CPU seconds) of the formant synthesiser behind
  ``speechssl synth --backend formant`` on 6-9-word sentences (was a timed unit test; it wants > 25x).
* ``augment_rate(spec)``: the same loader with the speech augmentations of
  ``recipes/augment/speech.yaml`` applied to every batch in the loading process (waveform pipeline,
  log-Mel, SpecAugment; in the main process and in 2 worker processes): batches/s, to compare with
  every model's training step.
* ``epoch_scaling(spec)``: one pretraining epoch (wav2vec2 tiny) over 1x/2x/4x of the corpus; wall
  time and peak RSS (run each size in its own child process).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from common import SAMPLE_RATE, median, peak_rss_mib, synth_signal

PRESETS = {
    ("apc", "tiny"): "apc_tiny", ("apc", "base"): "apc_paper",
    ("cpc", "tiny"): "cpc_tiny", ("cpc", "base"): "cpc_modified",
    ("wav2vec2", "tiny"): "wav2vec2_tiny", ("wav2vec2", "base"): "wav2vec2_base",
    ("data2vec2", "tiny"): "data2vec2_tiny", ("data2vec2", "base"): "data2vec2_base",
    ("simclr", "tiny"): "simclr_tiny", ("barlow", "tiny"): "barlow_tiny",
    ("tera", "tiny"): "tera_tiny", ("tera", "base"): "tera_base",
    ("mae", "tiny"): "mae_tiny", ("mae", "base"): "mae_base",
}


def build(family: str, size: str) -> torch.nn.Module:
    import importlib

    from speechssl.config import to_dict
    from speechssl.models.base import build_model

    module = importlib.import_module(f"speechssl.models.{family}")
    cfg = getattr(module, PRESETS[(family, size)])()
    if getattr(cfg, "layer_drop", 0.0):
        # LayerDrop (0.05 in wav2vec 2.0 Base) skips a random number of layers per step: off here,
        # so every timed step does the work whose FLOPs are counted.
        cfg.layer_drop = 0.0
    torch.manual_seed(0)
    return build_model({"name": family, **to_dict(cfg)})


def make_batch(batch_size: int, crop_seconds: float, seed: int = 0) -> dict:
    n = int(crop_seconds * SAMPLE_RATE)
    wavs = torch.from_numpy(np.stack([synth_signal(crop_seconds, seed + i) for i in range(batch_size)]))
    return {"wavs": wavs, "lengths": torch.full((batch_size,), n, dtype=torch.long),
            "ids": [f"u{i}" for i in range(batch_size)], "speaker": [f"s{i % 2}" for i in range(batch_size)]}


def train_step_fn(model: torch.nn.Module, batch: dict, clip_norm: float = 1.0):
    """The Trainer's fp32 step: zero_grad -> loss -> backward -> clip -> Adam (the Trainer's fused Adam)."""
    from speechssl.train.config import OptimConfig
    from speechssl.train.optim import build_optimizer

    opt = build_optimizer(model.parameters(), OptimConfig(lr=1e-4))
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        out = model.loss(batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        opt.step()
        return out
    return step


def count_flops(model: torch.nn.Module, batch: dict) -> int:
    """FLOPs of one forward + backward of ``model.loss(batch)`` (:func:`flops_of`)."""
    model.train()
    flops = flops_of(lambda: model.loss(batch).loss)
    model.zero_grad(set_to_none=True)
    return flops


def flops_of(loss_fn) -> int:
    """FLOPs of ``loss_fn()`` and its backward (FlopCounterMode: mm/bmm/conv/sdpa, GRUs through mm; LSTMs not
    counted); also the HuBERT peer row's (tools/bench/peers_hubert.py)."""
    from torch.utils.flop_counter import FlopCounterMode

    from speechssl import accel

    # FlopCounterMode has formulas for aten's mm/addmm/bmm/convolution/sdpa, not for oneDNN's
    # linear operator: count on the aten path (the FLOPs are the model's, whatever the kernel).
    # The fast GRU's backward recomputes its gates (two extra matmuls): count nn.GRU's FLOPs, the
    # model's own work, so the fraction of peak is not inflated by the recomputation.
    # Grouped convs (the positional conv) take their gradients as forward convs (conv_grad): FlopCounterMode's
    # convolution_backward formula ignores groups, and counted the Base positional conv's weight gradient
    # 16x (wav2vec 2.0 Base: 400 instead of 343 GFLOP per step).
    with (accel.use(onednn_linear=False, fast_gru=False, conv_grad=True),
          FlopCounterMode(display=False) as counter):
        loss_fn().backward()
    return int(counter.get_total_flops())


def _mm_kernels(n: int, dtype: torch.dtype) -> dict:
    """The dense ``n x n`` matmul kernels this PyTorch build has on CPU, by name.

    fp32: ``torch.mm`` (MKL sgemm; on AMD CPUs MKL runs its AVX2 code) and oneDNN's matmul (the
    ``mkldnn::_linear_pointwise`` operator, on the plain weight and on a weight prepacked for it),
    which takes AVX-512 where the CPU has it. The machine's peak is the best of them.
    """
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    kernels = {"torch.mm": lambda: torch.mm(a, b)}
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if dtype == torch.float32 and op is not None and torch.backends.mkldnn.is_available():
        try:
            bt = b.t().contiguous()
            op(a, bt, None, "none", [], "")
            kernels["onednn"] = lambda: op(a, bt, None, "none", [], "")
            packed = torch.ops.mkldnn._reorder_linear_weight(bt, n)
            op(a, packed, None, "none", [], "")
            kernels["onednn_packed"] = lambda: op(a, packed, None, "none", [], "")
        except Exception:  # noqa: BLE001 - a build without the operator: torch.mm only
            pass
    return kernels


def matmul_peak(spec: dict) -> dict:
    """spec: ``threads``, ``size``, ``repeats``, optional ``dtypes``. Best dense-matmul GFLOP/s per dtype.

    ``fp32_gflops`` is the best over every fp32 kernel (see :func:`_mm_kernels`); each kernel's own
    best is under ``fp32_kernels``.
    """
    torch.set_num_threads(spec["threads"])
    n = spec["size"]
    out = {"size": n}
    for name in spec.get("dtypes", ["fp32", "bf16"]):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        per_kernel = {}
        with torch.inference_mode():
            for kernel, fn in _mm_kernels(n, dtype).items():
                fn()
                best = float("inf")
                for _ in range(spec["repeats"]):
                    t0 = time.perf_counter()
                    fn()
                    best = min(best, time.perf_counter() - t0)
                per_kernel[kernel] = round(2 * n**3 / best / 1e9, 2)
        out[f"{name}_gflops"] = max(per_kernel.values())
        out[f"{name}_kernels"] = per_kernel
    return out


def kernel_check(peak: dict) -> dict:
    """Whether ``speechssl.accel``'s per-CPU matmul choice was the faster kernel in ``peak`` (fp32).

    ``chosen``: ``onednn`` (plain weight, what :mod:`speechssl.modules.linear` calls) or ``torch.mm``
    (``F.linear``: MKL); ``chosen_over_best`` = its GFLOP/s over the better of the two.
    """
    from speechssl import accel

    rates = {k: v for k, v in (peak.get("fp32_kernels") or {}).items() if k in ("torch.mm", "onednn")}
    n = peak.get("size")
    # the choice for an n x n weight (accel's per-shape rule may send large weights to MKL)
    chosen = "onednn" if accel.onednn_linear(n * n if n else None) else "torch.mm"
    reason = accel.decision().reasons["onednn_linear"]
    if accel.decision().mkl_min_weight is not None:
        reason += "; " + accel.decision().reasons["mkl_min_weight"]
    out = {"chosen": chosen, "reason": reason, "measured_gflops": rates}
    if chosen in rates:
        best = max(rates, key=rates.get)
        out.update(fastest=best, chosen_is_fastest=best == chosen, chosen_over_best=round(rates[chosen] / rates[best], 3))
    return out


def throughput(spec: dict) -> dict:
    """spec: ``threads``, ``models`` list of [family, size, batch_size, crop_seconds], ``steps``, ``matmul``."""
    torch.set_num_threads(spec["threads"])
    peak = matmul_peak({"threads": spec["threads"], **spec["matmul"]})
    result = {"matmul_peak": peak, "kernel_check": kernel_check(peak), "models": {}}
    for family, size, batch_size, crop in spec["models"]:
        model = build(family, size)
        batch = make_batch(batch_size, crop)
        step = train_step_fn(model, batch)
        step()  # warm-up (also allocates Adam state)
        times, peaks = [], []
        for _ in range(spec["steps"]):
            # a short peak measurement right before each step: under a changing load each step is
            # compared with what the machine delivered to dense matmuls at that moment
            peaks.append(matmul_peak({"threads": spec["threads"], "size": spec["matmul"]["size"], "repeats": 2,
                                      "dtypes": ["fp32"]})["fp32_gflops"])
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        flops = count_flops(model, batch)
        t = median(times)
        achieved = flops / t / 1e9
        # against the best the machine delivered in the run: a two-repeat peak read right before a step
        # sometimes ran on one core (111 instead of 220 GFLOP/s, AVX-512 AMD EPYC, 2026-11-29), and pairing
        # each step with it put TERA base at 118 % of the peak
        best_peak = max([peak["fp32_gflops"], *peaks])
        result["models"][f"{family}_{size}"] = {
            # trainable parameters (an EMA teacher's frozen copy is not counted)
            "params_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 3),
            "batch": [batch_size, crop], "audio_seconds_per_step": batch_size * crop,
            "step_median_s": round(t, 4), "step_min_s": round(min(times), 4), "steps_timed": len(times),
            "steps_per_s": round(1 / t, 4), "audio_s_per_s": round(batch_size * crop / t, 3),
            "gflop_per_step": round(flops / 1e9, 3), "achieved_gflops": round(achieved, 2),
            "peak_gflops_fp32_paired": [round(x, 1) for x in peaks], "peak_gflops_fp32_best": round(best_peak, 1),
            "fraction_of_matmul_peak": round(achieved / best_peak, 4),
        }
        del model, step
    return result


def paired_steps(spec: dict) -> dict:
    """spec: ``threads``, ``families`` (e.g. [data2vec2, wav2vec2]), ``size``, ``batch_size``, ``crop_seconds``,
    ``repeats``, ``matmul`` (``size``).

    The training steps of several families of the same encoder size on the same batch, interleaved
    (A, B, peak, A, B, peak, ...: a dense-matmul peak measurement after each round), after one warm-up
    step each: median seconds per step, audio-seconds per second, FLOPs of one forward + backward
    (:func:`count_flops`) and their rate as a fraction of the median measured peak, and each family's
    audio-seconds per second over the first family's."""
    from common import compare

    torch.set_num_threads(spec["threads"])
    batch = make_batch(spec["batch_size"], spec["crop_seconds"])
    audio = spec["batch_size"] * spec["crop_seconds"]
    models = {fam: build(fam, spec["size"]) for fam in spec["families"]}
    steps = {fam: train_step_fn(m, batch) for fam, m in models.items()}
    peaks: list[float] = []

    def peak():
        peaks.append(matmul_peak({"threads": spec["threads"], "size": spec["matmul"]["size"], "repeats": 2,
                                  "dtypes": ["fp32"]})["fp32_gflops"])
    times = compare({**steps, "_peak": peak}, repeats=spec["repeats"], warmup=1)
    peak_gflops = median(peaks[1:] or peaks)  # the warm-up round's measurement is dropped
    out: dict = {"size": spec["size"], "batch": [spec["batch_size"], spec["crop_seconds"]],
                 "peak_gflops_fp32": [round(p, 1) for p in peaks], "models": {}}
    for fam, model in models.items():
        t = median(times[fam])
        flops = count_flops(model, batch)
        out["models"][fam] = {
            "params_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 3),
            "step_median_s": round(t, 4), "step_s": [round(x, 4) for x in times[fam]],
            "audio_s_per_s": round(audio / t, 3), "gflop_per_step": round(flops / 1e9, 3),
            "achieved_gflops": round(flops / t / 1e9, 2),
            "fraction_of_matmul_peak": round(flops / t / 1e9 / peak_gflops, 4)}
    first = spec["families"][0]
    for fam in spec["families"][1:]:
        out[f"{first}_over_{fam}_audio_s_per_s"] = round(out["models"][first]["audio_s_per_s"]
                                                         / out["models"][fam]["audio_s_per_s"], 3)
    return out


def synth_corpus(out: Path, speakers: int, utts: int) -> Path:
    """``speechssl synth --backend formant`` (skips finished work); returns the manifest path."""
    import subprocess
    import sys

    manifest = out / "manifest.jsonl"
    cli = [sys.executable, "-m", "speechssl.cli.main", "synth", "--backend", "formant", "--out", str(out),
           "--speakers", str(speakers), "--utts-per-speaker", str(utts), "--jobs", "1"]
    subprocess.run(cli, check=True, capture_output=True, text=True)
    return manifest


def formant_render_rate(spec: dict) -> dict:
    """spec: ``sentences``, ``repeats``. Audio seconds rendered per CPU second (median over repeats)."""
    from speechssl.corpora.formant import FormantParams, render_formant
    from speechssl.corpora.text import sentence_with_words

    rng = np.random.default_rng(0)
    texts = [sentence_with_words(rng, 6, 9) for _ in range(spec["sentences"])]
    rates = []
    for _ in range(spec["repeats"]):
        start, samples = time.process_time(), 0
        for i, text in enumerate(texts):
            samples += len(render_formant(text, FormantParams(), np.random.default_rng(i)))
        rates.append(samples / SAMPLE_RATE / max(time.process_time() - start, 1e-9))
    return {"sentences": len(texts), "audio_seconds": round(samples / SAMPLE_RATE, 2),
            "realtime_factor": round(median(rates), 1)}


def loader_rate(spec: dict) -> dict:
    """spec: ``manifest``, ``batch_seconds``, ``crop_seconds``, ``num_workers`` list, ``epochs``."""
    from speechssl.data import make_loader, read_manifest

    torch.set_num_threads(spec.get("threads", 1))
    records = read_manifest(spec["manifest"])
    out = {}
    for workers in spec["num_workers"]:
        loader = make_loader(records, max_batch_seconds=spec["batch_seconds"], max_seconds=spec["crop_seconds"],
                             num_workers=workers, seed=0)
        count, audio, rates = 0, 0.0, []
        for epoch in range(spec["epochs"] + 1):  # epoch 0 is warm-up (file cache, worker start)
            loader.set_epoch(epoch)
            t0, n = time.perf_counter(), 0
            for batch in loader:
                n += 1
                if epoch:
                    audio += float(batch["lengths"].sum()) / SAMPLE_RATE
            if epoch:
                rates.append(n / (time.perf_counter() - t0))
                count += n
        out[f"workers_{workers}"] = {"batches_per_s": round(median(rates), 3), "batches": count,
                                     "audio_s_per_s": round(audio / max(count, 1) * median(rates), 2)}
    return out


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


class AugmentingCollate:
    """collate_audio, then the waveform augmentations, the log-Mel frontend and the spectrogram
    augmentations of one batch: what a loader worker does when the augmentation runs in the loader
    (picklable, so DataLoader workers run it in parallel with the training process)."""

    def __init__(self, config: str):
        from speechssl.augment import SpectrogramAugment, WaveformAugment, augment_config
        from speechssl.config import load_yaml
        from speechssl.features.base import build_frontend

        cfg = augment_config(load_yaml(config))
        self.names = cfg.waveform.enabled() + cfg.spectrogram.enabled()
        self.wave, self.spec = WaveformAugment(cfg.waveform), SpectrogramAugment(cfg.spectrogram, 80)
        self.frontend = build_frontend({"name": "logmel", "n_mels": 80})
        self.seconds = 0.0  # time spent augmenting (in this process)

    def __call__(self, items):
        from speechssl.data.dataset import collate_audio

        batch = collate_audio(items)
        t0 = time.perf_counter()
        with torch.no_grad():
            wavs, lengths = self.wave(batch["wavs"], batch["lengths"])
            feats, frames = self.frontend(wavs, lengths)
            batch["feats"], batch["frames"] = self.spec(feats, frames), frames
        self.seconds += time.perf_counter() - t0
        return batch


def augment_rate(spec: dict) -> dict:
    """spec: ``manifest``, ``batch_seconds``, ``crop_seconds``, ``epochs``, ``config`` (augmentation YAML),
    ``num_workers`` (list, default [0]).

    Batches/s of the loader with the waveform augmentations, the log-Mel frontend and the spectrogram
    augmentations of ``config`` applied to each batch in the loading process (workers 0: the main
    process, one thread; N: N worker processes of one thread each, as ``data.num_workers`` runs them),
    per worker count, the best, and (workers 0) the share of the time spent augmenting."""
    from speechssl.data import make_loader, read_manifest

    torch.set_num_threads(spec.get("threads", 1))
    records = read_manifest(spec["manifest"])
    out: dict = {}
    names: list[str] = []
    for workers in spec.get("num_workers", [0]):
        collate = AugmentingCollate(spec["config"])
        names = collate.names
        loader = make_loader(records, max_batch_seconds=spec["batch_seconds"], max_seconds=spec["crop_seconds"],
                             num_workers=workers, seed=0)
        # DataLoader fixes collate_fn at construction: rebuild it with the augmenting one
        loader.dataloader = torch.utils.data.DataLoader(
            loader.dataset, batch_sampler=loader.sampler, collate_fn=collate, num_workers=workers,
            worker_init_fn=_one_thread if workers else None)
        rates, aug_share, count = [], [], 0
        for epoch in range(spec["epochs"] + 1):  # epoch 0 is warm-up (file cache, worker start)
            loader.set_epoch(epoch)
            collate.seconds = 0.0
            t0, n = time.perf_counter(), 0
            for _ in loader:
                n += 1
            if epoch:
                total = time.perf_counter() - t0
                rates.append(n / total)
                aug_share.append(collate.seconds / total)
                count += n
        row = {"batches_per_s": round(median(rates), 3), "batches": count}
        if not workers:
            row["augment_time_share"] = round(median(aug_share), 3)
        out[f"workers_{workers}"] = row
    best = max(out.values(), key=lambda r: r["batches_per_s"])
    return {"augmentations": names, "batches_per_s": best["batches_per_s"],
            "best_workers": int(max(out, key=lambda k: out[k]["batches_per_s"]).split("_")[1]),
            "augment_time_share": out.get("workers_0", {}).get("augment_time_share", float("nan")), **out}


def epoch_scaling(spec: dict) -> dict:
    """spec: ``manifest``, ``fraction`` (0-1 of the records), ``family``, ``size``, ``batch_seconds``,
    ``crop_seconds``, ``threads``. One epoch: loader + training steps; wall time and peak RSS."""
    from speechssl.data import make_loader, read_manifest

    torch.set_num_threads(spec["threads"])
    records = read_manifest(spec["manifest"])
    records = records[: max(1, round(len(records) * spec["fraction"]))]
    model = build(spec["family"], spec["size"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loader = make_loader(records, max_batch_seconds=spec["batch_seconds"], max_seconds=spec["crop_seconds"],
                         seed=0, min_samples=model.min_samples)
    model.train()
    t0, steps, audio = time.perf_counter(), 0, 0.0
    for batch in loader:
        opt.zero_grad(set_to_none=True)
        model.loss(batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
        audio += float(batch["lengths"].sum()) / SAMPLE_RATE
    return {"records": len(records), "steps": steps, "audio_seconds": round(audio, 2),
            "wall_s": round(time.perf_counter() - t0, 3), "peak_rss_mib": round(peak_rss_mib(), 1)}


def synth_corpus_child(spec: dict) -> dict:
    """spec: ``out``, ``speakers``, ``utts``."""
    return {"manifest": str(synth_corpus(Path(spec["out"]), spec["speakers"], spec["utts"]))}


def extract_scaling(spec: dict) -> dict:
    """spec: ``seconds`` (list, e.g. 1x 2x 4x), ``family``, ``threads``, ``workdir``.

    ``speechssl extract`` over folders of 5-s files totalling each length, each in a fresh child of
    tools/bench/extract.py; wall time and peak RSS, and their ratios to the first size."""
    import sys

    from common import BENCH_DIR

    sys.path.insert(0, str(BENCH_DIR))
    import extract

    work = Path(spec["workdir"])
    work.mkdir(parents=True, exist_ok=True)
    source = extract._child("release", {"family": spec["family"], "workdir": str(work)})
    if "error" in source:
        return source
    runs = []
    for seconds in spec["seconds"]:
        folder = work / f"audio_{seconds:g}s"
        if not folder.is_dir():
            folder.mkdir()
            for i in range(max(1, round(seconds / 5.0))):
                extract._write_wav(folder / f"u{i:03d}.wav", 5.0, 1000 + i)
        child = {"threads": spec["threads"], "layers": "all", "batch_seconds": 20.0, "chunk_seconds": 30.0,
                 "overlap_seconds": 4.0, "encoder": source["encoder"], "input": str(folder),
                 "out": str(work / f"feats_{seconds:g}_{time.time_ns()}")}
        runs.append(extract._child("extract", child))
    out = {"family": spec["family"], "batch_seconds": 20.0, "runs": runs}
    if all("error" not in r for r in runs):
        out["audio_ratios"] = [round(r["audio_seconds"] / runs[0]["audio_seconds"], 3) for r in runs]
        out["time_ratios"] = [round(r["wall_seconds"] / runs[0]["wall_seconds"], 3) for r in runs]
        out["peak_rss_ratios"] = [round(r["peak_rss_mib"] / runs[0]["peak_rss_mib"], 3) for r in runs]
    return out


if __name__ == "__main__":
    print(json.dumps(matmul_peak({"threads": 2, "size": 1024, "repeats": 3})))
