"""``speechssl pretrain --overfit-one-batch``: the recipe's model, optimiser and data on one fixed batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import make_corpus, recipe

from speechssl.cli.main import main as cli_main
from speechssl.train.config import load_pretrain_config
from speechssl.train.overfit import overfit_one_batch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), n=8, seconds=(0.5, 0.8))


def test_a_real_recipe_fits_one_batch_and_writes_json_and_png(manifest, tmp_path, capsys):
    exp = tmp_path / "exp"
    code = cli_main(["pretrain", "--config", str(ROOT / "recipes/pretrain/apc_tiny.yaml"), "--train", str(manifest),
                     "--exp", str(exp), "--overfit-one-batch", "40", "data.max_batch_seconds=2",
                     "model.hidden_size=64", "optim.lr=1e-2", "train.progress=false"])
    out = json.loads((exp / "overfit_one_batch" / "overfit.json").read_text())
    assert code == 0 and out["fits"] is True and out["model"] == "apc" and len(out["losses"]) == 40
    assert out["last"] <= 0.5 * out["first"] and out["batch_ids"]
    assert "can fit a batch" in capsys.readouterr().out
    assert (exp / "overfit_one_batch" / "overfit.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(exp.rglob("*.pt")) and not (exp / "checkpoints").exists()  # the real run's folder untouched


def test_a_learning_rate_far_off_does_not_fit_and_says_so(manifest, tmp_path, capsys):
    code = cli_main(["pretrain", "--config", str(recipe(tmp_path)), "--train", str(manifest), "--exp",
                     str(tmp_path / "exp"), "--overfit-one-batch", "20", "optim.lr=1e-9"])
    assert code == 3
    said = capsys.readouterr().out
    assert "did not fall below 0.5 x" in said and "optim.lr" in said
    # the recipe's warm-up and cosine schedule are not used: the lr is the peak lr at every step
    assert json.loads((tmp_path / "exp/overfit_one_batch/overfit.json").read_text())["lr"] == 1e-9


def test_a_config_class_registered_twice_keeps_its_model(manifest, tmp_path):
    # other test modules register more toy models on ToyConfig; the recipe's name must still decide
    from helpers import ToyConfig, ToyLinear

    from speechssl.models.base import MODELS, ModelSpec

    cfg = load_pretrain_config(recipe(tmp_path), [])
    with MODELS.replaced("toy_linear_twin", ModelSpec(ToyConfig, ToyLinear)):
        verdict = overfit_one_batch(cfg, manifest, tmp_path / "exp", steps=3, progress=False)
    assert verdict["model"] == "toy_linear" and len(verdict["losses"]) == 3


def test_bad_arguments(manifest, tmp_path):
    cfg = load_pretrain_config(recipe(tmp_path), [])
    with pytest.raises(ValueError, match="at least 2 steps"):
        overfit_one_batch(cfg, manifest, tmp_path / "exp", steps=1)
    with pytest.raises(ValueError, match="fit_ratio"):
        overfit_one_batch(cfg, manifest, tmp_path / "exp", fit_ratio=1.5)
