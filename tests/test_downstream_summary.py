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


def test_roles_come_from_the_results_not_the_names(tmp_path):
    """Free names: the control is found by its recorded role and architecture, a baseline by role."""
    spk = _fake_results(tmp_path / "spk", {"mel": [0.30, 0.6], "mine": [0.45, 0.7], "untrained": [0.35, 0.6],
                                            "other": [0.50, 0.8]})
    data = json.loads((spk / "results.json").read_text())
    data["encoders"] = {"mel": {"spec": "logmel", "role": "baseline"},
                        "mine": {"spec": "/x/exp/apc/encoder", "role": "ssl", "architecture": "a1"},
                        "untrained": {"spec": "/x/exp/ctl/encoder", "role": "control", "architecture": "a1"},
                        "other": {"spec": "/x/exp/cpc/encoder", "role": "ssl", "architecture": "b2"}}
    (spk / "results.json").write_text(json.dumps(data))
    verdict = summarize_label_efficiency({"speaker": spk}, tmp_path / "summary.md", reference="mel")
    assert abs(verdict["encoders"]["mine"]["speaker"]["vs_control"] - 0.10) < 1e-9
    assert verdict["encoders"]["other"]["speaker"]["vs_control"] is None
    assert set(verdict["encoders"]) == {"mine", "other"}  # neither the baseline nor the control is judged
    text = (tmp_path / "summary.md").read_text()
    assert "| mel | baseline |" in text and "| untrained | control |" in text
    assert "+10.0 pts vs untrained" in text


def test_control_of_names_the_encoder_it_controls(tmp_path):
    from speechssl.downstream.summary import pair_controls

    described = {"a": {"role": "ssl", "spec": "/e/apc/encoder", "architecture": "x"},
                 "b": {"role": "ssl", "spec": "/e/apc_long/encoder", "architecture": "x"},
                 "r": {"role": "control", "control_of": "/e/apc_long", "architecture": "x"}}
    # control_of wins over the shared architecture; an encoder of the same architecture without a
    # control of its own is compared with the same control
    assert pair_controls(["a", "b", "r"], described) == {"b": "r", "a": "r"}
    assert pair_controls(["apc", "apc_random"], {}) == {"apc": "apc_random"}  # old results: names


def test_summary_legend_covers_no_panel(tmp_path):
    from speechssl.downstream.summary import summary_figure

    curves = {e: [0.3, 0.5] for e in ("logmel", "fbank", "apc", "apc_random", "cpc", "cpc_random")}
    loaded = {}
    for task in ("speaker", "style"):
        folder = _fake_results(tmp_path / task, curves)
        loaded[task] = json.loads((folder / "results.json").read_text())
        loaded[task]["runs"] = [{"train_size": 8, "shots": 1}]  # 8 classes: a chance line at 0.125
    fig = summary_figure(loaded, list(curves))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1
    labels = [t.get_text() for t in legends[0].get_texts()]
    assert labels[-1] == "chance" and set(curves) <= set(labels)
    box = legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), f"the legend covers panel {ax.get_title()}"


def test_summary_gives_each_family_its_own_colour(tmp_path):
    from matplotlib.colors import to_hex

    from speechssl.downstream.summary import summary_figure

    families = [f"fam{i}" for i in range(14)]  # more than tab10's ten colours (the demo has 14)
    curves = {"logmel": [0.3, 0.5]}
    for f in families:
        curves[f] = curves[f + "_random"] = [0.3, 0.5]
    folder = _fake_results(tmp_path / "speaker", curves)
    loaded = {"speaker": json.loads((folder / "results.json").read_text())}
    fig = summary_figure(loaded, list(curves))
    handles, labels = fig.axes[0].get_legend_handles_labels()  # errorbar containers: [0] is the data line
    colour = {name: to_hex(h[0].get_color()) for h, name in zip(handles, labels) if name != "chance"}
    assert len({colour[f] for f in families}) == len(families)
    assert all(colour[f] == colour[f + "_random"] for f in families)  # a control keeps its encoder's colour
