"""egs/synthetic/ssl/local/pretrain_hubert.sh (the demo's two HuBERT iterations) at a few steps.

Its iteration-2 options: the default trains on one target set (iteration 1's layer units, 50 Hz);
``--it2_targets layer+it1 --it2_final_dim N`` adds iteration 1's units (100 Hz) as a second target
set and sets the projection size, with iteration 1 unchanged; ``--it2_init it1`` starts iteration 2 from
iteration 1's weights (a fresh head for the new K); ``--it2_overrides`` sets recipe keys of iteration 2 only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE_FINAL_DIM = yaml.safe_load((REPO / "recipes/pretrain/hubert_demo.yaml").read_text())["model"]["final_dim"]
IT2_FINAL_DIM = 16 if RECIPE_FINAL_DIM != 16 else 24  # another size than the recipe's, so the option shows


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubert_demo")
    shutil.copytree(REPO / "egs", root / "egs", ignore=shutil.ignore_patterns("data", "exp"))
    shutil.copytree(REPO / "recipes", root / "recipes")
    demo = root / "egs/synthetic/ssl"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    for cmd in (
        ["speechssl", "synth", "--backend", "formant", "--out", "data/pool", "--speakers", "2",
         "--utts-per-speaker", "4", "--seed", "1"],
        ["speechssl", "manifest", "split", "data/pool/manifest.jsonl", "--out-dir", "data/pretrain",
         "--fractions", "train=0.75,dev=0.25", "--seed", "0"],
    ):
        subprocess.run(cmd, cwd=demo, env=env, check=True, capture_output=True, timeout=300)
    return demo, env


def run_script(demo: Path, env: dict, exp: str, *opts: str) -> tuple[dict, str]:
    """Both iterations at 2 steps; returns ({"hubert_it1": config, "hubert": config}, the script's stderr)."""
    proc = subprocess.run(
        ["bash", "local/pretrain_hubert.sh", "--exp_dir", exp, "--pretrain_steps", "2", "--k", "4", "--k2", "3",
         "--n_init", "1", *opts],
        cwd=demo, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    cfg = {name: yaml.safe_load((demo / exp / name / "config.yaml").read_text()) for name in ("hubert_it1", "hubert")}
    return cfg, proc.stderr


def reuse_iteration_one(demo: Path, exp: str) -> None:
    """Iteration 1 and its units as in the default run (reruns resume on .done markers): only iteration 2 trains."""
    shutil.copytree(demo / "exp_default", demo / exp, ignore=shutil.ignore_patterns("hubert", ".hubert_it2.done"))


def test_iteration_two_default_one_target_set(demo):
    cfg, err = run_script(*demo, "exp_default")
    assert "initialised model weights" not in err  # iteration 2 from scratch (the paper)
    it1, it2 = cfg["hubert_it1"], cfg["hubert"]
    assert it1["model"]["num_classes"] == [4] and it1["model"]["label_frame_shifts"] == [160]
    assert it2["model"]["num_classes"] == [3] and it2["model"]["label_frame_shifts"] == [320]
    assert it2["model"]["final_dim"] == it1["model"]["final_dim"] == RECIPE_FINAL_DIM
    assert [Path(t).name for t in it2["data"]["targets"]] == ["hubert_labels2"]


def test_iteration_two_with_iteration_one_units_and_final_dim(demo):
    reuse_iteration_one(demo[0], "exp_both")
    cfg, _ = run_script(*demo, "exp_both", "--it2_targets", "layer+it1", "--it2_final_dim", str(IT2_FINAL_DIM))
    it1, it2 = cfg["hubert_it1"], cfg["hubert"]
    assert it1["model"]["num_classes"] == [4] and it1["model"]["final_dim"] == RECIPE_FINAL_DIM
    assert it2["model"]["num_classes"] == [3, 4] and it2["model"]["label_frame_shifts"] == [320, 160]
    assert it2["model"]["final_dim"] == IT2_FINAL_DIM
    assert [Path(t).name for t in it2["data"]["targets"]] == ["hubert_labels2", "hubert_labels1"]
    metrics = (demo[0] / "exp_both/hubert/metrics.jsonl").read_text()
    assert "acc_target_1" in metrics  # both target sets are trained on


def test_iteration_two_from_iteration_one_with_overrides(demo):
    reuse_iteration_one(demo[0], "exp_init")
    cfg, err = run_script(*demo, "exp_init", "--it2_init", "it1", "--it2_overrides", "optim.lr=5e-5 model.mask_prob=0.1")
    it1, it2 = cfg["hubert_it1"], cfg["hubert"]
    init = [line for line in err.splitlines() if "initialised model weights from" in line]
    assert len(init) == 1 and "exp_init/hubert_it1/encoder" in init[0], err[-3000:]
    # K=4 -> K=3: the label embeddings start fresh (and say so); everything else is iteration 1's
    assert f"head.label_embeddings [4, {RECIPE_FINAL_DIM}] -> [3, {RECIPE_FINAL_DIM}]" in init[0]
    assert it2["optim"]["lr"] == 5e-5 and it2["model"]["mask_prob"] == 0.1
    assert it1["optim"]["lr"] != 5e-5 and it1["model"]["mask_prob"] != 0.1  # iteration 1 untouched
    assert it2["model"]["num_classes"] == [3] and [Path(t).name for t in it2["data"]["targets"]] == ["hubert_labels2"]


@pytest.mark.parametrize("opts", [["--it2_targets", "it1"], ["--it2_init", "hubert_it1"],
                                  ["--it2_overrides", "optim.lr=5e-5 lr"]])
def test_bad_iteration_two_options_fail_before_iteration_one(demo, opts):
    proc = subprocess.run(
        ["bash", "local/pretrain_hubert.sh", "--exp_dir", "exp_bad", "--pretrain_steps", "0", *opts],
        cwd=demo[0], env=demo[1], capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode != 0 and opts[0] in proc.stderr
    assert not (demo[0] / "exp_bad").exists()  # nothing ran
