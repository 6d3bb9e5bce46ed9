"""Feature-extraction benchmark on CPU: real-time factor and peak memory per model family.

Usage:
  .venv/bin/python tools/bench/extract.py --out bench_extract.json
  .venv/bin/python tools/bench/extract.py --families logmel,wav2vec2 --long-minutes 5 --out quick.json

Measures, each in a fresh child process (so peak RSS is per measurement):
* ``family``: ``speechssl extract``'s library call over ``--short-seconds`` of audio (utterances of
  2-15 s) with the paper-sized model of each family (randomly initialised: speed does not depend
  on the weights) and the baselines; real-time factor = wall seconds / audio seconds;
* ``long``: one synthesized ``--long-minutes`` file (default 60) through the chunked path
  (``--chunk-seconds``), layer ``context`` to npy, with wav2vec2 Base and logmel;
* ``torchaudio``: torchaudio's ``wav2vec2_base`` vs ours with the same weights
  (``importers.from_torchaudio``) on the same audio, same batches, same process, same threads;
  also the max |difference| of the last layer.

Not part of the test suite. Numbers depend on the load of the machine: the JSON records
the load average, CPU count and torch threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import SAMPLE_RATE, peak_rss_mib, synth_signal

FAMILIES = ("logmel", "fbank", "mfcc", "apc", "cpc", "wav2vec2")


def _write_wav(path: Path, seconds: float, seed: int) -> None:
    import soundfile as sf

    with sf.SoundFile(str(path), "w", SAMPLE_RATE, 1, subtype="PCM_16") as f:
        remaining, block = int(seconds * SAMPLE_RATE), SAMPLE_RATE * 300
        i = 0
        while remaining > 0:
            size = min(block, remaining)
            f.write(synth_signal(size / SAMPLE_RATE, seed + i))
            remaining -= size
            i += 1


def _encoder_source(family: str, workdir: Path) -> str:
    """A baseline name, or a release folder of the paper-sized model (random weights)."""
    if family in ("logmel", "fbank", "mfcc"):
        return family
    folder = workdir / f"release_{family}"
    if not (folder / "config.json").is_file():
        import torch

        from speechssl.config import to_dict
        from speechssl.models import apc, cpc, mae, tera, wav2vec2
        from speechssl.models.base import build_model
        from speechssl.upstream.release import save_released_encoder

        preset = {"apc": apc.apc_paper, "cpc": cpc.cpc_modified, "wav2vec2": wav2vec2.wav2vec2_base,
                  "tera": tera.tera_base, "mae": mae.mae_base}[family]()
        torch.manual_seed(0)
        save_released_encoder(build_model({"name": family, **to_dict(preset)}), folder)
    return str(folder)


def build_release(spec: dict) -> dict:
    """Child process: write the release folder (keeps the parent small)."""
    return {"encoder": _encoder_source(spec["family"], Path(spec["workdir"]))}


def measure_extract(spec: dict) -> dict:
    """Child process: one extraction run; returns timing and peak memory."""
    import torch

    from speechssl.extract import ExtractConfig, extract_features

    torch.set_num_threads(spec["threads"])
    rss_start = peak_rss_mib()
    cfg = ExtractConfig(layers=spec["layers"], format="npy", batch_seconds=spec["batch_seconds"],
                        chunk_seconds=spec["chunk_seconds"], overlap_seconds=spec["overlap_seconds"], progress=False)
    t0 = time.perf_counter()
    summary = extract_features(spec["encoder"], spec["input"], spec["out"], cfg)
    wall = time.perf_counter() - t0
    return {"audio_seconds": round(summary.seconds, 2), "wall_seconds": round(wall, 2),
            "rtf": round(wall / max(summary.seconds, 1e-9), 5), "written": summary.written,
            "failed": summary.failed, "peak_rss_mib": round(peak_rss_mib(), 1),
            "rss_after_imports_mib": round(rss_start, 1)}


def measure_torchaudio(spec: dict) -> dict:
    """Child process: torchaudio wav2vec2_base vs ours (same weights, same audio and batches)."""
    import torch
    import torchaudio

    from speechssl.upstream import load_encoder
    from speechssl.upstream.importers import from_torchaudio

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    ta = torchaudio.models.wav2vec2_base().eval()
    ours = load_encoder(from_torchaudio(ta), layers="context")
    clips = [torch.from_numpy(synth_signal(s, i)) for i, s in enumerate(spec["clip_seconds"])]
    total = sum(c.numel() for c in clips) / SAMPLE_RATE

    def run_ta():
        outs = []
        for c in clips:
            feats, _ = ta.extract_features(c[None])
            outs.append(feats[-1][0])
        return outs

    def run_ours():
        return [ours(c[None], torch.tensor([c.numel()])).hidden_states[0][0] for c in clips]

    with torch.inference_mode():
        run_ta(), run_ours()  # warm-up
        times = {"torchaudio": [], "speechssl": []}
        for _ in range(spec["repeats"]):  # interleaved, so load changes hit both alike
            t0 = time.perf_counter()
            ref = run_ta()
            times["torchaudio"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            got = run_ours()
            times["speechssl"].append(time.perf_counter() - t0)
        diff = max(float((a - b).abs().max()) for a, b in zip(ref, got))
    best = {k: min(v) for k, v in times.items()}
    return {"audio_seconds": round(total, 2), "repeats": spec["repeats"],
            "rtf_torchaudio": round(best["torchaudio"] / total, 5), "rtf_speechssl": round(best["speechssl"] / total, 5),
            "speedup_vs_torchaudio": round(best["torchaudio"] / best["speechssl"], 3),
            "max_abs_diff_last_layer": diff, "peak_rss_mib": round(peak_rss_mib(), 1)}


def _child(kind: str, spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--spec", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_extract.json")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--short-seconds", type=float, default=120.0, help="audio per family measurement")
    p.add_argument("--long-minutes", type=float, default=60.0, help="the long file (0: skip)")
    p.add_argument("--long-families", default="logmel,wav2vec2")
    p.add_argument("--chunk-seconds", type=float, default=30.0)
    p.add_argument("--overlap-seconds", type=float, default=2.0)
    p.add_argument("--no-torchaudio", action="store_true", help="skip the torchaudio comparison")
    p.add_argument("--batch-seconds", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--workdir", default=None, help="default: a temporary folder")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        fn = {"extract": measure_extract, "torchaudio": measure_torchaudio, "release": build_release}[args.child]
        print(json.dumps(fn(json.loads(args.spec))))
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_extract_"))
    work.mkdir(parents=True, exist_ok=True)
    result = {"cpu_count": os.cpu_count(), "threads": args.threads, "load_average_start": os.getloadavg(),
              "families": {}, "long_file": {}, "torchaudio_comparison": None}
    short_dir = work / "short"
    if not short_dir.is_dir():
        short_dir.mkdir()
        total, i = 0.0, 0
        lengths = [2.0, 4.5, 7.0, 9.5, 12.0, 15.0]
        while total < args.short_seconds:
            seconds = lengths[i % len(lengths)]
            _write_wav(short_dir / f"utt{i:03d}.wav", seconds, i)
            total, i = total + seconds, i + 1
    base = {"threads": args.threads, "layers": "all", "batch_seconds": args.batch_seconds,
            "chunk_seconds": args.chunk_seconds, "overlap_seconds": args.overlap_seconds}
    def source(family: str) -> str:
        return _child("release", {"family": family, "workdir": str(work)})["encoder"]

    def save() -> None:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    if not args.no_torchaudio:
        result["torchaudio_comparison"] = _child(
            "torchaudio", {"threads": args.threads, "clip_seconds": [4.0, 10.0, 15.0], "repeats": 5})
        print("torchaudio", result["torchaudio_comparison"], file=sys.stderr)
        save()
    for family in filter(None, args.families.split(",")):
        spec = {**base, "encoder": source(family), "input": str(short_dir),
                "out": str(work / f"feats_{family}_{time.time_ns()}")}
        result["families"][family] = _child("extract", spec)
        print(family, result["families"][family], file=sys.stderr)
        save()
    if args.long_minutes > 0:
        long_dir = work / f"long_{args.long_minutes:g}min"
        if not long_dir.is_dir():
            long_dir.mkdir()
            _write_wav(long_dir / "long.wav", args.long_minutes * 60, 7)
        for family in filter(None, args.long_families.split(",")):
            spec = {**base, "layers": "context" if family not in ("logmel", "fbank", "mfcc") else "all",
                    "encoder": source(family), "input": str(long_dir),
                    "out": str(work / f"long_{family}_{time.time_ns()}")}
            result["long_file"][family] = {"minutes": args.long_minutes, **_child("extract", spec)}
            print("long", family, result["long_file"][family], file=sys.stderr)
            save()
    result["load_average_end"] = os.getloadavg()
    save()
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
