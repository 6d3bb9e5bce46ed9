"""`downstream finetune`: encoder + head trained end to end on a tiny noisy-sine corpus with a tiny
wav2vec 2.0. Frozen prefixes keep their weights, the rest moves; encoder_lr 0 leaves the encoder
as it was; the exported encoder loads and gives other features; `downstream predict` on the output
reproduces the test predictions; a freeze prefix that matches nothing is a clear error."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import make_corpus, tiny_model
from safetensors.torch import load_file
from torch import nn

from speechssl.cli.main import main
from speechssl.config import ConfigError
from speechssl.data import read_manifest
from speechssl.downstream import downstream_config
from speechssl.downstream.finetune import finetune, freeze_candidates, freeze_prefixes
from speechssl.upstream import load_encoder, save_encoder

FAST = {"train": {"max_steps": 6, "valid_every": 3, "batch_size": 8}, "head": {"hidden_dim": 16},
        "optim": {"lr": 1e-3}}


def _cfg(**finetune_section):
    return downstream_config({"task": {"label": "speaker"}, **FAST,
                              "finetune": {"encoder_lr": 1e-3, "batch_seconds": 4.0, **finetune_section}})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    paths = {name: make_corpus(root, n=n, seed=seed, name=name, seconds=(0.5, 0.8))
             for name, n, seed in (("train", 12, 0), ("dev", 6, 1), ("test", 6, 2))}
    paths["encoder"] = save_encoder(tiny_model("wav2vec2"), root / "w2v2")
    paths["root"] = root
    return paths


@pytest.fixture(scope="module")
def tuned(corpus):
    """Fine-tuned with the conv feature encoder frozen."""
    out = corpus["root"] / "tuned"
    results = finetune(_cfg(freeze=["feature_encoder"]), corpus["encoder"], read_manifest(corpus["train"]), out,
                       dev=read_manifest(corpus["dev"]), test=read_manifest(corpus["test"]), progress=False)
    return out, results


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_frozen_prefix_keeps_its_weights_and_the_rest_trains(corpus, tuned):
    out, results = tuned
    before, after = _weights(corpus["encoder"]), _weights(out / "encoder")
    assert before.keys() == after.keys()
    frozen = [k for k in before if k.startswith("feature_encoder.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    for i in range(3):  # every transformer block learned something
        block = [k for k in before if k.startswith(f"encoder.layers.{i}.")]
        assert any(not torch.equal(before[k], after[k]) for k in block), f"encoder.layers.{i} did not change"
    assert results["protocol"]["name"] == "finetune" and results["protocol"]["freeze"] == ["feature_encoder"]
    assert results["protocol"]["frozen_parameters"] == len(frozen)
    assert set(results["test"]) >= {"accuracy", "ua", "macro_f1", "confusion_matrix"}
    assert results["summary_split"] == "test" and 1 <= results["best_step"] <= results["steps_run"] == 6


def test_exported_encoder_loads_and_gives_other_features(corpus, tuned):
    out, _ = tuned
    wav = torch.randn(1, 8000) * 0.1
    original = load_encoder(str(corpus["encoder"]))(wav).hidden_states
    exported = load_encoder(str(out / "encoder"))(wav).hidden_states
    as_experiment = load_encoder(str(out))(wav).hidden_states  # the output folder is an experiment folder too
    assert [h.shape for h in original] == [h.shape for h in exported]
    assert not torch.allclose(original[-1], exported[-1])
    assert all(torch.equal(a, b) for a, b in zip(exported, as_experiment))
    meta = json.loads((out / "model.json").read_text())
    assert meta["encoder"]["spec"] == str((out / "encoder").resolve())
    config = json.loads((out / "encoder" / "config.json").read_text())
    assert config["role"] == "ssl" and config["extra"]["finetuned"]["label"] == "speaker"


def test_predict_on_the_output_reproduces_the_test_predictions(corpus, tuned, tmp_path):
    out, results = tuned
    preds = tmp_path / "preds.tsv"
    assert main(["downstream", "predict", "--model", str(out), "--input", str(corpus["test"]), "--out", str(preds)]) == 0
    rows = _tsv(preds)
    assert [(r["id"], r["prediction"]) for r in rows] == \
        [(r["id"], r["prediction"]) for r in _tsv(out / "predictions_test.tsv")]
    acc = sum(r["prediction"] == r["reference"] for r in rows) / len(rows)
    assert acc == pytest.approx(results["test"]["accuracy"])


def test_encoder_lr_zero_trains_the_head_only(corpus, tmp_path):
    results = finetune(_cfg(encoder_lr=0.0), corpus["encoder"], read_manifest(corpus["train"]), tmp_path / "head",
                       dev=read_manifest(corpus["dev"]), progress=False)
    before, after = _weights(corpus["encoder"]), _weights(tmp_path / "head" / "encoder")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert results["protocol"]["trained_encoder_parameters"] == 0
    weights = list(results["featurizer"]["weights"].values())
    assert max(weights) - min(weights) > 1e-4  # the featurizer (part of the head) did learn
    assert results["summary_split"] == "dev" and results["test"] is None


def test_freeze_prefix_matching_nothing_is_an_error(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"'encoder\.layer\.0' match\(es\) no encoder parameter.*encoder\.layers\.0"):
        finetune(_cfg(freeze=["feature_encoder", "encoder.layer.0"]), corpus["encoder"],
                 read_manifest(corpus["train"]), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_freeze_prefixes_match_at_dots_and_every_family_lists_valid_ones():
    net = nn.Sequential()
    net.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(11))
    frozen = freeze_prefixes(net, ["layers.1"])
    assert frozen == ["layers.1.weight", "layers.1.bias"]  # not layers.10
    assert [n for n, p in net.named_parameters() if not p.requires_grad] == frozen
    for family in ("apc", "cpc", "hubert", "tera"):
        model = tiny_model(family)
        candidates = freeze_candidates(model)
        assert candidates and freeze_prefixes(model, candidates)  # every listed prefix is accepted


def test_finetune_config_section_is_checked():
    assert _cfg(freeze=["a.b"]).finetune.freeze == ["a.b"]
    with pytest.raises(ConfigError, match="finetune.encoder_lrr"):
        downstream_config({"finetune": {"encoder_lrr": 1e-5}})
    with pytest.raises(ValueError, match="encoder_lr >= 0"):
        downstream_config({"finetune": {"encoder_lr": -1.0}})


def test_cli_finetune_end_to_end(corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["downstream", "finetune", "--encoder", str(corpus["encoder"]), "--train", str(corpus["train"]),
            "--dev", str(corpus["dev"]), "--test", str(corpus["test"]), "--label", "speaker", "--out", str(out),
            "--quiet", "train.max_steps=3", "train.valid_every=3", "head.hidden_dim=16", "finetune.batch_seconds=4",
            "finetune.encoder_lr=1e-3", "finetune.freeze=[feature_encoder,encoder.layers.0]"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "test: accuracy" in text and "fine-tuned encoder" in text
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["freeze"] == ["feature_encoder", "encoder.layers.0"]
    assert results["hyperparameters"]["finetune"]["encoder_lr"] == pytest.approx(1e-3)
    before, after = _weights(corpus["encoder"]), _weights(out / "encoder")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder.layers.0."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoder.layers.1."))
    for name in ("model.json", "model.safetensors", "config.yaml", "predictions_test.tsv", "confusion_matrix.png"):
        assert (out / name).is_file(), name
