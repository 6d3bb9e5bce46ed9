"""egs/synthetic/ssl/local/pretrain_hubert.sh (the demo's two HuBERT iterations) at a few steps.

Its iteration-2 options: the default trains on one target set (iteration 1's layer units, at
iteration 1's frame rate: 50 Hz with the conv subsampler, 25 Hz with 4 stacked Mel frames);
``--it2_targets layer+it1 --it2_final_dim N`` adds iteration 1's units (100 Hz) as a second target
set and sets the projection size, with iteration 1 unchanged; ``--it2_overrides "k=v k=v"`` (and
``--it1_overrides``) pass extra recipe overrides to one iteration's pretrain, also through run.sh's
``--pretrain_opts`` with quotes; iteration 2 starts from iteration 1's weights (a fresh head for the new K;
``--it2_init scratch``: a random init) and trains half its steps (``--it2_steps N``).

Cost (the suite's largest after the quick demo: each full run is 8 ``speechssl`` processes, ~50 s on 2 loaded
cores, 2026-11-28): one full run per distinct iteration-1 setup. Iteration 1, its k-means and its units come
from the ``default_run`` fixture wherever a test varies only what follows them (reruns resume on the
``.done`` markers), and the recipe's own architecture in the frame-rate test is that run itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import script_env

REPO = Path(__file__).resolve().parents[1]
RECIPE = yaml.safe_load((REPO / "recipes/pretrain/hubert_demo.yaml").read_text())
RECIPE_MODEL = RECIPE["model"]
RECIPE_FINAL_DIM = RECIPE_MODEL["final_dim"]
IT2_FINAL_DIM = 16 if RECIPE_FINAL_DIM != 16 else 24  # another size than the recipe's, so the option shows


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubert_demo")
    shutil.copytree(REPO / "egs", root / "egs", ignore=shutil.ignore_patterns("data", "exp"))
    shutil.copytree(REPO / "recipes", root / "recipes")
    demo = root / "egs/synthetic/ssl"
    env = script_env(OMP_NUM_THREADS="1")
    for cmd in (
        ["speechssl", "synth", "--backend", "formant", "--out", "data/pool", "--speakers", "2",
         "--utts-per-speaker", "4", "--seed", "1"],
        ["speechssl", "manifest", "split", "data/pool/manifest.jsonl", "--out-dir", "data/pretrain",
         "--fractions", "train=0.75,dev=0.25", "--seed", "0"],
    ):
        subprocess.run(cmd, cwd=demo, env=env, check=True, capture_output=True, timeout=300)
    return demo, env


@pytest.fixture(scope="module")
def default_run(demo) -> dict:
    """``exp_default``: both iterations with the script's defaults (the recipe as it is); its log is
    ``exp_default.log``."""
    cfg, err = run_script_log(*demo, "exp_default")
    (demo[0] / "exp_default.log").write_text(err)
    return cfg


def reuse(demo: Path, exp: str, upto: str) -> None:
    """Start ``exp`` from ``exp_default``'s files up to ``upto``: "units1" (iteration 1's k-means and units)
    or "units2" (also iteration 1 and its layer's k-means and units): only what follows is run."""
    keep = {"units1": ("hubert_km1", "hubert_labels1", ".hubert_1.done"),
            "units2": ("hubert_km1", "hubert_labels1", ".hubert_1.done", "hubert_it1", ".hubert_it1.done",
                       "hubert_km2", "hubert_labels2", ".hubert_2.done")}[upto]
    (demo / exp).mkdir()
    for name in keep:
        src, dst = demo / "exp_default" / name, demo / exp / name
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)


def frame_shift(model: dict) -> int:
    """The HuBERT model's frame shift in samples: 10 ms log-Mel frames, then the conv strides or the stacking."""
    shift = 160 * model.get("stack_frames", 1)
    for _dim, _kernel, stride in model.get("conv_layers", []):
        shift *= stride
    return shift


def run_script(demo: Path, env: dict, exp: str, *opts: str) -> dict:
    """Both iterations at 2 steps; returns {"hubert_it1": config, "hubert": config}."""
    return run_script_log(demo, env, exp, *opts)[0]


def run_script_log(demo: Path, env: dict, exp: str, *opts: str) -> tuple[dict, str]:
    """As :func:`run_script`, and the script's stderr (the trainers' logs)."""
    proc = subprocess.run(
        ["bash", "local/pretrain_hubert.sh", "--exp_dir", exp, "--pretrain_steps", "2", "--k", "4", "--k2", "3",
         "--n_init", "1", *opts],
        cwd=demo, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    cfg = {name: yaml.safe_load((demo / exp / name / "config.yaml").read_text()) for name in ("hubert_it1", "hubert")}
    return cfg, proc.stderr


def test_iteration_two_default_one_target_set(default_run):
    it1, it2 = default_run["hubert_it1"], default_run["hubert"]
    assert it1["model"]["num_classes"] == [4] and it1["model"]["label_frame_shifts"] == [160]
    assert it2["model"]["num_classes"] == [3] and it2["model"]["label_frame_shifts"] == [frame_shift(RECIPE_MODEL)]
    assert it2["model"]["final_dim"] == it1["model"]["final_dim"] == RECIPE_FINAL_DIM
    assert [Path(t).name for t in it2["data"]["targets"]] == ["hubert_labels2"]


def test_iteration_two_starts_from_iteration_one_for_half_its_steps(demo, default_run):
    """The defaults: iteration 2 is initialised from iteration 1's encoder and trains half its steps
    (--pretrain_steps 2 here; the recipe's train.max_steps without it)."""
    err = (demo[0] / "exp_default.log").read_text()
    init = [line for line in err.splitlines() if "initialised model weights from" in line]
    assert len(init) == 1 and "exp_default/hubert_it1/encoder" in init[0], err[-3000:]
    assert default_run["hubert_it1"]["train"]["max_steps"] == 2 and default_run["hubert"]["train"]["max_steps"] == 1
    # a bad --it2_steps stops before any k-means
    proc = subprocess.run(["bash", "local/pretrain_hubert.sh", "--exp_dir", "exp_bad_steps", "--it2_steps", "some"],
                          cwd=demo[0], env=demo[1], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "--it2_steps some: a whole number of steps or half" in proc.stderr
    assert not (demo[0] / "exp_bad_steps").exists()


@pytest.fixture(scope="module")
def layer_it1_run(demo, default_run) -> tuple[dict, float]:
    """``exp_both``: iteration 2 only (iteration 1 and both unit sets are the default run's), on both target
    sets with its own final_dim and two overrides; returns the configs and the overridden unmasked weight."""
    reuse(demo[0], "exp_both", "units2")
    unmasked = RECIPE["model"]["unmasked_weight"] + 0.5  # not the recipe's, so the override shows
    cfg = run_script(*demo, "exp_both", "--it2_targets", "layer+it1", "--it2_final_dim", str(IT2_FINAL_DIM),
                     "--it2_overrides", f"optim.lr=5e-5 model.unmasked_weight={unmasked}")
    return cfg, unmasked


def test_iteration_two_with_iteration_one_units_and_final_dim(demo, layer_it1_run):
    it1, it2 = layer_it1_run[0]["hubert_it1"], layer_it1_run[0]["hubert"]
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
def test_iteration_two_labels_follow_iteration_one_frame_rate(demo, default_run, arch, shift):
    demo_dir, env = demo
    if all(RECIPE_MODEL.get(key) == value for key, value in arch.items()):
        exp, out = "exp_default", default_run  # the recipe's own architecture: the default run is this run
    else:
        recipes = demo_dir.parents[2] / f"recipes_{shift}"  # a copy of recipes/ with this architecture
        shutil.copytree(demo_dir.parents[2] / "recipes", recipes)
        path = recipes / "pretrain/hubert_demo.yaml"
        cfg = yaml.safe_load(path.read_text())
        cfg["model"].update(arch)
        path.write_text(yaml.safe_dump(cfg))
        exp = f"exp_{shift}"
        reuse(demo_dir, exp, "units1")  # log-Mel units (100 Hz) whatever the model: iteration 1 trains here
        out = run_script(demo_dir, env, exp, "--recipes", str(recipes))
    it1, it2 = out["hubert_it1"], out["hubert"]
    assert it1["model"]["label_frame_shifts"] == [160] and it1["model"]["stack_frames"] == arch["stack_frames"]
    assert it1["model"]["conv_layers"] == arch["conv_layers"]
    assert it2["model"]["label_frame_shifts"] == [shift]
    assert "acc_target_0" in (demo_dir / f"{exp}/hubert/metrics.jsonl").read_text()


def test_unknown_target_choice_fails(demo):
    proc = subprocess.run(
        ["bash", "local/pretrain_hubert.sh", "--exp_dir", "exp_bad", "--it2_targets", "it1", "--pretrain_steps", "0"],
        cwd=demo[0], env=demo[1], capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode != 0


def released_model(demo: Path, exp: str, name: str) -> dict:
    """The model section of the released encoder's config.json (what the evaluation loads)."""
    return json.loads((demo / exp / name / "encoder/config.json").read_text())["model"]


def test_iteration_two_overrides_reach_iteration_two_only(demo, layer_it1_run):
    (cfg, unmasked), exp = layer_it1_run, "exp_both"
    it1, it2 = cfg["hubert_it1"], cfg["hubert"]
    assert it2["optim"]["lr"] == pytest.approx(5e-5) and it2["model"]["unmasked_weight"] == unmasked
    assert released_model(demo[0], exp, "hubert")["unmasked_weight"] == unmasked
    assert it2["model"]["num_classes"] == [3, 4]  # --it2_targets still applies
    assert it2["model"]["final_dim"] == IT2_FINAL_DIM  # and --it2_final_dim
    assert it1["optim"]["lr"] == pytest.approx(RECIPE["optim"]["lr"])


def test_overrides_through_run_sh_quotes(demo, default_run):
    # run.sh stage 3 hands --pretrain_opts to the script word by word, a quoted value staying one word.
    reuse(demo[0], "exp_runsh", "units1")  # the overrides start at iteration 1's pretrain
    unmasked = RECIPE["model"]["unmasked_weight"] + 0.5
    opts = (f"--k 4 --k2 3 --n_init 1 --it1_overrides 'model.unmasked_weight={unmasked} optim.lr=3e-4' "
            "--it2_overrides model.final_dim=8")
    proc = subprocess.run(
        ["bash", "run.sh", "--models", "hubert", "--exp_dir", "exp_runsh", "--stage", "3", "--stop_stage", "3",
         "--pretrain_steps", "2", "--parallel", "1", f"--pretrain_opts={opts}"],
        cwd=demo[0], env=demo[1], capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    exp = demo[0] / "exp_runsh"
    it1 = yaml.safe_load((exp / "hubert_it1/config.yaml").read_text())
    it2 = yaml.safe_load((exp / "hubert/config.yaml").read_text())
    assert it1["model"]["unmasked_weight"] == unmasked and it1["optim"]["lr"] == pytest.approx(3e-4)
    assert it1["model"]["final_dim"] == RECIPE_FINAL_DIM
    assert it2["model"]["unmasked_weight"] == RECIPE["model"]["unmasked_weight"]
    assert it2["optim"]["lr"] == pytest.approx(RECIPE["optim"]["lr"])
    assert released_model(demo[0], "exp_runsh", "hubert")["final_dim"] == 8


@pytest.mark.parametrize("bad", ["optim.lr", "=5e-5"])
def test_override_not_key_value_fails(demo, bad):
    proc = subprocess.run(
        ["bash", "local/pretrain_hubert.sh", "--exp_dir", "exp_bad", "--it2_overrides", f"model.final_dim=8 {bad}"],
        cwd=demo[0], env=demo[1], capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode != 0 and "not key=value" in proc.stderr
    assert not (demo[0] / "exp_bad").exists()  # refused before any k-means


def test_iteration_two_from_iteration_one(demo, default_run):
    reuse(demo[0], "exp_init", "units2")  # only iteration 2 trains
    cfg, err = run_script_log(*demo, "exp_init", "--it2_init", "it1", "--it2_overrides", "optim.lr=5e-5")
    init = [line for line in err.splitlines() if "initialised model weights from" in line]
    assert len(init) == 1 and "exp_init/hubert_it1/encoder" in init[0], err[-3000:]
    # K=4 -> K=3: the label embeddings start fresh (and the log says so); everything else is iteration 1's
    assert f"head.label_embeddings [4, {RECIPE_FINAL_DIM}] -> [3, {RECIPE_FINAL_DIM}]" in init[0]
    assert cfg["hubert"]["optim"]["lr"] == pytest.approx(5e-5) and cfg["hubert"]["model"]["num_classes"] == [3]


def test_unknown_init_choice_fails_before_iteration_one(demo):
    proc = subprocess.run(
        ["bash", "local/pretrain_hubert.sh", "--exp_dir", "exp_bad", "--it2_init", "hubert_it1"],
        cwd=demo[0], env=demo[1], capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode != 0 and "--it2_init hubert_it1: scratch or it1" in proc.stderr
    assert not (demo[0] / "exp_bad").exists()


def test_rerun_skips_finished_steps_and_stops_on_other_settings(demo, default_run):
    """A step's marker records its settings: the same ones skip it, other ones stop the script, naming
    them, instead of silently keeping what was trained with the old ones (run.sh redoes stage 3 when
    --pretrain_opts change, and calls this script again)."""
    demo_dir, env = demo
    shutil.copytree(demo_dir / "exp_default", demo_dir / "exp_rerun")
    encoder = demo_dir / "exp_rerun/hubert/encoder/model.safetensors"
    before = encoder.stat().st_mtime_ns

    def rerun(*opts: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "local/pretrain_hubert.sh", "--exp_dir", "exp_rerun", "--pretrain_steps", "2", "--k", "4",
             "--k2", "3", "--n_init", "1", *opts], cwd=demo_dir, env=env, capture_output=True, text=True, timeout=600)

    recipe = demo_dir.parents[2] / "recipes/pretrain/hubert_demo.yaml"
    text = recipe.read_text()
    recipe.write_text(text + "# a comment is not a setting\n")
    try:
        proc = rerun()
    finally:
        recipe.write_text(text)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "speechssl.train" not in proc.stderr and encoder.stat().st_mtime_ns == before  # nothing retrained
    proc = rerun("--it2_final_dim", "8")
    assert proc.returncode != 0
    assert "hubert step it2 in exp_rerun ran with other settings" in proc.stderr
    assert "now: iteration 2: it2_targets=layer it2_final_dim=8" in proc.stderr, proc.stderr[-3000:]
    assert encoder.stat().st_mtime_ns == before
    proc = rerun("--k2", "5")  # an earlier step's change reaches every later step's settings
    assert proc.returncode != 0 and "hubert step 2 in exp_rerun" in proc.stderr and "k2=5" in proc.stderr
