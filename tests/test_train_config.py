"""Pretraining config: recipe + overrides, errors listing valid keys/names, schedules."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import recipe

from speechssl.config import ConfigError
from speechssl.registry import UnknownNameError
from speechssl.train.config import (
    OptimConfig,
    load_pretrain_config,
    read_resolved_config,
    save_pretrain_config,
)
from speechssl.train.optim import LRFactor, build_optimizer, build_scheduler


def test_overrides_typed_and_model_defaults_filled(tmp_path):
    cfg = load_pretrain_config(recipe(tmp_path), ["optim.lr=1e-3", "model.hidden=4", "train.precision=bf16",
                                                  "optim.betas=[0.8,0.9]", "data.crop_seconds=null"])
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.optim.betas == (0.8, 0.9)
    assert cfg.model == {"name": "toy_linear", "frame": 16, "hidden": 4, "noise": 0.01, "nan_ids": [],
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
