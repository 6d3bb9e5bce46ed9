"""egs/synthetic/ssl/local/ablate_augment.sh and its table (ablation_table.py): the table, JSON and plot
from label-efficiency results, and the recipe's option checks (the pretraining itself is the demo's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import script_env

LOCAL = Path(__file__).resolve().parents[1] / "egs" / "synthetic" / "ssl" / "local"
sys.path.insert(0, str(LOCAL))

import ablation_table  # noqa: E402


def _results(folder: Path, curves: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"protocol": {"name": "label_efficiency", "shots": [2]},
                                                     "curves": curves}))


def test_table_json_and_plot_from_label_efficiency_results(tmp_path):
    exp = tmp_path / "exp"
    scores = {"full": 0.30, "no_noise": 0.25, "queue_0": 0.32, "simclr_random": 0.28, "logmel": 0.23}
    for i, task in enumerate(ablation_table.TASKS):
        _results(exp / f"le_{task}", {k: {"2": {"mean": v + 0.01 * i, "std": 0.02}} for k, v in scores.items()})
    (exp / "variants.tsv").write_text("full\tthe recipe\t\nno_noise\twithout noise\tmodel.augment.waveform.noise=null\n"
                                      "queue_0\tno queue\tmodel.queue_size=0 model.momentum=null\n")
    out = tmp_path / "ABLATION"
    assert ablation_table.main(["--exp_dir", str(exp), "--variants", str(exp / "variants.tsv"), "--steps", "200",
                                "--out", str(out), "--note", "Run now"]) == 0
    md = out.with_suffix(".md").read_text()
    assert "Run now" in md
    assert "| no_noise: without noise | 0.250 ± 0.020 (-5.0) | 0.260 ± 0.020 (-5.0) | 0.270 ± 0.020 (-5.0) |" in md
    assert "| queue_0: no queue | 0.320 ± 0.020 (+2.0)" in md
    assert "| full: the recipe | 0.300 ± 0.020 |" in md and "| log-Mel | 0.230 ± 0.020" in md
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["steps"] == 200 and data["variants"][1]["vs_full"]["speaker"] == pytest.approx(-0.05)
    assert data["variants"][2]["overrides"] == ["model.queue_size=0", "model.momentum=null"]
    assert out.with_suffix(".png").stat().st_size > 1000


def test_missing_results_name_the_file(tmp_path):
    (tmp_path / "variants.tsv").write_text("full\tthe recipe\t\n")
    with pytest.raises(SystemExit, match="le_speaker"):
        ablation_table.main(["--exp_dir", str(tmp_path), "--variants", str(tmp_path / "variants.tsv"), "--steps", "1",
                             "--out", str(tmp_path / "A")])


def test_recipe_rejects_unknown_options_and_variants(tmp_path):
    script = LOCAL / "ablate_augment.sh"
    bad = subprocess.run(["bash", str(script), "--nonsense", "1"], capture_output=True, text=True, env=script_env())
    assert bad.returncode != 0 and "unknown option --nonsense" in bad.stderr
    none = subprocess.run(["bash", str(script), "--variants", "no_such", "--exp_dir", str(tmp_path / "e")],
                          capture_output=True, text=True, env=script_env())
    assert none.returncode != 0 and "--variants no_such" in none.stderr


def test_changes_carry_a_paired_two_sided_p_value(tmp_path):
    """With per-seed scores, each change vs the full recipe says whether it is more than the seeds' noise,
    in either direction."""
    exp = tmp_path / "exp"
    full = [0.30, 0.34, 0.28, 0.33, 0.31, 0.29]
    per_seed = {"full": full,
                "no_noise": [x - 0.05 + d for x, d in zip(full, (0.004, -0.003, 0.002, -0.004, 0.001, 0.0))],
                "queue_0": [x + d for x, d in zip(full, (0.01, -0.01, 0.012, -0.008, 0.009, -0.011))],
                "simclr_random": [0.28] * 6, "logmel": [0.23] * 6}
    curves = {k: {"2": {"mean": sum(v) / len(v), "std": 0.02, "scores": v}} for k, v in per_seed.items()}
    for task in ablation_table.TASKS:
        _results(exp / f"le_{task}", curves)
    (exp / "variants.tsv").write_text("full\tthe recipe\t\nno_noise\twithout noise\t\nqueue_0\tno queue\t\n")
    out = tmp_path / "ABLATION"
    ablation_table.main(["--exp_dir", str(exp), "--variants", str(exp / "variants.tsv"), "--steps", "1",
                         "--out", str(out)])
    md = out.with_suffix(".md").read_text()
    assert "paired two-sided t-test over the evaluation seeds" in md
    assert "| no_noise: without noise | 0.258 ± 0.020 (-5.0, p<0.001) |" in md
    assert "| queue_0: no queue | 0.309 ± 0.020 (+0.0, noise) |" in md
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["variants"][1]["vs_full_p"]["speaker"] < 0.001 and data["variants"][2]["vs_full_p"]["word"] > 0.5
    assert data["variants"][0]["vs_full_p"]["style"] is None  # full vs itself
