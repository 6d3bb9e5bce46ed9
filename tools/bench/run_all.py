"""The speechssl benchmark suite: one command, ``bench/results.json`` + ``bench/results.md``.

Usage:
  .venv/bin/python tools/bench/run_all.py --out bench            # everything (make bench)
  .venv/bin/python tools/bench/run_all.py --out bench --quick    # small sizes, a smoke run
  .venv/bin/python tools/bench/run_all.py --out bench --only frontends,extract

Sections (each runs in its own child process, so peak memory and thread pools are per section):

* ``frontends``: log-Mel / fbank, speechssl vs torchaudio vs librosa (tools/bench/frontends.py);
* ``extract``: wav2vec2 Base ours vs torchaudio vs HF (fp32, bf16), per-family RTF + peak RSS,
  the long file (tools/bench/extraction.py, tools/bench/extract.py);
* ``pretrain``: steps/s, audio-s/s and FLOP/s as a fraction of the measured matmul peak
  (tools/bench/pretrain.py);
* ``peers`` (not in the default run, see DEFAULT_SECTIONS): our training step vs the peers' own
  (Hugging Face ``Wav2Vec2ForPreTraining`` for wav2vec 2.0 Base, fp32 and bf16; s3prl's ``pretrain/apc`` expert for APC 3 x 512;
  torchaudio ``hubert_pretrain_base()`` + its examples' ``hubert_loss`` for HuBERT Base), losses and
  gradients checked equal on the same batch, masks, distractors and weights first
  (tools/bench/peers.py, HuBERT in tools/bench/peers_hubert.py);
* ``hubert`` (not in the default run): HuBERT Base extraction, ours vs torchaudio ``hubert_base()`` with
  the same weights, every layer (tools/bench/extraction.py); the HuBERT Base training-step rows vs
  torchaudio ``hubert_pretrain_base()`` are in ``peers``;
* ``kmeans``: HuBERT target k-means fit + assign for 1 h and 4 h of synthetic 39-dim MFCC-like frames
  (tools/bench/kmeans.py);
* ``data2vec`` (not in the default run): data2vec 2.0 vs wav2vec 2.0 training steps of the same encoder
  size (tiny and Base), interleaved: audio-seconds/s and fraction of the matmul peak (tools/bench/pretrain.py);
* ``quality`` (only with ``--from EXP_DIR``): time to quality of a finished demo run, best-layer probe
  accuracy vs pretraining CPU-minutes per family (tools/bench/quality.py; OUT/quality.png + .json);
* ``compile`` (not in the default run: inductor takes minutes per model): ``torch.compile`` of
  each family's training step and extraction at tiny size, compile time, per-step gain, losses
  compared (tools/bench/compiled.py);
* ``data``: loader batches/s, plain and with the augmentations of recipes/augment/speech.yaml, vs each
  model's step rate at the same batch size;
* ``scaling``: extraction and one pretraining epoch at 1x, 2x, 4x the data (time, peak RSS, ratios);
* ``profile``: torch.profiler of the wav2vec2 Base step and inference, APC and CPC steps
  (tables in ``<out>/profile_*.txt``).

Comparisons are interleaved repetitions in one process, median after warm-up, reported as
ratios. ``OMP_WAIT_POLICY=PASSIVE`` is set for the children unless already set: on a loaded
machine spinning OpenMP/OpenBLAS workers of one library steal the cores from the other and make
interleaved comparisons meaningless (measured: 3-17x swings); the value is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, run_child  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
from report import write_markdown  # noqa: E402

SECTIONS = ("frontends", "extract", "pretrain", "peers", "compile", "data", "scaling", "profile", "hubert", "kmeans",
            "data2vec", "quality", "infonce")
# ``--only compile`` and ``--only peers`` run those two: inductor takes minutes per model, and the
# wav2vec 2.0 Base peer rows (ours and Hugging Face, fp32 and bf16) have not yet been timed on an idle
# machine, so they stay out of `make bench`'s 15-minute budget until they are.
# ``hubert`` (HuBERT Base extraction vs torchaudio) and ``data2vec`` (data2vec 2.0 vs wav2vec 2.0 steps,
# tiny and Base, interleaved) are Base-size rows measured once on a loaded machine, so they stay out
# like ``peers``; ``quality`` reads a finished demo run (``--from EXP_DIR``).
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s not in ("compile", "peers", "hubert", "data2vec", "quality"))

# (family, size, batch size, crop seconds) of the training-step measurements
# data2vec 2.0 next to wav2vec 2.0 of the same encoder size (its claim: the same accuracy in 10.6x less
# time); its step includes the teacher pass and clone_batch masks per utterance (8 for Base, 4 tiny)
FULL_MODELS = [["apc", "tiny", 8, 4.0], ["cpc", "tiny", 8, 4.0], ["wav2vec2", "tiny", 8, 4.0],
               ["data2vec2", "tiny", 8, 4.0], ["simclr", "tiny", 8, 4.0], ["barlow", "tiny", 8, 4.0],
               ["apc", "base", 4, 4.0], ["cpc", "base", 4, 4.0], ["wav2vec2", "base", 2, 4.0],
               ["data2vec2", "base", 2, 4.0],
               # masked reconstruction: TERA base (3 x 768 on every 10 ms frame) next to MAE base
               # (12 x 768 on the visible quarter of the 20 ms tokens)
               ["tera", "tiny", 8, 4.0], ["mae", "tiny", 8, 4.0], ["tera", "base", 4, 4.0], ["mae", "base", 4, 4.0]]
QUICK_MODELS = [["apc", "tiny", 2, 2.0], ["cpc", "tiny", 2, 2.0], ["wav2vec2", "tiny", 2, 2.0]]


def sizes(quick: bool) -> dict:
    """Every size knob of the suite, full or quick."""
    if quick:
        return {"frontends": {"num_utts": 6, "seconds": 10.0, "repeats": 2},
                "compare": {"clip_seconds": [2.0], "repeats": 1, "dtypes": ["fp32", "bf16"]},
                "families": {"families": ["logmel", "fbank", "wav2vec2"], "short_seconds": 10.0,
                             "long_minutes": 1.0, "long_families": ["logmel", "wav2vec2"]},
                "pretrain": {"models": QUICK_MODELS, "steps": 2, "matmul": {"size": 512, "repeats": 3}},
                "peers": {"wav2vec2": {"size": "tiny", "batch_size": 2, "crop_seconds": 1.0, "repeats": 2,
                                       "dtypes": ["fp32", "bf16"]},
                          "apc": {"size": "tiny", "batch_size": 2, "crop_seconds": 1.0, "repeats": 2, "dtypes": ["fp32"]},
                          "hubert": {"size": "tiny", "batch_size": 2, "crop_seconds": 1.0, "repeats": 2,
                                     "dtypes": ["fp32", "bf16"], "matmul_size": 512}},
                "hubert": {"size": "tiny", "clip_seconds": [2.0], "repeats": 1},
                "kmeans": {"hours": [0.1, 0.4], "k": 100, "n_init": 3},
                "data2vec": [{"families": ["data2vec2", "wav2vec2"], "size": "tiny", "batch_size": 2, "crop_seconds": 2.0,
                              "repeats": 2, "matmul": {"size": 512}}],
                "compile": {"families": ["apc", "cpc", "wav2vec2", "bestrq"], "batch_size": 2, "crop_seconds": 1.0,
                            "repeats": 2},
                "corpus": {"speakers": 2, "utts": 4}, "loader": {"num_workers": [0], "epochs": 1},
                "formant": {"sentences": 3, "repeats": 1},
                "scaling": {"extract_seconds": [5.0, 10.0, 20.0], "family": "logmel", "train": ["wav2vec2", "tiny"]},
                "profile": [["wav2vec2", "tiny", 2, 2.0, "train", 1]],
                "infonce": {"shapes": [[8, 100, 4, 100, 256], [8, 100, 4, 10, 256]], "repeats": 2}}
    return {"frontends": {"num_utts": 60, "seconds": 10.0, "repeats": 5},
            "compare": {"clip_seconds": [4.0, 10.0, 15.0], "repeats": 3, "dtypes": ["fp32", "bf16"]},
            "families": {"families": ["logmel", "fbank", "mfcc", "apc", "cpc", "wav2vec2", "tera", "mae"],
                         "short_seconds": 60.0,
                         "long_minutes": 10.0, "long_families": ["logmel", "wav2vec2"]},
            "pretrain": {"models": FULL_MODELS, "steps": 3, "matmul": {"size": 1024, "repeats": 5}},
            # Base rows: two warm-up steps per side (measured 2026-11-29 on an AVX-512 AMD EPYC: with one, the
            # first timed bf16 steps of ours were 1.3-1.4x the later ones and the HuBERT bf16 ratio read 0.79x
            # instead of 1.13x)
            "peers": {"wav2vec2": {"size": "base", "batch_size": 2, "crop_seconds": 4.0, "repeats": 7, "warmup": 2,
                                   "dtypes": ["fp32", "bf16"]},
                      "apc": {"size": "paper", "batch_size": 4, "crop_seconds": 4.0, "repeats": 5, "dtypes": ["fp32"]},
                      # HuBERT Base vs torchaudio hubert_pretrain_base() + its examples' loss, same batch as wav2vec2
                      "hubert": {"size": "base", "batch_size": 2, "crop_seconds": 4.0, "repeats": 7, "warmup": 2,
                                 "dtypes": ["fp32", "bf16"], "matmul_size": 1024}},
            "hubert": {"size": "base", "clip_seconds": [4.0, 10.0, 15.0], "repeats": 3},
            # fit + assign of HuBERT iteration-1 targets, 1 h and 4 h of 39-dim frames (fairseq's n_init 20)
            "kmeans": {"hours": [1.0, 4.0], "k": 100, "n_init": 20},
            # data2vec 2.0 vs wav2vec 2.0 of the same encoder size, interleaved (the batches of FULL_MODELS)
            "data2vec": [{"families": ["data2vec2", "wav2vec2"], "size": "tiny", "batch_size": 8, "crop_seconds": 4.0,
                          "repeats": 3, "matmul": {"size": 1024}},
                         {"families": ["data2vec2", "wav2vec2"], "size": "base", "batch_size": 2, "crop_seconds": 4.0,
                          "repeats": 3, "matmul": {"size": 1024}}],
            "compile": {"families": ["apc", "cpc", "wav2vec2", "bestrq"], "batch_size": 4, "crop_seconds": 2.0,
                        "repeats": 5},
            "corpus": {"speakers": 4, "utts": 16}, "loader": {"num_workers": [0, 2], "epochs": 2},
            "formant": {"sentences": 12, "repeats": 3},
            "scaling": {"extract_seconds": [15.0, 30.0, 60.0], "family": "wav2vec2", "train": ["wav2vec2", "tiny"]},
            # APC Base's GRU runs step by step (~40k operator events per second of audio): a small
            # batch keeps the profiler's event buffer in memory (4 x 4 s was killed)
            "profile": [["wav2vec2", "base", 2, 4.0, "train", 2], ["wav2vec2", "base", 1, 15.0, "infer", 2],
                        ["apc", "base", 2, 2.0, "train", 1], ["cpc", "base", 4, 4.0, "train", 2]],
            # CPC InfoNCE, gathered vs dense negatives: the demo recipe's shape (8 x 1 s, 100 negatives),
            # then fewer negatives (the rule's boundary) and CPC modified's (gathered: scores would not fit)
            "infonce": {"shapes": [[8, 100, 4, 100, 256], [8, 100, 4, 50, 256], [8, 100, 4, 32, 256],
                                   [8, 100, 4, 10, 256], [16, 128, 12, 128, 256]], "repeats": 5}}


def _ratios(values: list[float]) -> list[float]:
    return [round(v / values[0], 3) if values[0] else None for v in values]


def section_extract(cfg: dict, args, work: Path) -> dict:
    out = {"wav2vec2_base_comparison": run_child("extraction", "compare_wav2vec2",
                                                 {**cfg["compare"], "threads": args.threads})}
    fam = dict(cfg["families"])
    if args.long_minutes is not None:
        fam["long_minutes"] = args.long_minutes
    out.update(run_child("extraction", "families", {**fam, "threads": args.threads, "workdir": str(work / "extract")}))
    return out


def _corpus(cfg: dict, work: Path) -> str:
    return run_child("pretrain", "synth_corpus_child", {"out": str(work / "corpus"), **cfg["corpus"]})["manifest"]


def section_data(cfg: dict, args, work: Path, results: dict) -> dict:
    manifest = _corpus(cfg, work)
    batch_seconds = {f"{m[0]}_{m[1]}": m[2] * m[3] for m in cfg["pretrain"]["models"]}
    out: dict = {"manifest": manifest, "models": {},
                 "formant_renderer": run_child("pretrain", "formant_render_rate", cfg["formant"])}
    steps = (results.get("pretrain") or {}).get("models", {})
    if not steps:
        steps = run_child("pretrain", "throughput", {**cfg["pretrain"], "threads": args.threads}).get("models", {})
    augmented_rates: dict = {}
    for name, seconds in batch_seconds.items():
        crop = next(m[3] for m in cfg["pretrain"]["models"] if f"{m[0]}_{m[1]}" == name)
        rate = run_child("pretrain", "loader_rate", {"manifest": manifest, "batch_seconds": seconds, "crop_seconds": crop,
                                                     "threads": 1, **cfg["loader"]})
        if (seconds, crop) not in augmented_rates:  # one measurement per batch shape
            augmented_rates[(seconds, crop)] = run_child("pretrain", "augment_rate", {
                "manifest": manifest, "batch_seconds": seconds, "crop_seconds": crop, "threads": 1,
                "epochs": cfg["loader"]["epochs"], "num_workers": cfg["loader"]["num_workers"],
                "config": str(ROOT / "recipes" / "augment" / "speech.yaml")})
        augmented = augmented_rates[(seconds, crop)]
        step_rate = steps.get(name, {}).get("steps_per_s")
        entry = {"batch_seconds": seconds, "loader": rate, "loader_augmented": augmented,
                 "train_steps_per_s": step_rate}
        if step_rate and "error" not in rate:
            best = max(v["batches_per_s"] for v in rate.values())
            entry["loader_over_consumption"] = round(best / step_rate, 2)
            entry["keeps_up"] = best >= step_rate
        if step_rate and "error" not in augmented:
            entry["augmented_loader_over_consumption"] = round(augmented["batches_per_s"] / step_rate, 2)
            entry["keeps_up_augmented"] = augmented["batches_per_s"] >= step_rate
        out["models"][name] = entry
    return out


def section_scaling(cfg: dict, args, work: Path) -> dict:
    sc = cfg["scaling"]
    ext = run_child("pretrain", "extract_scaling", {"seconds": sc["extract_seconds"], "family": sc["family"],
                                                    "threads": args.threads, "workdir": str(work / "scaling")})
    manifest = _corpus(cfg, work)
    family, size = sc["train"]
    epochs = [run_child("pretrain", "epoch_scaling", {"manifest": manifest, "fraction": f, "family": family, "size": size,
                                                      "batch_seconds": 16.0, "crop_seconds": 4.0, "threads": args.threads})
              for f in (0.25, 0.5, 1.0)]
    out = {"extraction": ext, "epoch": {"model": f"{family}_{size}", "runs": epochs}}
    if all("error" not in e for e in epochs):
        out["epoch"]["audio_ratios"] = _ratios([e["audio_seconds"] for e in epochs])
        out["epoch"]["time_ratios"] = _ratios([e["wall_s"] for e in epochs])
        out["epoch"]["peak_rss_ratios"] = _ratios([e["peak_rss_mib"] for e in epochs])
    return out


def section_peers(cfg: dict, args, results: dict, save) -> dict:
    """One child per family and dtype (a slow bf16 row cannot lose the fp32 one); saved after each."""
    out: dict = {}
    results["peers"] = out
    for fam, spec in cfg["peers"].items():
        if args.peer_families and fam not in args.peer_families.split(","):
            continue
        dtypes = [d for d in spec["dtypes"] if not args.peer_dtypes or d in args.peer_dtypes.split(",")]
        for dtype in dtypes:
            part = run_child("peers_hubert" if fam == "hubert" else "peers", f"{fam}_rows", {**spec, "dtypes": [dtype], "threads": args.threads})
            if "error" in part:
                out.setdefault(fam, {}).setdefault("rows", {})[dtype] = {"error": part["error"]}
            else:
                rows = {**out.get(fam, {}).get("rows", {}), **part.pop("rows")}
                out[fam] = {**part, "rows": rows}
            save()
    return out


def section_profile(cfg: dict, args, out_dir: Path) -> dict:
    runs = {}
    for family, size, batch_size, crop, mode, steps in cfg["profile"]:
        name = f"{family}_{size}_{mode}"
        runs[name] = run_child("profiling", "profile_model", {
            "family": family, "size": size, "batch_size": batch_size, "crop_seconds": crop, "mode": mode,
            "steps": steps, "threads": args.threads, "table_path": str(out_dir / f"profile_{name}.txt")})
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench", help="output folder (results.json, results.md, profile tables)")
    p.add_argument("--quick", action="store_true", help="small sizes (a couple of minutes)")
    p.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default: all but compile and peers)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in every measurement")
    p.add_argument("--long-minutes", type=float, default=None,
                   help="length of the long-file extraction (default 10 full, 1 quick; 60 for the 1-hour figure)")
    p.add_argument("--long-json", default=None,
                   help="merge the long_file section of a tools/bench/extract.py JSON (e.g. its 60-min run) "
                        "into results as extract.long_file_60min")
    p.add_argument("--keep-work", action="store_true",
                   help="keep OUT/work (the synthetic corpora and extracted features, ~2.5 GB in a full run)")
    p.add_argument("--peer-families", default=None,
                   help=f"peers: comma-separated subset of {','.join(sizes(False)['peers'])} (default: all)")
    p.add_argument("--peer-dtypes", default=None,
                   help="peers: comma-separated subset of fp32,bf16 (default: each family's own; bf16 Base rows "
                        "take over 10 minutes on CPUs without native bf16)")
    p.add_argument("--from", dest="from_dir", default=None,
                   help="quality: a demo run's exp dir (egs/synthetic/ssl/exp_all): probe accuracy vs CPU-minutes "
                        "from each pretraining folder's metrics.jsonl (OUT/quality.png, OUT/quality.json)")
    p.add_argument("--quality-threads", type=int, default=None,
                   help="quality: threads of every pretraining run when config.yaml has no train.num_threads")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        p.error(f"--only: unknown section(s) {unknown}; choices: {', '.join(SECTIONS)}")
    bad_dtypes = sorted(set((args.peer_dtypes or "fp32").split(",")) - {"fp32", "bf16"})
    if bad_dtypes:
        p.error(f"--peer-dtypes: unknown dtype(s) {bad_dtypes}; choices: fp32, bf16")
    if "quality" in only and not args.from_dir:
        p.error("--only quality needs --from EXP_DIR (a demo run's experiment folder, e.g. egs/synthetic/ssl/exp_all)")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "work"
    cfg = sizes(args.quick)
    results: dict = {"environment": {**environment(), "threads": args.threads,
                                     "omp_wait_policy": os.environ["OMP_WAIT_POLICY"]},
                     "mode": "quick" if args.quick else "full", "sections": only, "seconds": {}}
    results_path = out_dir / "results.json"
    if results_path.is_file():  # --only keeps the other sections of an earlier run
        try:
            old = json.loads(results_path.read_text())
            if old.get("mode") == results["mode"]:
                results.update({k: v for k, v in old.items() if k in SECTIONS and k not in only})
                results["seconds"] = {k: v for k, v in old.get("seconds", {}).items() if k in SECTIONS and k not in only}
        except json.JSONDecodeError:
            pass

    def save() -> None:
        from speechssl.utils import atomic_write_json

        results["environment"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        atomic_write_json(results_path, results)
        write_markdown(results, out_dir / "results.md")

    for section in SECTIONS:
        if section not in only:
            continue
        t0 = time.perf_counter()
        print(f"[bench] {section} ...", file=sys.stderr, flush=True)
        if section == "frontends":
            results[section] = run_child("frontends", "run", {**cfg["frontends"], "threads": args.threads})
        elif section == "extract":
            results[section] = section_extract(cfg, args, work)
        elif section == "pretrain":
            results[section] = run_child("pretrain", "throughput", {**cfg["pretrain"], "threads": args.threads})
        elif section == "peers":
            results[section] = section_peers(cfg, args, results, save)
        elif section == "compile":
            spec = {k: v for k, v in cfg["compile"].items() if k != "families"}
            results[section] = {fam: run_child("compiled", "family_compile", {**spec, "family": fam, "threads": args.threads})
                                for fam in cfg["compile"]["families"]}
        elif section == "hubert":
            results[section] = {"extraction": run_child("extraction", "compare_hubert",
                                                        {**cfg["hubert"], "threads": args.threads})}
        elif section == "kmeans":
            results[section] = run_child("kmeans", "fit_assign", {**cfg["kmeans"], "threads": args.threads})
        elif section == "data2vec":
            results[section] = {spec["size"]: run_child("pretrain", "paired_steps", {**spec, "threads": args.threads})
                                for spec in cfg["data2vec"]}
        elif section == "quality":
            results[section] = run_child("quality", "build", {"exp_dir": args.from_dir, "out": str(out_dir),
                                                             "threads": args.quality_threads})
        elif section == "infonce":
            results[section] = run_child("infonce", "run", {**cfg["infonce"], "threads": args.threads})
        elif section == "data":
            results[section] = section_data(cfg, args, work, results)
        elif section == "scaling":
            results[section] = section_scaling(cfg, args, work)
        else:
            results[section] = section_profile(cfg, args, out_dir)
        results["seconds"][section] = round(time.perf_counter() - t0, 1)
        print(f"[bench] {section} done in {results['seconds'][section]} s", file=sys.stderr, flush=True)
        save()
    if args.long_json:
        long = json.loads(Path(args.long_json).read_text()).get("long_file", {})
        results.setdefault("extract", {})["long_file_60min"] = {
            fam: {**r, "source": args.long_json} for fam, r in long.items()}
    save()
    if not args.keep_work and work.is_dir():
        shutil.rmtree(work, ignore_errors=True)  # inputs of the measurements, not results
    print(f"wrote {results_path} and {out_dir / 'results.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
