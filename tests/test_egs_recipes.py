"""Each real-corpus recipe (egs/<corpus>/<task>/run.sh) end to end on a fabricated tree.

The recipes and YAML configs are copied into a temporary folder so runs never write into the
checkout; overrides shrink every training to a few steps.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from corpus_fixtures import make_iemocap, make_librispeech, make_voxceleb1, write_noise_wav

from speechssl.data.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def workdir(tmp_path):
    shutil.copytree(REPO / "egs", tmp_path / "egs", ignore=shutil.ignore_patterns("data", "exp"))
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    return tmp_path


def run_recipe(workdir: Path, recipe: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", MPLBACKEND="Agg")
    proc = subprocess.run(
        ["bash", str(workdir / "egs" / recipe / "run.sh"), *args],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, f"{recipe} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


SHORT_DOWNSTREAM = "train.max_steps=4 train.valid_every=2 train.batch_size=4"


def test_librispeech_ssl(workdir, tmp_path):
    corpus = make_librispeech(tmp_path / "corpus", seconds=1.5)
    run_recipe(
        workdir, "librispeech/ssl", "--corpus", str(corpus), "--config", "../../../recipes/pretrain/apc_tiny.yaml",
        "--overrides", "train.max_steps=2 train.valid_every=1 train.log_every=1",
    )
    out = workdir / "egs/librispeech/ssl"
    assert len(read_manifest(out / "data/train.jsonl")) == 3
    assert (out / "exp/apc/encoder/model.safetensors").is_file()
    assert (out / "exp/apc/feats_dev/index.tsv").is_file()
    # Rerunning skips every finished stage.
    again = run_recipe(workdir, "librispeech/ssl", "--corpus", str(corpus))
    assert again.stderr.count("(done, skipped") == 4


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


def test_recipe_rejects_unknown_option(workdir):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(workdir / "egs/generic/cls/run.sh"), "--colour", "red"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "unknown option --colour" in proc.stderr
