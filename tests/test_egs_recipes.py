"""Each real-corpus recipe (egs/<corpus>/<task>/run.sh) end to end on a fabricated tree.

The recipes and YAML configs are copied into a temporary folder so runs never write into the
checkout; overrides shrink every training to a few steps.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from corpus_fixtures import make_iemocap, make_librispeech, make_voxceleb1, write_noise_wav
from helpers import script_env

import speechssl.accel as accel
from speechssl.data.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def workdir(tmp_path):
    shutil.copytree(REPO / "egs", tmp_path / "egs", ignore=shutil.ignore_patterns("data", "exp"))
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    return tmp_path


def run_recipe(workdir: Path, recipe: str, *args: str) -> subprocess.CompletedProcess:
    env = script_env(MPLBACKEND="Agg")
    proc = subprocess.run(
        ["bash", str(workdir / "egs" / recipe / "run.sh"), *args],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, f"{recipe} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


SHORT_DOWNSTREAM = "train.max_steps=4 train.valid_every=2 train.batch_size=4"


def test_librispeech_ssl(workdir, tmp_path):
    corpus = make_librispeech(tmp_path / "corpus", seconds=1.5)
    args = ("--corpus", str(corpus), "--config", "../../../recipes/pretrain/apc_tiny.yaml",
            "--overrides", "train.max_steps=2 train.valid_every=1 train.log_every=1")
    out = workdir / "egs/librispeech/ssl"
    # Manifests only: the last line does not point to an encoder that is not there yet.
    first = run_recipe(workdir, "librispeech/ssl", *args, "--stop_stage", "2").stderr.strip().splitlines()[-1]
    assert "done (stages 1-2); no encoder yet: pretraining writes it to " in first
    assert first.endswith("/exp/apc/encoder") and not (out / "exp/apc/encoder").exists()
    run_recipe(workdir, "librispeech/ssl", *args)
    assert len(read_manifest(out / "data/train.jsonl")) == 3
    assert (out / "exp/apc/encoder/model.safetensors").is_file()
    assert (out / "exp/apc/feats_dev/index.tsv").is_file()
    # Rerunning with the same options skips every finished stage.
    again = run_recipe(workdir, "librispeech/ssl", *args)
    assert again.stderr.count("(done, skipped") == 4
    assert again.stderr.strip().splitlines()[-1].endswith("done: encoder in " + str(out / "exp/apc/encoder"))


def test_librispeech_hubert_runs_both_iterations_as_stages(workdir, tmp_path):
    corpus = make_librispeech(tmp_path / "corpus", seconds=1.5)
    run_recipe(
        workdir, "librispeech/ssl", "--corpus", str(corpus), "--hubert", "true",
        "--config", "../../../recipes/pretrain/hubert_tiny.yaml", "--k1", "4", "--k2", "3", "--it2_layer", "layer_1",
        "--sample_hours", "0.01", "--n_init", "1",
        "--overrides", "train.max_steps=2 train.valid_every=1 train.log_every=1 data.max_batch_seconds=3.0",
    )
    exp = workdir / "egs/librispeech/ssl/exp"
    it1 = json.loads((exp / "hubert_it1/targets/kmeans/kmeans.json").read_text())
    it2 = json.loads((exp / "hubert/targets/kmeans/kmeans.json").read_text())
    assert (it1["k"], it1["features"]["features"], it1["features"]["frame_shift"]) == (4, "mfcc", 160)
    assert (it2["k"], it2["features"]["layer"], it2["features"]["frame_shift"]) == (3, "layer_1", 320)
    assert it2["features"]["features"].endswith("hubert_it1/encoder")
    for folder in ("hubert_it1", "hubert"):
        assert (exp / folder / "encoder/model.safetensors").is_file()
    assert (exp / "hubert/feats_dev/index.tsv").is_file()
    # the second iteration trained on the second k-means' 3 classes
    cfg = json.loads((exp / "hubert/encoder/config.json").read_text())
    assert cfg["model"]["num_classes"] == [3] and cfg["model"]["label_frame_shifts"] == [320]


def test_iemocap_er(workdir, tmp_path):
    corpus = make_iemocap(tmp_path / "corpus", seconds=1.0)
    run_recipe(workdir, "iemocap/er", "--corpus", str(corpus), "--encoders", "logmel", "--overrides", SHORT_DOWNSTREAM)
    out = workdir / "egs/iemocap/er/exp"
    assert (out / "er_logmel/results.json").is_file()
    assert "er_logmel" in (out / "compare.md").read_text()


def test_voxceleb1_sid(workdir, tmp_path):
    corpus = make_voxceleb1(tmp_path / "vox", seconds=1.0)
    run_recipe(workdir, "voxceleb1/sid", "--corpus", str(corpus), "--encoders", "fbank", "--overrides", SHORT_DOWNSTREAM)
    assert (workdir / "egs/voxceleb1/sid/exp/sid_fbank/results.json").is_file()


def test_generic_cls(workdir, tmp_path):
    clips = tmp_path / "clips"
    rows = ["path,mood,speaker"]
    for spk in range(6):
        for i in range(4):
            write_noise_wav(clips / f"s{spk}" / f"c{i}.wav", seconds=1.0)
            rows.append(f"s{spk}/c{i}.wav,{'ab'[i % 2]},s{spk}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    run_recipe(
        workdir, "generic/cls", "--audio", str(clips), "--labels", str(tmp_path / "labels.csv"), "--label", "mood",
        "--group", "speaker", "--overrides", SHORT_DOWNSTREAM,
    )
    out = workdir / "egs/generic/cls"
    train = {r["speaker"] for r in read_manifest(out / "data/train.jsonl")}
    test = {r["speaker"] for r in read_manifest(out / "data/test.jsonl")}
    assert train and test and not train & test
    assert (out / "exp/test_predictions.tsv").is_file()


def fake_speechssl(tmp_path: Path, then: str = "") -> tuple[dict[str, str], Path]:
    """(environment, calls file): a `speechssl` first on PATH that appends its arguments to the calls
    file (one line per call) and then runs ``then``; a recipe's stages run without doing the work."""
    fake = tmp_path / "bin" / "speechssl"
    fake.parent.mkdir()
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> "$CALLS"\n{then}\n')
    fake.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = script_env(CALLS=str(calls))
    env["PATH"] = f"{fake.parent}:{env['PATH']}"
    return env, calls


def test_recipe_rejects_unknown_option(workdir):
    env = script_env()
    proc = subprocess.run(["bash", str(workdir / "egs/generic/cls/run.sh"), "--colour", "red"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "unknown option --colour" in proc.stderr


def test_encoder_name_is_only_a_folder_name():
    """common.sh names encoders by their folder; it keeps no list of baseline names (roles are data)."""
    common = REPO / "egs" / "common.sh"
    script = (f'speechssl() {{ :; }}; set -- ; . "{common}"; '
              'for e in logmel mfcc my_features exp/apc/encoder exp/apc_random/encoder/ exp/cpc; do encoder_name "$e"; done')
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["logmel", "mfcc", "my_features", "apc", "apc_random", "cpc"]
    assert "fbank" not in common.read_text()


def test_stage_markers_record_options(tmp_path):
    """A done stage is redone when an option differs from its marker, and so is every later stage."""
    script = tmp_path / "corpus" / "task" / "run.sh"
    script.parent.mkdir(parents=True)
    script.write_text(
        'set -euo pipefail\ncd "$(dirname "$0")"\nmode=a\nsize=1\n'
        f'speechssl() {{ :; }}\n. "{REPO / "egs" / "common.sh"}"\n'
        'if begin_stage 1 "first"; then echo "1 $mode" >> ran.txt; done_stage 1; fi\n'
        'if begin_stage 2 "second"; then echo "2 $mode" >> ran.txt; done_stage 2; fi\n'
    )
    ran = script.parent / "ran.txt"

    def run(*args: str) -> str:
        proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=script_env())
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    run("--mode", "a")
    assert ran.read_text().split("\n")[:-1] == ["1 a", "2 a"]
    # The same options (stage selection and launcher options aside) skip both stages.
    log = run("--mode", "a", "--stage", "1", "--parallel", "3", "--ngpu", "2")
    assert log.count("(done, skipped") == 2 and ran.read_text().count("\n") == 2
    log = run("--mode", "b")
    assert "stage 1: options changed since it ran (mode: a -> b): redoing" in log
    assert ran.read_text().split("\n")[2:-1] == ["1 b", "2 b"]
    # Only stage 2 with mode c; then stage 1 is redone (b -> c), and stage 2 again although its
    # marker says c: it ran on the older stage 1.
    run("--mode", "c", "--size", "2", "--stage", "2")
    log = run("--mode", "c", "--size", "2")
    assert "(mode: b -> c, size: 1 -> 2): redoing" in log
    assert "later stages run again (markers removed: 2)" in log
    assert ran.read_text().split("\n")[4:-1] == ["2 c", "1 c", "2 c"]
    # A marker from before options were recorded (empty) still counts as done, with a hint.
    for n in (1, 2):
        (script.parent / f"exp/.stages/stage{n}.done").write_text("")
    log = run("--mode", "d")
    assert log.count("predates recorded options") == 2 and ran.read_text().count("\n") == 7


def test_demo_pretraining_seed_leaves_the_shared_corpus_alone(workdir, tmp_path):
    """`--seed` seeds pretraining only: stages 1-2 (the corpus in the shared data/, its splits) follow
    `--corpus_seed`, so a pretraining-seed check in another --exp_dir rebuilds the same corpus; a stage-1
    marker written when stage 1 read `seed` still counts as done."""
    env, calls = fake_speechssl(tmp_path)
    script = workdir / "egs/synthetic/ssl/run.sh"

    def stages_1_2(*args: str) -> tuple[str, list[str]]:
        calls.write_text("")
        proc = subprocess.run(["bash", str(script), "--stage", "1", "--stop_stage", "2", *args],
                              capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr, calls.read_text().splitlines()

    def seeds(lines: list[str]) -> list[str]:
        return [line.split("--seed ")[1].split()[0] for line in lines if "--seed " in line]

    _, default = stages_1_2("--exp_dir", "exp_a")
    _, seed1 = stages_1_2("--exp_dir", "exp_b", "--seed", "1")
    assert seeds(default) == seeds(seed1) == ["1", "2", "1", "2", "0", "0", "0"]
    _, other = stages_1_2("--exp_dir", "exp_c", "--corpus_seed", "5")
    assert seeds(other) == ["6", "7", "6", "7", "5", "5", "5"]
    # markers from before corpus_seed recorded seed=0: not compared with corpus_seed, still done
    stages = workdir / "egs/synthetic/ssl/exp_a/.stages"
    for n in (1, 2):
        marker = stages / f"stage{n}.done"
        marker.write_text(marker.read_text().replace("corpus_seed=0", "seed=0"))
    log, again = stages_1_2("--exp_dir", "exp_a")
    assert log.count("(done, skipped") == 2 and again == []


def test_stage_uses_limits_a_stage_marker_to_the_options_it_reads(tmp_path):
    """With `stage_uses`, an option only a later stage reads redoes that stage, not the earlier ones."""
    script = tmp_path / "corpus" / "task" / "run.sh"
    script.parent.mkdir(parents=True)
    common = REPO / "egs" / "common.sh"
    script.write_text(
        'set -euo pipefail\ncd "$(dirname "$0")"\nmode=a\nsize=1\nquick=false\n'
        f'speechssl() {{ :; }}\n. "{common}"\n'
        '[ "$quick" = true ] && size=9\n'
        'stage_uses 1 mode\nstage_uses 2 size\n'
        'if begin_stage 1 "first"; then echo "1 $mode" >> ran.txt; done_stage 1; fi\n'
        'if begin_stage 2 "second"; then echo "2 $size" >> ran.txt; done_stage 2; fi\n'
    )
    ran = script.parent / "ran.txt"

    def run(*args: str, ok: bool = True) -> str:
        proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=script_env())
        assert (proc.returncode == 0) == ok, proc.stderr
        return proc.stderr

    run()
    log = run("--size", "2")
    assert "stage 1: first (done, skipped" in log and "options changed since it ran (size: 1 -> 2)" in log
    assert ran.read_text().split("\n")[:-1] == ["1 a", "2 1", "2 2"]
    assert (script.parent / "exp/.stages/stage1.done").read_text().split("\n")[1:-1] == ["mode=a"]
    # the value the stage ran with, after the recipe's own adjustment (--quick sets size 9)
    log = run("--quick")
    assert "(size: 2 -> 9)" in log and ran.read_text().split("\n")[-2] == "2 9"
    # an earlier stage's change still redoes the later ones
    run("--mode", "b", "--quick")
    assert ran.read_text().split("\n")[-3:-1] == ["1 b", "2 9"]
    script.write_text(script.read_text().replace("stage_uses 2 size", "stage_uses 2 sise"))
    assert "stage_uses 2: no option named 'sise'" in run(ok=False)


def test_cpu_kernels_pins_every_library_to_avx2_on_an_avx2_cpu(tmp_path):
    """`cpu_kernels portable` exports the four pins on an x86-64 CPU with AVX2 (nothing elsewhere) and keeps a
    value the environment already has; `native` sets nothing; anything else stops with the option's name."""
    pins = accel.KERNEL_PINS  # the variables common.sh exports, in its order
    script = tmp_path / "corpus" / "task" / "run.sh"
    script.parent.mkdir(parents=True)
    script.write_text(
        'set -euo pipefail\ncd "$(dirname "$0")"\nkernels=portable\n'
        f'. "{REPO / "egs" / "common.sh"}"\ncpu_kernels "$kernels"\n'
        + "".join(f'echo "{name}=${{{name}:-}}"\n' for name in pins))
    env = {k: v for k, v in script_env().items() if k not in pins}

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env={**env, **extra})

    import platform

    avx2 = platform.machine() == "x86_64" and " avx2" in Path("/proc/cpuinfo").read_text()
    got = dict(line.split("=", 1) for line in run().stdout.split())
    want = ["avx2", "AVX2", "AVX2", "Haswell"] if avx2 else ["", "", "", ""]
    assert [got.get(name, "") for name in pins] == want
    kept = dict(line.split("=", 1) for line in run(MKL_CBWR="COMPATIBLE").stdout.split())
    assert kept.get("MKL_CBWR") == "COMPATIBLE"  # the environment's own value stays
    native = dict(line.split("=", 1) for line in run("--kernels", "native").stdout.split())
    assert not any(native.get(name) for name in pins)
    bad = run("--kernels", "fast")
    assert bad.returncode != 0 and "--kernels fast: portable or native" in bad.stderr


def test_demo_trains_each_model_for_its_recipes_length(workdir, tmp_path):
    """The synthetic demo leaves train.max_steps / train.max_minutes to each recipe unless told a number
    (BEST-RQ and HuBERT's iterations train longer than the others); a bad value stops before any job."""
    env, calls = fake_speechssl(tmp_path)

    def stage3(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
        calls.write_text("")
        proc = subprocess.run(
            ["bash", str(workdir / "egs/synthetic/ssl/run.sh"), "--stage", "3", "--stop_stage", "3",
             "--models", "apc bestrq", "--exp_dir", "exp_len", *args],
            capture_output=True, text=True, env=env, timeout=60)
        trained = [c for c in calls.read_text().splitlines() if c.startswith("pretrain") and "max_steps=0" not in c]
        return proc, trained

    proc, trained = stage3()
    assert proc.returncode == 0, proc.stderr
    assert len(trained) == 2 and not any("train.max_steps=" in c or "train.max_minutes=" in c for c in trained)
    proc, trained = stage3("--pretrain_steps", "50", "--pretrain_minutes", "2.5")
    assert proc.returncode == 0, proc.stderr
    assert len(trained) == 2 and all("train.max_steps=50 train.max_minutes=2.5" in c for c in trained)
    proc, trained = stage3("--pretrain_steps", "many")
    assert proc.returncode != 0 and "--pretrain_steps many: a whole number of steps or 'recipe'" in proc.stderr
    assert trained == []


def test_editing_a_recipe_redoes_its_stage(workdir, tmp_path):
    """The demo's stage markers record a checksum of each recipe's settings: a changed setting redoes
    pretraining (naming the file), an edited comment does not, and a downstream recipe edit redoes stage 5."""
    env, calls = fake_speechssl(tmp_path)
    recipe = workdir / "recipes/pretrain/apc_demo.yaml"

    def stage3(models: str = "apc tera") -> tuple[str, list[str]]:
        calls.write_text("")
        proc = subprocess.run(
            ["bash", str(workdir / "egs/synthetic/ssl/run.sh"), "--stage", "3", "--stop_stage", "3",
             "--models", models, "--exp_dir", "exp_edit"], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr, [c for c in calls.read_text().splitlines() if c.startswith("pretrain")]

    log, trained = stage3()
    assert len(trained) == 4  # two models and their controls
    log, trained = stage3()
    assert "(done, skipped" in log and trained == []
    recipe.write_text("# a comment only\n" + recipe.read_text())
    log, trained = stage3()
    assert "(done, skipped" in log and trained == []
    exp = workdir / "egs/synthetic/ssl/exp_edit"
    (exp / "apc/checkpoint.txt").write_text("the run so far")
    before = (exp / "apc/.recipe_settings").read_text()
    recipe.write_text(recipe.read_text().replace("max_steps:", "max_steps: 7  # was", 1))
    log, trained = stage3()
    assert "options changed since it ran (pretrain_recipes: apc_demo.yaml changed): redoing" in log
    assert len(trained) == 4
    # apc and its control start afresh; their old folders are kept aside, tera's resume as they are
    aside = sorted(p.name for p in (exp / ".before").iterdir())
    assert [a.rsplit("-", 2)[0] for a in aside] == ["apc", "apc_random"], aside
    assert (exp / ".before" / aside[0] / "checkpoint.txt").read_text() == "the run so far"
    assert not (exp / "apc/checkpoint.txt").exists() and (exp / "apc/.recipe_settings").read_text() != before
    assert "apc: its recipe changed since that run (apc_demo.yaml=" in log and "tera: its recipe" not in log
    log, _ = stage3("apc")
    assert "models: apc\\ tera -> apc, pretrain_recipes: tera_demo.yaml dropped" in log
    marker = workdir / "egs/synthetic/ssl/exp_edit/.stages/stage3.done"
    assert re.search(r"^pretrain_recipes=apc_demo\.yaml=[0-9a-f]{12}$", marker.read_text(), re.M)


def test_editing_run_sh_during_a_run_does_not_reach_the_run(workdir, tmp_path):
    """bash reads a script as it goes: an edit of run.sh while a stage runs would otherwise make it read
    the rest from a shifted offset (half lines, "command not found"). The recipes are one block, read whole."""
    env, calls = fake_speechssl(tmp_path, "sleep 1")
    calls.write_text("")
    script = workdir / "egs/synthetic/ssl/run.sh"
    proc = subprocess.Popen(
        ["bash", str(script), "--stage", "3", "--stop_stage", "3", "--models", "apc tera", "--exp_dir", "exp_busy"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while "pretrain" not in calls.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = script.read_text().split("\n")
    script.write_text("\n".join([lines[0], "# an edit while the run is under way" + "." * 40, *lines[1:]]))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "command not found" not in err and "syntax error" not in err
    assert "] done: " in err and len([c for c in calls.read_text().splitlines() if c.startswith("pretrain")]) == 4


def test_a_yaml_option_records_the_files_settings(tmp_path):
    """An option naming a YAML file (--config) puts the file's settings checksum in the stage marker:
    editing a setting redoes the stage and names the file; a comment or a layout change does not."""
    script = tmp_path / "corpus" / "task" / "run.sh"
    script.parent.mkdir(parents=True)
    cfg = script.parent / "cfg.yaml"
    cfg.write_text("optim:\n  lr: 0.001\n")
    script.write_text(
        'set -euo pipefail\ncd "$(dirname "$0")"\nconfig=cfg.yaml\n'
        f'speechssl() {{ :; }}\n. "{REPO / "egs" / "common.sh"}"\n'
        'if begin_stage 1 "train"; then echo "1 $config" >> ran.txt; done_stage 1; fi\n'
    )
    ran = script.parent / "ran.txt"

    def run() -> str:
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=script_env())
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    run()
    assert re.search(r"^config\.settings=cfg\.yaml=[0-9a-f]{12}$",
                     (script.parent / "exp/.stages/stage1.done").read_text(), re.M)
    cfg.write_text("# tuned later\noptim: {lr: 0.001}\n")
    assert "(done, skipped" in run() and ran.read_text().count("\n") == 1
    cfg.write_text("optim:\n  lr: 0.0005\n")
    assert "options changed since it ran (config.settings: cfg.yaml changed): redoing" in run()
    assert ran.read_text().count("\n") == 2
