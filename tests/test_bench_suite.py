"""Smoke test of the benchmark suite's helpers (tools/bench) at tiny sizes. Never asserts speed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "tools" / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import frontends  # noqa: E402
import pretrain  # noqa: E402
import profiling  # noqa: E402
import report  # noqa: E402
import run_all  # noqa: E402


def test_compare_and_summarise_ratios():
    calls = {"a": 0, "b": 0}

    def bump(name):
        def fn():
            calls[name] += 1
        return fn

    times = common.compare({"a": bump("a"), "b": bump("b")}, repeats=3, warmup=2)
    assert calls == {"a": 5, "b": 5} and all(len(v) == 3 for v in times.values())
    s = common.summarise({"ref": [2.0, 2.0, 4.0], "fast": [1.0, 1.0, 9.0]}, "ref")
    assert s["fast"]["speedup_vs_ref"] == 2.0 and s["ref"]["speedup_vs_ref"] == 1.0
    assert common.peak_rss_mib() > 0


def test_frontends_match_references_tiny():
    out = frontends.run({"num_utts": 2, "seconds": 0.5, "repeats": 1, "threads": 1})
    assert out["logmel"]["max_abs_diff"]["torchaudio"] < 1e-3
    assert out["logmel"]["max_abs_diff"]["librosa"] < 1e-3
    assert out["fbank"]["max_abs_diff"]["torchaudio_kaldi"] < 1e-3
    assert set(out["logmel"]["times"]) == {"speechssl", "torchaudio", "librosa"}


def test_throughput_flops_and_profile_tiny(tmp_path):
    spec = {"threads": 1, "steps": 1, "matmul": {"size": 64, "repeats": 1},
            "models": [["wav2vec2", "tiny", 1, 0.5]]}
    out = pretrain.throughput(spec)
    r = out["models"]["wav2vec2_tiny"]
    assert r["gflop_per_step"] > 0 and r["fraction_of_matmul_peak"] > 0 and out["matmul_peak"]["fp32_gflops"] > 0
    prof = profiling.profile_model({"family": "apc", "size": "tiny", "batch_size": 1, "crop_seconds": 0.5,
                                    "mode": "infer", "steps": 1, "threads": 1, "table_path": str(tmp_path / "t.txt")})
    assert prof["top_ops"] and (tmp_path / "t.txt").read_text().strip()
    assert 0.0 <= prof["buckets_fraction_of_wall"]["python_dispatch_overhead"] <= 1.0


def test_markdown_report_and_quick_sizes(tmp_path):
    results = {"environment": {"commit": "abc", "date": "d", "cpu_model": "cpu", "threads": 2, "torch": "t"},
               "mode": "quick", "pretrain": {"matmul_peak": {"size": 64, "fp32_gflops": 10.0},
                                             "models": {"wav2vec2_base": {
                                                 "params_m": 95.0, "batch": [1, 2.0], "steps_per_s": 0.5,
                                                 "audio_s_per_s": 1.0, "gflop_per_step": 100.0,
                                                 "fraction_of_matmul_peak": 0.4}}},
               "extract": {"long_file": {"wav2vec2": {"minutes": 60, "rtf": 0.1, "peak_rss_mib": 3000.0}}}}
    report.write_markdown(results, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "commit `abc`" in text and text.count("MISSES") == 2  # 40 % < 60 %, 2.9 GiB > 2 GiB
    quick = run_all.sizes(quick=True)
    json.dumps(quick)
    assert set(quick) == set(run_all.sizes(quick=False))
    with pytest.raises(SystemExit):
        run_all.main(["--only", "nonsense", "--out", str(tmp_path)])


def test_a_quick_section_runs_end_to_end_and_cleans_its_work_folder(tmp_path):
    out = tmp_path / "bench"
    assert run_all.main(["--quick", "--only", "data", "--out", str(out), "--threads", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    rates = results["data"]
    assert results["mode"] == "quick" and results["sections"] == ["data"] and rates
    assert "loader" in (out / "results.md").read_text()
    # the formant synthesiser's speed is a bench row (not a timed unit test)
    assert results["data"]["formant_renderer"]["realtime_factor"] > 0
    assert "formant synthesiser" in (out / "results.md").read_text()
    # the kernels speechssl.accel chose are recorded with the CPU
    kernels = results["environment"]["kernels"]
    assert {"onednn_linear", "fast_gru", "cpu_vendor", "cpu_model", "isa"} <= set(kernels)
    assert not (out / "work").exists()  # the synthetic corpus is gone, the results stay


def test_the_infonce_section_compares_both_paths_on_the_same_numbers(tmp_path):
    out = tmp_path / "bench"
    assert run_all.main(["--quick", "--only", "infonce", "--out", str(out), "--threads", "1"]) == 0
    rows = json.loads((out / "results.json").read_text())["infonce"]["rows"]
    assert [r["rule_takes"] for r in rows.values()] == ["dense", "gathered"]  # 100 and 10 negatives of 800 frames
    for r in rows.values():
        assert r["gathered_ms"] > 0 and r["dense_ms"] > 0
        assert r["loss_abs_diff"] < 1e-4 and r["grad_max_abs_diff"] < 1e-5
    assert "CPC InfoNCE" in (out / "results.md").read_text()


def test_augmented_loader_rate_in_the_main_process_and_in_workers(tmp_path):
    """The augmented-loader row: every augmentation of recipes/augment/speech.yaml applied in the main
    process and in loader workers (the augmenting collate), the best rate reported; the report says
    whether it keeps up with a model's training step."""
    from helpers import make_corpus

    manifest = make_corpus(tmp_path / "c", n=6, seconds=(0.6, 0.9))
    config = str(BENCH.parents[1] / "recipes" / "augment" / "speech.yaml")
    out = pretrain.augment_rate({"manifest": str(manifest), "batch_seconds": 2.0, "crop_seconds": 0.5,
                                 "epochs": 1, "config": config, "num_workers": [0, 1]})
    assert {"speed", "pitch", "reverb", "noise", "time_mask"} <= set(out["augmentations"])
    assert out["workers_0"]["batches"] == out["workers_1"]["batches"] > 0
    assert out["batches_per_s"] == max(out["workers_0"]["batches_per_s"], out["workers_1"]["batches_per_s"])
    assert out["best_workers"] in (0, 1) and 0 < out["augment_time_share"] <= 1
    collate = pretrain.AugmentingCollate(config)
    from speechssl.data import make_loader, read_manifest

    loader = make_loader(read_manifest(manifest), max_batch_seconds=2.0, max_seconds=0.5, seed=0)
    items = [loader.dataset[i] for i in range(2)]
    batch = collate(items)
    assert batch["feats"].shape[0] == 2 and batch["feats"].shape[2] == 80 and collate.seconds > 0
    results = {"environment": {"commit": "abc", "date": "d", "cpu_model": "cpu", "threads": 2, "torch": "t"},
               "mode": "quick", "data": {"models": {"simclr_tiny": {
                   "batch_seconds": 2.0, "loader": {"workers_0": {"batches_per_s": 50.0}}, "train_steps_per_s": 4.0,
                   "loader_over_consumption": 12.5, "keeps_up": True, "loader_augmented": out,
                   "augmented_loader_over_consumption": round(out["batches_per_s"] / 1e6, 2),
                   "keeps_up_augmented": False}}}}
    report.write_markdown(results, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "loader + augmentations" in text and "MISSES" in text


def test_peer_dtypes_select_the_rows_and_reject_unknown_names(tmp_path, monkeypatch):
    with pytest.raises(SystemExit):
        run_all.main(["--only", "peers", "--peer-dtypes", "fp16", "--out", str(tmp_path)])
    calls = []

    def fake_child(module, function, spec):
        calls.append((function, tuple(spec["dtypes"])))
        return {"rows": {spec["dtypes"][0]: {"ratio": 1.0}}}

    monkeypatch.setattr(run_all, "run_child", fake_child)
    cfg = {"peers": {"wav2vec2": {"dtypes": ["fp32", "bf16"]}, "apc": {"dtypes": ["fp32"]}}}
    args = argparse.Namespace(peer_families=None, peer_dtypes="fp32", threads=1)
    results: dict = {}
    out = run_all.section_peers(cfg, args, results, lambda: None)
    assert calls == [("wav2vec2_rows", ("fp32",)), ("apc_rows", ("fp32",))]
    assert set(out["wav2vec2"]["rows"]) == {"fp32"}
    args.peer_dtypes = None  # default: every family's own dtypes
    calls.clear()
    run_all.section_peers(cfg, args, {}, lambda: None)
    assert calls == [("wav2vec2_rows", ("fp32",)), ("wav2vec2_rows", ("bf16",)), ("apc_rows", ("fp32",))]
