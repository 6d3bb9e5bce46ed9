"""The label-efficiency summary (SSL vs log-Mel vs random-init controls) and NAME=PATH encoders."""

from __future__ import annotations

import json

import pytest

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


def test_encoders_not_ahead_are_named_with_the_margins_that_lose(tmp_path):
    spk = _fake_results(tmp_path / "spk", {"logmel": [0.30, 0.6], "apc": [0.45, 0.7], "apc_random": [0.35, 0.6],
                                            "cpc": [0.50, 0.8], "cpc_random": [0.55, 0.7]})
    sty = _fake_results(tmp_path / "sty", {"logmel": [0.40, 0.5], "apc": [0.48, 0.6], "apc_random": [0.41, 0.5],
                                            "cpc": [0.38, 0.6], "cpc_random": [0.40, 0.5]})
    verdict = summarize_label_efficiency({"speaker": spk, "style": sty}, tmp_path / "summary.md")
    assert list(verdict["behind"]) == ["cpc"]  # the winner apc is not listed
    losing = [(c["task"], c["against"], round(c["margin"], 6)) for c in verdict["behind"]["cpc"]]
    assert losing == [("speaker", "cpc_random", -0.05), ("style", "logmel", -0.02), ("style", "cpc_random", -0.02)]
    text = (tmp_path / "summary.md").read_text()
    assert ("**Not ahead on every task**: cpc (speaker vs cpc_random -5.0 pts, style vs logmel -2.0 pts, "
            "style vs cpc_random -2.0 pts).") in text
    # Also when nobody wins.
    summarize_label_efficiency({"style": sty}, tmp_path / "style_only.md")
    assert "**Not ahead on every task**: cpc (style vs logmel -2.0 pts" in (tmp_path / "style_only.md").read_text()


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


# Significance: every margin of the verdict carries a paired one-sided t-test over the seeds.

LOGMEL = [0.20, 0.25, 0.22, 0.28, 0.24]  # five seeds; the other encoders are offsets of it (paired noise)


def _seeded_results(folder, scores, shots=2, runs=None):
    """results.json with per-seed scores at one label budget: ``scores`` = {encoder: [one per seed]}."""
    folder.mkdir(parents=True)
    curves = {}
    for enc, xs in scores.items():
        mean = sum(xs) / len(xs)
        std = (sum((x - mean) ** 2 for x in xs) / len(xs)) ** 0.5
        curves[enc] = {str(shots): {"mean": mean, "std": std, "scores": list(xs)}}
    data = {"protocol": {"name": "label_efficiency", "shots": [shots], "metric": "accuracy"},
            "seeds": list(range(len(LOGMEL))), "curves": curves, "runs": runs or []}
    (folder / "results.json").write_text(json.dumps(data))
    return folder


def _offset(base, deltas):
    return [b + d for b, d in zip(base, deltas)]


def _expected_paired(mine, other):
    """(mean difference, standard error, one-sided p) from the t statistic, not from ttest_rel."""
    import math

    from scipy import stats

    d = [a - b for a, b in zip(mine, other)]
    n = len(d)
    mean = sum(d) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) / math.sqrt(n)
    return mean, se, float(stats.t.sf(mean / se, df=n - 1))


APC = _offset(LOGMEL, [0.06, 0.05, 0.07, 0.06, 0.055])
APC_RANDOM = _offset(LOGMEL, [0.02, 0.015, 0.03, 0.01, 0.02])
CPC = _offset(LOGMEL, [0.09, 0.10, 0.08, 0.11, 0.10])
CPC_RANDOM = [c - d for c, d in zip(CPC, [0.03, -0.02, 0.01, -0.015, 0.0])]  # cpc wins by +0.1 pts on average


def test_a_clear_win_is_significant(tmp_path):
    spk = _seeded_results(tmp_path / "spk", {"logmel": LOGMEL, "apc": APC, "apc_random": APC_RANDOM})
    verdict = summarize_label_efficiency({"speaker": spk}, tmp_path / "summary.md")
    entry = verdict["encoders"]["apc"]["speaker"]
    for key, other in (("vs_reference_paired", LOGMEL), ("vs_control_paired", APC_RANDOM)):
        mean, se, p = _expected_paired(APC, other)
        test = entry[key]
        assert test["n_pairs"] == 5 and test["significant"] is True
        assert abs(test["mean_diff"] - mean) < 1e-12 and abs(test["stderr"] - se) < 1e-12
        assert abs(test["p_value"] - p) < 1e-9 and p < 0.05
    assert entry["vs_control_paired"]["against"] == "apc_random"
    assert abs(entry["vs_control"] - entry["vs_control_paired"]["mean_diff"]) < 1e-12
    assert verdict["winners"] == verdict["significant_winners"] == ["apc"]
    assert verdict["winners_not_significant"] == {} and verdict["significance"]["alpha"] == 0.05
    text = (tmp_path / "summary.md").read_text()
    assert "**Pretraining pays off**: apc beats both logmel and its random-init control" in text
    assert "every margin significant (paired one-sided t-test over 5 seeds, p < 0.05)" in text
    assert "within noise)" not in text and "**Within noise**" not in text
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["significant_winners"] == ["apc"] and saved["encoders"]["apc"]["speaker"]["vs_control_paired"]


def test_a_win_within_noise_is_named_with_its_margin(tmp_path):
    spk = _seeded_results(tmp_path / "spk", {"logmel": LOGMEL, "apc": APC, "apc_random": APC_RANDOM,
                                            "cpc": CPC, "cpc_random": CPC_RANDOM})
    verdict = summarize_label_efficiency({"speaker": spk}, tmp_path / "summary.md")
    mean, se, p = _expected_paired(CPC, CPC_RANDOM)
    assert 0 < mean < 0.002 and 0.3 < p < 0.7
    assert verdict["winners"] == ["apc", "cpc"]  # unchanged meaning: positive on the means
    assert verdict["significant_winners"] == ["apc"]
    [weak] = verdict["winners_not_significant"]["cpc"]
    assert weak["task"] == "speaker" and weak["against"] == "cpc_random" and weak["significant"] is False
    assert abs(weak["p_value"] - p) < 1e-9 and abs(weak["stderr"] - se) < 1e-12
    text = (tmp_path / "summary.md").read_text()
    assert f"+0.1 pts vs cpc_random (p={p:.2f}, within noise)" in text
    assert "**Pretraining pays off**: apc beats" in text
    assert "**Within noise**: cpc beats both on the means" in text
    assert f"cpc (speaker vs cpc_random +0.1 pts, p={p:.2f})" in text


def test_only_noisy_winners_are_not_called_a_payoff(tmp_path):
    spk = _seeded_results(tmp_path / "spk", {"logmel": LOGMEL, "cpc": CPC, "cpc_random": CPC_RANDOM})
    verdict = summarize_label_efficiency({"speaker": spk}, tmp_path / "summary.md")
    assert verdict["winners"] == ["cpc"] and verdict["significant_winners"] == []
    text = (tmp_path / "summary.md").read_text()
    assert "Pretraining pays off" not in text
    assert "**No pretrained encoder beats both logmel and its random-init control significantly" in text


def test_results_without_per_seed_scores_keep_the_means(tmp_path):
    spk = _fake_results(tmp_path / "spk", {"logmel": [0.30, 0.6], "apc": [0.45, 0.7], "apc_random": [0.35, 0.6]})
    data = json.loads((spk / "results.json").read_text())
    for curve in data["curves"].values():
        for point in curve.values():
            del point["scores"]  # written before per-seed scores were stored
    (spk / "results.json").write_text(json.dumps(data))
    verdict = summarize_label_efficiency({"speaker": spk}, tmp_path / "summary.md")
    assert verdict["winners"] == ["apc"] and verdict["significant_winners"] == []
    test = verdict["encoders"]["apc"]["speaker"]["vs_reference_paired"]
    assert test["p_value"] is None and test["significant"] is None and test["n_pairs"] == 0
    assert abs(test["mean_diff"] - 0.15) < 1e-9 and "per-seed scores" in test["unknown_because"]
    text = (tmp_path / "summary.md").read_text()
    assert "(p=" not in text
    assert "**Pretraining pays off**: apc beats both logmel and its random-init control" in text
    assert "on the means alone (significance unknown: no per-seed scores in results.json)" in text


def test_identical_scores_give_no_nan(tmp_path):
    import warnings

    from speechssl.downstream.significance import paired_test

    plus5 = _offset(LOGMEL, [0.05] * 5)  # a constant +5 pts over logmel, equal to its control
    spk = _seeded_results(tmp_path / "spk", {"logmel": LOGMEL, "apc": plus5, "apc_random": list(plus5)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verdict = summarize_label_efficiency({"speaker": spk}, tmp_path / "summary.md")
        assert paired_test([0.3, 0.4], [0.1, 0.2], "x").p_value == 0.0
        assert paired_test([0.3, 0.4], [0.4, 0.5], "x").p_value == 1.0
    entry = verdict["encoders"]["apc"]["speaker"]
    assert entry["vs_control_paired"] == {"against": "apc_random", "mean_diff": 0.0, "stderr": 0.0, "n_pairs": 5,
                                          "p_value": 1.0, "significant": False, "unknown_because": ""}
    assert entry["vs_reference_paired"]["p_value"] == 0.0 and entry["vs_reference_paired"]["significant"] is True
    assert verdict["winners"] == []  # a tie with its control is no win
    assert "NaN" not in (tmp_path / "summary.json").read_text()


def test_runs_on_different_subsets_are_not_paired(tmp_path):
    runs = [{"encoder": e, "shots": 2, "seed": s, "train_hash": f"h{s}" if e != "apc_random" else "other"}
            for e in ("logmel", "apc", "apc_random") for s in range(5)]
    spk = _seeded_results(tmp_path / "spk", {"logmel": LOGMEL, "apc": APC, "apc_random": APC_RANDOM}, runs=runs)
    entry = summarize_label_efficiency({"speaker": spk}, tmp_path / "summary.md")["encoders"]["apc"]["speaker"]
    assert entry["vs_reference_paired"]["n_pairs"] == 5
    assert entry["vs_control_paired"]["p_value"] is None
    assert "different labelled subsets" in entry["vs_control_paired"]["unknown_because"]


def test_cli_alpha(tmp_path, capsys):
    spk = _seeded_results(tmp_path / "spk", {"logmel": LOGMEL, "apc": APC, "apc_random": APC_RANDOM,
                                            "cpc": CPC, "cpc_random": CPC_RANDOM})
    out = tmp_path / "summary.md"
    assert main(["downstream", "summary", f"speaker={spk}", "--out", str(out), "--reference", "logmel"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["significant_winners"] == ["apc"]
    assert "**Within noise**: cpc" in capsys.readouterr().out
    _, _, p = _expected_paired(CPC, CPC_RANDOM)
    assert main(["downstream", "summary", f"speaker={spk}", "--out", str(out), "--alpha", "0.6"]) == 0
    saved = json.loads(out.with_suffix(".json").read_text())
    assert p < 0.6 and saved["significant_winners"] == ["apc", "cpc"] and saved["significance"]["alpha"] == 0.6
    assert "p < 0.6" in out.read_text()
    assert main(["downstream", "summary", f"speaker={spk}", "--out", str(out), "--alpha", "1.5"]) == 1
    try:
        main(["downstream", "summary", "--help"])
    except SystemExit:
        pass
    assert "--alpha" in capsys.readouterr().out


def test_two_sided_paired_test_is_twice_the_smaller_one_sided_p():
    from speechssl.downstream.significance import paired_test

    a, b = [0.31, 0.28, 0.35, 0.30, 0.27], [0.30, 0.29, 0.31, 0.26, 0.27]
    up, down = paired_test(a, b, "b").p_value, paired_test(b, a, "a").p_value
    assert paired_test(a, b, "b", two_sided=True).p_value == pytest.approx(2 * min(up, down))
    assert paired_test(b, a, "a", two_sided=True).p_value == pytest.approx(2 * min(up, down))
    # a constant difference either way is certain; none at all is not
    assert paired_test([0.1, 0.2], [0.3, 0.4], "x", two_sided=True).p_value == 0.0
    assert paired_test([0.1, 0.2], [0.1, 0.2], "x", two_sided=True).p_value == 1.0
