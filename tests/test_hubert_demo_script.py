"""egs/synthetic/ssl/local/pretrain_hubert.sh (the demo's two HuBERT iterations) at a few steps.

Its iteration-2 options: the default trains on one target set (iteration 1's layer units, at
iteration 1's frame rate: 50 Hz with the conv subsampler, 25 Hz with 4 stacked Mel frames);
``--it2_targets layer+it1 --it2_final_dim N`` adds iteration 1's units (100 Hz) as a second target
set and sets the projection size, with iteration 1 unchanged.
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
RECIPE_MODEL = yaml.safe_load((REPO / "recipes/pretrain/hubert_demo.yaml").read_text())["model"]
RECIPE_FINAL_DIM = RECIPE_MODEL["final_dim"]
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


def frame_shift(model: dict) -> int:
    """The HuBERT model's frame shift in samples: 10 ms log-Mel frames, then the conv strides or the stacking."""
    shift = 160 * model.get("stack_frames", 1)
    for _dim, _kernel, stride in model.get("conv_layers", []):
        shift *= stride
    return shift


def run_script(demo: Path, env: dict, exp: str, *opts: str) -> dict:
    proc = subprocess.run(
        ["bash", "local/pretrain_hubert.sh", "--exp_dir", exp, "--pretrain_steps", "2", "--k", "4", "--k2", "3",
         "--n_init", "1", *opts],
        cwd=demo, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return {name: yaml.safe_load((demo / exp / name / "config.yaml").read_text()) for name in ("hubert_it1", "hubert")}


def test_iteration_two_default_one_target_set(demo):
    cfg = run_script(*demo, "exp_default")
    it1, it2 = cfg["hubert_it1"], cfg["hubert"]
    assert it1["model"]["num_classes"] == [4] and it1["model"]["label_frame_shifts"] == [160]
    assert it2["model"]["num_classes"] == [3] and it2["model"]["label_frame_shifts"] == [frame_shift(RECIPE_MODEL)]
    assert it2["model"]["final_dim"] == it1["model"]["final_dim"] == RECIPE_FINAL_DIM
    assert [Path(t).name for t in it2["data"]["targets"]] == ["hubert_labels2"]


def test_iteration_two_with_iteration_one_units_and_final_dim(demo):
    # Iteration 1 and its units as in the default run (reruns resume on .done markers): only iteration 2 trains.
    shutil.copytree(demo[0] / "exp_default", demo[0] / "exp_both", ignore=shutil.ignore_patterns("hubert", ".hubert_it2.done"))
    cfg = run_script(*demo, "exp_both", "--it2_targets", "layer+it1", "--it2_final_dim", str(IT2_FINAL_DIM))
    it1, it2 = cfg["hubert_it1"], cfg["hubert"]
    assert it1["model"]["num_classes"] == [4] and it1["model"]["final_dim"] == RECIPE_FINAL_DIM
    assert it2["model"]["num_classes"] == [3, 4]
    assert it2["model"]["label_frame_shifts"] == [frame_shift(RECIPE_MODEL), 160]
    assert it2["model"]["final_dim"] == IT2_FINAL_DIM
    assert [Path(t).name for t in it2["data"]["targets"]] == ["hubert_labels2", "hubert_labels1"]
    metrics = (demo[0] / "exp_both/hubert/metrics.jsonl").read_text()
    assert "acc_target_1" in metrics  # both target sets are trained on


@pytest.mark.parametrize("arch, shift", [
    ({"conv_layers": [[16, 3, 2]], "stack_frames": 1}, 320),  # conv subsampler: 20 ms frames, 50 Hz units
    ({"conv_layers": [], "stack_frames": 4}, 640),            # MelHuBERT, 4 stacked Mel frames: 25 Hz units
])
def test_iteration_two_labels_follow_iteration_one_frame_rate(demo, arch, shift):
    demo_dir, env = demo
    recipes = demo_dir.parents[2] / f"recipes_{shift}"  # a copy of recipes/ with this architecture
    shutil.copytree(demo_dir.parents[2] / "recipes", recipes)
    path = recipes / "pretrain/hubert_demo.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["model"].update(arch)
    path.write_text(yaml.safe_dump(cfg))
    out = run_script(demo_dir, env, f"exp_{shift}", "--recipes", str(recipes))
    it1, it2 = out["hubert_it1"], out["hubert"]
    assert it1["model"]["label_frame_shifts"] == [160] and it1["model"]["stack_frames"] == arch["stack_frames"]
    assert it2["model"]["label_frame_shifts"] == [shift]
    assert "acc_target_0" in (demo_dir / f"exp_{shift}/hubert/metrics.jsonl").read_text()


def test_unknown_target_choice_fails(demo):
    proc = subprocess.run(
        ["bash", "local/pretrain_hubert.sh", "--exp_dir", "exp_bad", "--it2_targets", "it1", "--pretrain_steps", "0"],
        cwd=demo[0], env=demo[1], capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode != 0
