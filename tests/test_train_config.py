"""Pretraining config: recipe + overrides, errors listing valid keys/names, schedules."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from helpers import recipe

from speechssl.config import ConfigError, to_dict
from speechssl.registry import UnknownNameError
from speechssl.train.config import (
    OptimConfig,
    PretrainConfig,
    load_pretrain_config,
    read_resolved_config,
    save_pretrain_config,
)
from speechssl.train.optim import LRFactor, build_optimizer, build_scheduler


def test_overrides_typed_and_model_defaults_filled(tmp_path):
    cfg = load_pretrain_config(recipe(tmp_path), ["optim.lr=1e-3", "model.hidden=4", "train.precision=bf16",
                                                  "optim.betas=[0.8,0.9]", "data.crop_seconds=null"])
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.optim.betas == (0.8, 0.9)
    assert cfg.model_dict() == {"name": "toy_linear", "frame": 16, "hidden": 4, "noise": 0.01, "nan_ids": [],
                         "frontend": {"name": "waveform"}}
    assert cfg.train.precision == "bf16" and cfg.data.crop_seconds is None
    save_pretrain_config(cfg, tmp_path / "resolved.yaml", extra={"git": "abc"})
    assert read_resolved_config(tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize(
    "override, error, words",
    [
        (["model.hiden=3"], ConfigError, ["model.hiden", "valid keys", "hidden"]),
        (["optim.lrr=1"], ConfigError, ["optim.lrr", "valid keys", "lr"]),
        (["train.precision=fp8"], ConfigError, ["fp8", "fp16", "bf16"]),
        (["optim.name=sgd"], ConfigError, ["sgd", "adamw"]),
        (["trian.max_steps=3"], ConfigError, ["trian", "valid sections", "train"]),
        (["model.name=nope"], UnknownNameError, ["nope", "toy_linear"]),
        (["train.max_steps=-1"], ConfigError, ["max_steps"]),
        (["optim.lr"], ConfigError, ["key.sub=value"]),
    ],
)
def test_config_errors_name_the_key_and_choices(tmp_path, override, error, words):
    with pytest.raises(error) as info:
        load_pretrain_config(recipe(tmp_path), override)
    for w in words:
        assert w in str(info.value)


def test_errors_from_an_override_name_the_override_not_the_file(tmp_path):
    path = recipe(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_pretrain_config(path, ["optim.lr=1e-3", "train.max_stepz=5"])
    assert str(info.value).startswith(f"override 'train.max_stepz=5' (on {path}): unknown key(s) train.max_stepz")
    with pytest.raises(ConfigError) as info:
        load_pretrain_config(path, ["train.max_steps=abc"])
    assert str(info.value) == f"override 'train.max_steps=abc' (on {path}): train.max_steps: expected an integer, got 'abc'"
    # a bad key in the file itself still names the file
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("max_steps:", "max_stepz:"))
    with pytest.raises(ConfigError) as info:
        load_pretrain_config(bad, ["train.seed=1"])
    assert str(info.value).startswith(f"{bad}: unknown key(s) train.max_stepz")


def test_unknown_section_in_yaml_and_missing_model(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {name: toy_linear}\noptimizer: {lr: 1}\n")
    with pytest.raises(ConfigError, match="optimizer.*valid sections"):
        load_pretrain_config(path)
    path.write_text("train: {max_steps: 3}\n")
    with pytest.raises(ConfigError, match="'model' section is missing"):
        load_pretrain_config(path)


def test_schedules():
    warm = LRFactor("cosine", warmup_steps=4, max_steps=14, final_lr_ratio=0.1)
    assert [warm(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warm(4) == pytest.approx(1.0) and warm(14) == pytest.approx(0.1) and warm(100) == pytest.approx(0.1)
    assert warm(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    lin = LRFactor("linear", 0, 10, 0.0)
    assert lin(5) == pytest.approx(0.5) and lin(10) == 0.0
    assert LRFactor("constant", 2, 10, 0.0)(9) == 1.0
    p = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([p], OptimConfig(name="adamw", lr=0.5, weight_decay=0.1, warmup_steps=2))
    assert isinstance(opt, torch.optim.AdamW)
    sched = build_scheduler(opt, OptimConfig(lr=0.5, warmup_steps=2), max_steps=10)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes" / "pretrain").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_model_section_is_the_family_config_object_and_saves_as_before(tmp_path, path):
    from speechssl.models.base import MODELS

    cfg = load_pretrain_config(path)
    raw = yaml.safe_load(path.read_text())["model"]
    assert cfg.model_name == raw["name"] and type(cfg.model) is MODELS[raw["name"]].config_cls
    saved = cfg.to_dict()["model"]
    assert list(saved)[0] == "name" and saved == {"name": raw["name"], **to_dict(cfg.model)}
    for key, value in raw.items():  # the recipe's own values are kept, defaults filled in around them
        if key != "name":
            assert to_dict(saved[key]) == to_dict(value), key
    save_pretrain_config(cfg, tmp_path / "config.yaml")
    assert read_resolved_config(tmp_path / "config.yaml") == cfg


def test_loading_a_config_builds_no_model_and_the_trainer_builds_one(tmp_path, monkeypatch):
    from helpers import ToyConfig, ToyLinear, make_corpus

    from speechssl.models.base import MODELS, ModelSpec
    from speechssl.train.trainer import Trainer

    built = []

    def build(config):
        assert isinstance(config, ToyConfig)  # the typed object itself, no dict on the way
        built.append(config)
        return ToyLinear(config)

    with MODELS.replaced("toy_linear", ModelSpec(ToyConfig, build)):
        cfg = load_pretrain_config(recipe(tmp_path), ["model.hidden=4"])
        assert built == [] and cfg.model == ToyConfig(hidden=4) and cfg.model_name == "toy_linear"
        Trainer(cfg, make_corpus(tmp_path / "data", n=3), None, tmp_path / "exp").close()
    assert built == [cfg.model]


def test_builder_errors_are_config_errors_before_any_file(tmp_path, monkeypatch):
    from helpers import ToyConfig

    from speechssl.models.base import MODELS, ModelSpec
    from speechssl.train.trainer import pretrain

    def build(config):
        raise ValueError("hidden must divide frame")

    with MODELS.replaced("toy_linear", ModelSpec(ToyConfig, build)):
        cfg = load_pretrain_config(recipe(tmp_path))  # reading the config builds nothing
        with pytest.raises(ConfigError, match="model 'toy_linear' cannot be built: hidden must divide frame"):
            pretrain(cfg, tmp_path / "none.jsonl", None, tmp_path / "exp")
    assert not (tmp_path / "exp").exists()


def test_family_checks_are_config_errors_naming_the_file(tmp_path):
    # wav2vec2's __post_init__ raises a plain ValueError; the recipe loader names the file
    path = tmp_path / "r.yaml"
    path.write_text("model: {name: wav2vec2}\n")
    with pytest.raises(ConfigError) as info:
        load_pretrain_config(path, ["model.num_heads=5"])
    assert str(info.value).startswith(f"{path}: ") and "not divisible by num_heads 5" in str(info.value)


def test_pretrain_config_takes_an_object_or_a_mapping():
    from speechssl.models.apc import APCConfig

    by_object = PretrainConfig(model=APCConfig(num_layers=2))
    by_mapping = PretrainConfig(model={"name": "apc", "num_layers": 2})
    assert by_object == by_mapping and by_object.model_name == by_mapping.model_name == "apc"
    assert by_object.to_dict() == by_mapping.to_dict()
    with pytest.raises(ConfigError, match="expected a model config or a mapping"):
        PretrainConfig(model=3)
    with pytest.raises(ConfigError, match="OptimConfig is registered as no model"):
        PretrainConfig(model=OptimConfig())


def test_a_config_yaml_of_an_earlier_version_still_reads(tmp_path):
    # written before train.progress_every_seconds existed, with the run-info section
    old = tmp_path / "config.yaml"
    old.write_text(
        "model:\n  name: toy_linear\n  frame: 16\n  hidden: 8\n  noise: 0.01\n  nan_ids: []\n"
        "  frontend: {name: waveform}\n"
        "data: {max_batch_seconds: 1.0, crop_seconds: 0.25, min_seconds: 0.1}\n"
        "optim: {name: adam, lr: 0.01}\n"
        "train: {max_steps: 6, progress: false}\n"
        "info: {world_size: 1}\n")
    cfg = read_resolved_config(old)
    assert cfg.model_name == "toy_linear" and cfg.model.hidden == 8 and cfg.train.progress_every_seconds == 30.0


def test_every_registered_family_is_in_the_typed_model_union():
    """A family of speechssl.models must also join ``ModelConfig`` (typed configs; test plug-ins
    such as helpers.ToyLinear are accepted at run time by their registered class)."""
    import typing

    from speechssl.models import MODELS
    from speechssl.train.config import ModelConfig

    union = set(typing.get_args(ModelConfig))
    ours = {name: spec for name, spec in MODELS.items() if spec.config_cls.__module__.startswith("speechssl.models.")}
    assert {"apc", "cpc", "wav2vec2", "hubert"} <= set(ours)
    missing = sorted(name for name, spec in ours.items() if spec.config_cls not in union)
    assert not missing, f"families missing from speechssl.train.config.ModelConfig: {missing}"
