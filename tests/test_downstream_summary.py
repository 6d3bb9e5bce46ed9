"""The label-efficiency summary (SSL vs log-Mel vs random-init controls) and NAME=PATH encoders."""

from __future__ import annotations

import json

from speechssl.cli.main import main
from speechssl.corpora.synthetic import synthesize_corpus
from speechssl.downstream.summary import encoder_kind, summarize_label_efficiency


def _fake_results(folder, curves, shots=(1, 4)):
    folder.mkdir(parents=True)
    data = {
        "protocol": {"name": "label_efficiency", "shots": list(shots), "metric": "accuracy"},
        "curves": {
            enc: {str(n): {"mean": m, "std": 0.01, "scores": [m]} for n, m in zip(shots, means)}
            for enc, means in curves.items()
        },
        "runs": [],
    }
    (folder / "results.json").write_text(json.dumps(data))
    return folder


def test_encoder_kinds():
    assert [encoder_kind(n) for n in ("logmel", "fbank", "apc", "apc_random")] == ["baseline", "baseline", "ssl", "control"]


def test_summary_verdict(tmp_path):
    spk = _fake_results(tmp_path / "spk", {"logmel": [0.30, 0.6], "apc": [0.45, 0.7], "apc_random": [0.35, 0.6],
                                            "cpc": [0.50, 0.8], "cpc_random": [0.55, 0.7]})
    sty = _fake_results(tmp_path / "sty", {"logmel": [0.40, 0.5], "apc": [0.48, 0.6], "apc_random": [0.41, 0.5],
                                            "cpc": [0.45, 0.6], "cpc_random": [0.40, 0.5]})
    verdict = summarize_label_efficiency({"speaker": spk, "style": sty}, tmp_path / "summary.md", tmp_path / "s.png")
    # cpc loses to its own control on speaker at n=1, so only apc wins everywhere.
    assert verdict["winners"] == ["apc"]
    assert abs(verdict["encoders"]["apc"]["speaker"]["vs_reference"] - 0.15) < 1e-9
    assert abs(verdict["encoders"]["cpc"]["speaker"]["vs_control"] + 0.05) < 1e-9
    text = (tmp_path / "summary.md").read_text()
    assert "| apc | ssl | 0.450 ± 0.010 | 0.700 ± 0.010 | 0.480 ± 0.010 | 0.600 ± 0.010 |" in text
    assert "+15.0 pts vs logmel" in text and "-5.0 pts vs cpc_random" in text
    assert "**Pretraining pays off**: apc" in text
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "summary.json").read_text())["winners"] == ["apc"]


def test_summary_says_when_nothing_wins(tmp_path):
    spk = _fake_results(tmp_path / "spk", {"logmel": [0.5, 0.6], "apc": [0.45, 0.7], "apc_random": [0.3, 0.6]})
    verdict = summarize_label_efficiency({"speaker": spk}, tmp_path / "summary.md")
    assert verdict["winners"] == []
    assert "No pretrained encoder beats" in (tmp_path / "summary.md").read_text()


def test_label_efficiency_named_encoders_and_feature_folders(tmp_path):
    manifest = synthesize_corpus(tmp_path / "synth", backend="formant", speakers=2, utts_per_speaker=8)
    feats = tmp_path / "feats"
    assert main(["extract", "--encoder", "logmel", "--input", str(manifest), "--out", str(feats), "--format", "npy"]) == 0
    out = tmp_path / "le"
    argv = ["downstream", "label-efficiency", "--encoders", f"logmel,precomputed={feats}", "--train", str(manifest),
            "--test", str(manifest), "--label", "speaker", "--shots", "1", "--seeds", "1", "--out", str(out),
            "--quiet", "train.max_steps=5"]
    assert main(argv) == 0
    curves = json.loads((out / "results.json").read_text())["curves"]
    assert set(curves) == {"logmel", "precomputed"}
    # The same features, computed on the fly or read from `speechssl extract`, give the same scores.
    assert curves["logmel"]["1"]["scores"] == curves["precomputed"]["1"]["scores"]
    assert main(["downstream", "label-efficiency", "--encoders", "logmel,logmel", "--train", str(manifest), "--test",
                 str(manifest), "--label", "speaker", "--shots", "1", "--out", str(tmp_path / "x")]) == 1
