"""Extraction benchmark: our wav2vec2 Base vs torchaudio vs Hugging Face, fp32 and bf16; RTF and peak memory.

Usage:
  .venv/bin/python tools/bench/run_all.py --only extract --out bench

* ``compare_wav2vec2(spec)``: torchaudio ``wav2vec2_base()`` (random init, seed 0), ours with the same
  weights (``importers.from_torchaudio``), and ``transformers.Wav2Vec2Model`` loaded from
  ``importers.export_hf`` of ours: the same clips, one utterance per call, interleaved repetitions,
  median after warm-up; fp32 and bf16 (``torch.autocast("cpu", torch.bfloat16)``). Records the max
  |difference| of the last layer against torchaudio (fp32) for each.
* ``families(spec)``: per model family, ``tools/bench/extract.py``'s ``measure_extract`` (the
  ``speechssl extract`` library call, paper-sized models) in a child process: RTF and peak RSS; and
  the long file (``long_minutes``, default 60) through the chunked path for wav2vec2 Base and logmel.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from common import BENCH_DIR, SAMPLE_RATE, compare, summarise, synth_signal


def compare_wav2vec2(spec: dict) -> dict:
    """spec: ``clip_seconds`` (list), ``repeats``, ``threads``, ``dtypes`` (subset of fp32, bf16)."""
    import torchaudio
    import transformers

    from speechssl.upstream.importers import export_hf, from_torchaudio

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    ta = torchaudio.models.wav2vec2_base().eval()
    ours = from_torchaudio(ta).eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(ours, Path(tmp) / "hf")
        transformers.logging.set_verbosity_error()
        hf = transformers.Wav2Vec2Model.from_pretrained(str(Path(tmp) / "hf")).eval()
    clips = [torch.from_numpy(synth_signal(s, i)) for i, s in enumerate(spec["clip_seconds"])]
    total = sum(c.numel() for c in clips) / SAMPLE_RATE

    def runner(kind: str, dtype: str):
        def run():
            outs = []
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                for c in clips:
                    if kind == "torchaudio":
                        outs.append(ta.extract_features(c[None])[0][-1][0])
                    elif kind == "speechssl":
                        outs.append(ours.encode(c[None], torch.tensor([c.numel()])).hidden_states[-1][0])
                    else:
                        outs.append(hf(c[None]).last_hidden_state[0])
            return [o.float() for o in outs]
        return run

    result: dict = {"audio_seconds": total, "clip_seconds": spec["clip_seconds"], "batch": 1}
    with torch.inference_mode():
        reference = runner("torchaudio", "fp32")()
        for dtype in spec["dtypes"]:
            fns = {kind: runner(kind, dtype) for kind in ("speechssl", "torchaudio", "hf")}
            diffs = {}
            for kind, fn in fns.items():
                got = fn()
                diffs[kind] = max(float((a - b).abs().max()) for a, b in zip(reference, got))
            times = compare(fns, repeats=spec["repeats"], warmup=1)
            summary = summarise(times, "torchaudio")
            for kind in summary:
                summary[kind]["rtf"] = round(summary[kind]["median_s"] / total, 5)
                summary[kind]["max_abs_diff_vs_torchaudio_fp32"] = diffs[kind]
            result[dtype] = summary
    if "fp32" in result and "bf16" in result:
        result["bf16_speedup_speechssl"] = round(result["fp32"]["speechssl"]["median_s"]
                                                 / result["bf16"]["speechssl"]["median_s"], 3)
    return result


def compare_hubert(spec: dict) -> dict:
    """spec: ``clip_seconds`` (list), ``repeats``, ``threads``, optional ``size`` (``base``: torchaudio
    ``hubert_base()``; ``tiny``: the test size of tools/bench/peers_hubert.py).

    torchaudio's ``hubert_base()`` (random init, seed 0; the encoder of ``hubert_pretrain_base()``) vs
    our HuBERT holding its weights (``importers.from_torchaudio`` of the pretraining model around it):
    every layer of one utterance per call (torchaudio ``extract_features``, ours ``encode``), fp32,
    interleaved repetitions, median after warm-up; the max |difference| over every layer is recorded."""
    import torchaudio

    sys.path.insert(0, str(BENCH_DIR))
    import peers_hubert

    from speechssl.upstream.importers import from_torchaudio

    torch.set_num_threads(spec["threads"])
    size = spec.get("size", "base")
    cfg = peers_hubert.hubert_config(size)
    torch.manual_seed(0)
    pretrain_model = peers_hubert.torchaudio_hubert(cfg, size)
    if size == "base":
        ta = torchaudio.models.hubert_base()
        ta.load_state_dict(pretrain_model.wav2vec2.state_dict())
    else:
        ta = pretrain_model.wav2vec2
    ta.eval()
    ours = from_torchaudio(pretrain_model).eval()
    clips = [torch.from_numpy(synth_signal(s, i)) for i, s in enumerate(spec["clip_seconds"])]
    total = sum(c.numel() for c in clips) / SAMPLE_RATE

    def run_ta():
        return [ta.extract_features(c[None])[0] for c in clips]

    def run_ours():
        return [ours.encode(c[None], torch.tensor([c.numel()])).hidden_states[1:-1] for c in clips]

    with torch.inference_mode():
        diff = max(float((a - b).abs().max()) for x, y in zip(run_ta(), run_ours()) for a, b in zip(x, y))
        times = compare({"speechssl": run_ours, "torchaudio": run_ta}, repeats=spec["repeats"], warmup=1)
    summary = summarise(times, "torchaudio")
    for kind in summary:
        summary[kind]["rtf"] = round(summary[kind]["median_s"] / total, 5)
    peer = "torchaudio.models.hubert_base()" if size == "base" else "torchaudio hubert_pretrain_model (tiny).wav2vec2"
    return {"peer": f"{peer} (random init, same weights)", "size": size,
            "audio_seconds": total, "clip_seconds": spec["clip_seconds"], "batch": 1, "layers": "every layer",
            "max_abs_diff_every_layer": diff, "fp32": summary,
            "speedup": summary["speechssl"]["speedup_vs_torchaudio"], "target_speedup": 1.2,
            "meets_target": summary["speechssl"]["speedup_vs_torchaudio"] >= 1.2}


def families(spec: dict) -> dict:
    """spec: ``families``, ``short_seconds``, ``long_minutes``, ``long_families``, ``threads``, ``workdir``, ``timeout``.

    Every measurement is a fresh child of tools/bench/extract.py (its own peak RSS).
    """
    sys.path.insert(0, str(BENCH_DIR))
    import extract

    work = Path(spec["workdir"])
    work.mkdir(parents=True, exist_ok=True)
    short_dir = work / f"short_{spec['short_seconds']:g}s"
    if not short_dir.is_dir():
        short_dir.mkdir()
        total, i, lengths = 0.0, 0, [2.0, 4.5, 7.0, 9.5, 12.0, 15.0]
        while total < spec["short_seconds"]:
            extract._write_wav(short_dir / f"utt{i:03d}.wav", lengths[i % len(lengths)], i)
            total, i = total + lengths[i % len(lengths)], i + 1
    base = {"threads": spec["threads"], "layers": "all", "batch_seconds": 60.0, "chunk_seconds": 30.0,
            "overlap_seconds": 4.0}
    out: dict = {"short_seconds": spec["short_seconds"], "families": {}, "long_file": {}}
    for family in spec["families"]:
        source = extract._child("release", {"family": family, "workdir": str(work)})
        if "error" in source:
            out["families"][family] = source
            continue
        child = {**base, "encoder": source["encoder"], "input": str(short_dir),
                 "out": str(work / f"feats_{family}_{time.time_ns()}")}
        out["families"][family] = extract._child("extract", child)
    if spec["long_minutes"] > 0:
        long_dir = work / f"long_{spec['long_minutes']:g}min"
        if not long_dir.is_dir():
            long_dir.mkdir()
            extract._write_wav(long_dir / "long.wav", spec["long_minutes"] * 60, 7)
        for family in spec["long_families"]:
            source = extract._child("release", {"family": family, "workdir": str(work)})
            child = {**base, "layers": "all" if family in ("logmel", "fbank", "mfcc") else "context",
                     "encoder": source.get("encoder", family), "input": str(long_dir),
                     "out": str(work / f"long_{family}_{time.time_ns()}")}
            out["long_file"][family] = {"minutes": spec["long_minutes"], **extract._child("extract", child)}
    return out
