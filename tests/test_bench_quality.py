"""tools/bench/quality.py (time to quality) and the other new bench rows' library code, on tiny inputs.

The quality test writes a tiny synthetic demo exp dir by hand (metrics.jsonl + config.yaml as the
Trainer and the live probe write them) and checks the CPU-minutes, the best layer, the HuBERT
iteration offset, that controls are left out, and that the PNG and JSON are written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "bench"))

import kmeans  # noqa: E402
import quality  # noqa: E402


def _run(folder: Path, threads, probes: dict[int, dict[str, float]], seconds_per_step: float, max_steps: int = 200,
         control_of: str | None = None, probe_seconds: float = 3.0) -> None:
    folder.mkdir(parents=True)
    train = {"max_steps": max_steps, "num_threads": threads}
    if control_of:
        train["control_of"] = control_of
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": {"name": folder.name}, "train": train}))
    lines, elapsed = [], 0.0
    for step in range(0, max_steps + 1, 10):
        if step:  # the Trainer logs the step, then probes (its wall clock runs through the probe)
            lines.append({"split": "train", "step": step, "loss": 1.0, "time": elapsed})
        if step in probes:
            elapsed += probe_seconds
            rec = {"split": "probe", "step": step, "probe_seconds": probe_seconds, "probe_chance/speaker": 0.25,
                   "probe_chance/style": 0.25}
            rec.update({f"probe/{k}": v for k, v in probes[step].items()})
            lines.append(rec)
        elapsed += 10 * seconds_per_step
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def _probe(speaker: float, style: float) -> dict[str, float]:
    return {"speaker/layer_1": speaker, "speaker/context": speaker - 0.1, "style/layer_1": style - 0.05,
            "style/context": style}


@pytest.fixture
def exp_dir(tmp_path):
    exp = tmp_path / "exp_all"
    # apc: 1 thread, 0.6 s per step -> 100 steps = 1 CPU-minute (probe time excluded)
    _run(exp / "apc", 1, {0: _probe(0.3, 0.3), 100: _probe(0.5, 0.4), 200: _probe(0.6, 0.45)}, 0.6)
    # wav2vec2: 2 threads (config), 0.3 s per step -> also 1 CPU-minute per 100 steps
    _run(exp / "wav2vec2", 2, {0: _probe(0.35, 0.3), 100: _probe(0.4, 0.5), 200: _probe(0.7, 0.6)}, 0.3)
    _run(exp / "apc_random", 1, {0: _probe(0.3, 0.3)}, 0.6, max_steps=0, control_of="apc")
    # HuBERT: iteration 1, then iteration 2 in the folder "hubert", chained by hubert.encoders (run.sh)
    _run(exp / "hubert_it1", 1, {0: _probe(0.3, 0.3), 100: _probe(0.45, 0.4)}, 1.2, max_steps=100)
    _run(exp / "hubert", 1, {0: _probe(0.3, 0.3), 100: _probe(0.55, 0.5)}, 1.2, max_steps=100)
    (exp / "hubert.encoders").write_text(f"{exp}/hubert_it1/encoder\n")
    (exp / "feats").mkdir()  # other folders of a demo run are ignored
    return exp


def test_quality_curves_cpu_minutes_best_layer_and_figure(exp_dir, tmp_path):
    out = quality.build({"exp_dir": str(exp_dir), "out": str(tmp_path / "bench")})
    fams = out["families"]
    assert set(fams) == {"apc", "wav2vec2", "hubert_it1", "hubert"}  # the control is not a curve
    apc = fams["apc"]
    assert [p["step"] for p in apc["points"]] == [0, 100, 200]
    assert [p["cpu_minutes"] for p in apc["points"]] == pytest.approx([0.0, 1.0, 2.0])
    assert [p["cpu_minutes"] for p in fams["wav2vec2"]["points"]] == pytest.approx([0.0, 1.0, 2.0])
    assert fams["wav2vec2"]["threads"] == 2
    # best layer per point and label
    assert apc["points"][1]["speaker"] == {"accuracy": 0.5, "layer": "layer_1", "chance": 0.25}
    assert apc["points"][1]["style"]["layer"] == "context"
    assert apc["random_init"] == {"speaker": 0.3, "style": 0.3} and apc["final"] == {"speaker": 0.6, "style": 0.45}
    assert apc["at_cpu_minutes"]["speaker"] == {"1": 0.5, "2": 0.6, "4": None, "8": None}
    # iteration 2 starts where iteration 1 ended (2 CPU-minutes for 100 steps at 1.2 s)
    assert fams["hubert"]["after"] == "hubert_it1"
    assert [p["cpu_minutes"] for p in fams["hubert"]["points"]] == pytest.approx([2.0, 4.0])
    saved = json.loads((tmp_path / "bench" / "quality.json").read_text())
    assert saved["families"]["apc"]["points"] == apc["points"]
    png = (tmp_path / "bench" / "quality.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_quality_needs_threads_and_probe_records(tmp_path):
    _run(tmp_path / "a" / "apc", None, {0: _probe(0.3, 0.3), 100: _probe(0.5, 0.4)}, 0.6)
    with pytest.raises(ValueError, match="num_threads"):
        quality.build({"exp_dir": str(tmp_path / "a"), "out": str(tmp_path / "o")})
    got = quality.build({"exp_dir": str(tmp_path / "a"), "out": str(tmp_path / "o"), "threads": 2})
    assert got["families"]["apc"]["points"][1]["cpu_minutes"] == pytest.approx(2.0)
    assert got["families"]["apc"]["threads_from"] == "--quality-threads"
    _run(tmp_path / "b" / "apc", 1, {}, 0.6)
    with pytest.raises(ValueError, match="no pretraining folder with probe records"):
        quality.build({"exp_dir": str(tmp_path / "b"), "out": str(tmp_path / "o")})


def test_run_all_quality_section_needs_from(tmp_path, capsys):
    import run_all

    with pytest.raises(SystemExit):
        run_all.main(["--only", "quality", "--out", str(tmp_path)])
    assert "--from" in capsys.readouterr().err


def test_kmeans_bench_frames_and_rows():
    x = kmeans.mfcc_like_frames(0.01)
    assert x.shape == (3600, 39) and x.dtype == np.float32
    out = kmeans.fit_assign({"threads": 1, "hours": [0.005, 0.01], "k": 8, "n_init": 1})
    assert out["length_ratio"] == 2.0
    assert [r["frames"] for r in out["rows"].values()] == [1800, 3600]
    assert all(r["fit_s"] > 0 and r["assign_s"] > 0 and r["clusters_used"] == 8 for r in out["rows"].values())


def test_paired_steps_data2vec2_vs_wav2vec2_rows():
    import pretrain

    out = pretrain.paired_steps({"threads": 1, "families": ["data2vec2", "wav2vec2"], "size": "tiny", "batch_size": 1,
                                 "crop_seconds": 1.0, "repeats": 1, "matmul": {"size": 128}})
    d2v, w2v = out["models"]["data2vec2"], out["models"]["wav2vec2"]
    assert d2v["gflop_per_step"] > 0 and w2v["gflop_per_step"] > 0
    assert 0 < d2v["fraction_of_matmul_peak"] < 1.5 and 0 < w2v["fraction_of_matmul_peak"] < 1.5
    assert out["data2vec2_over_wav2vec2_audio_s_per_s"] == pytest.approx(d2v["audio_s_per_s"] / w2v["audio_s_per_s"],
                                                                         rel=1e-2)


def test_results_md_has_rows_for_the_new_sections(exp_dir, tmp_path):
    import report

    results = {"quality": quality.build({"exp_dir": str(exp_dir), "out": str(tmp_path / "q")}),
               "kmeans": kmeans.fit_assign({"threads": 1, "hours": [0.005, 0.01], "k": 8, "n_init": 1}),
               "data2vec": {"base": {"error": "killed"}}}
    text = "\n".join(" | ".join(r) for r in report.rows(results))
    assert "time to quality apc" in text and "speaker 0.3 -> 0.6" in text
    assert "k-means K=8" in text and "k-means at x2" in text
    assert "data2vec 2.0 vs wav2vec 2.0 base | error" in text
