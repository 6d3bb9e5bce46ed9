"""Tests of speechssl.config, speechssl.registry and speechssl.utils (shared plumbing)."""

from __future__ import annotations

import dataclasses

import pytest

from speechssl.config import ConfigError, apply_overrides, from_dict, load_yaml, parse_override, to_dict
from speechssl.registry import Registry, UnknownNameError
from speechssl.utils import atomic_path


@dataclasses.dataclass
class Inner:
    dim: int = 4  # a dimension
    kind: str = "gru"


@dataclasses.dataclass
class Outer:
    lr: float = 1e-3
    layers: list[tuple[int, int, int]] = dataclasses.field(default_factory=lambda: [(512, 10, 5)])
    inner: Inner = dataclasses.field(default_factory=Inner)
    flag: bool = False
    max_minutes: float | None = None


def test_from_dict_nested_and_types():
    cfg = from_dict(Outer, {"lr": "2e-4", "layers": [[8, 3, 2]], "inner": {"dim": 8}, "flag": "true"})
    assert cfg.lr == pytest.approx(2e-4)
    assert cfg.layers == [(8, 3, 2)]
    assert cfg.inner == Inner(dim=8)
    assert cfg.flag is True and cfg.max_minutes is None
    assert to_dict(cfg)["layers"] == [[8, 3, 2]]


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"model\.inner\.dimm.*valid keys: dim, kind"):
        from_dict(Outer, {"inner": {"dimm": 3}}, where="model")


def test_bad_value_names_key():
    with pytest.raises(ConfigError, match=r"inner\.dim.*integer"):
        from_dict(Outer, {"inner": {"dim": "abc"}})
    with pytest.raises(ConfigError, match=r"layers\[0\].*3 items"):
        from_dict(Outer, {"layers": [[1, 2]]})


def test_overrides():
    assert parse_override("optim.lr=1e-3") == (["optim", "lr"], 1e-3)
    assert parse_override("train.precision=bf16") == (["train", "precision"], "bf16")
    out = apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr=0.5", "model.hidden=[1, 2]"])
    assert out == {"optim": {"lr": 0.5}, "model": {"hidden": [1, 2]}}
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["nonsense"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"optim": 3}, ["optim.lr=1"])


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(listy)


def test_registry_lists_choices():
    reg: Registry = Registry("thing")
    reg.register("a")(1)
    reg.register("c", 3)
    with pytest.raises(UnknownNameError, match="unknown thing 'b'; choices: a, c"):
        reg["b"]
    for again in (lambda: reg.register("a")(2), lambda: reg.register("a", 2), lambda: reg.__setitem__("a", 2),
                  lambda: reg.update(a=2)):
        with pytest.raises(ValueError, match="thing 'a' is registered twice"):
            again()
    assert reg == {"a": 1, "c": 3}


def _built_in_registries() -> dict[str, Registry]:
    import speechssl.corpora as corpora
    import speechssl.downstream.heads as heads
    import speechssl.features as features
    import speechssl.models as models

    return {"MODELS": models.MODELS, "FRONTENDS": features.FRONTENDS, "HEADS": heads.HEADS, "CORPORA": corpora.CORPORA}


@pytest.mark.parametrize("registry", ["MODELS", "FRONTENDS", "HEADS", "CORPORA"])
def test_production_registrations_refuse_a_second_builder_for_a_name(registry):
    reg = _built_in_registries()[registry]
    assert len(reg) >= 3  # the built-ins registered themselves
    name = sorted(reg)[0]
    first = reg[name]
    with pytest.raises(ValueError, match="registered twice"):
        reg[name] = object()
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(name, object())
    assert reg[name] is first


def test_built_ins_register_through_register():
    """Every built-in entry is added as ``REG.register(name, spec)`` (one spelling to copy for a new
    family, frontend, head or corpus), never by item assignment ``REG[name] = spec``."""
    import re
    from pathlib import Path

    import speechssl

    sources = {p: p.read_text(encoding="utf-8") for p in Path(speechssl.__file__).parent.rglob("*.py")}
    assigned = [f"{p.name}: {m.group(0).strip()}" for p, text in sources.items()
                for m in re.finditer(r"^\s*[A-Z][A-Z_]*\[[^\]\n]+\]\s*=[^=]", text, re.M)]
    assert not assigned
    registered = {m.group(1) for text in sources.values() for m in re.finditer(r'\.register\(\s*"([^"]+)"', text)}
    for kind, reg in _built_in_registries().items():
        # skip what other tests registered (toy models): every field of a built-in's spec is speechssl code
        built_in = {name for name, spec in reg.items() if all(
            value.__module__.startswith("speechssl.") for value in vars(spec).values() if callable(value))}
        assert len(built_in) >= 3 and built_in <= registered, f"{kind}: {sorted(built_in - registered)} not added with .register()"


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_read_versioned_json_errors(tmp_path):
    from speechssl.utils import read_versioned_json

    with pytest.raises(FileNotFoundError, match="is not a thing: config.json is missing"):
        read_versioned_json(tmp_path / "config.json", 1, "a thing")
    path = tmp_path / "config.json"
    path.write_text("{bad")
    with pytest.raises(ValueError, match="invalid JSON"):
        read_versioned_json(path, 1, "a thing")
    path.write_text('{"format_version": 2}')
    with pytest.raises(ValueError, match="format_version 2 is newer than this speechssl understands"):
        read_versioned_json(path, 1, "a thing")
    path.write_text('{"format_version": 1, "x": 3}')
    assert read_versioned_json(path, 1, "a thing")["x"] == 3


def test_registry_replaced_swaps_for_a_block_and_restores():
    from speechssl.registry import Registry

    reg: Registry[int] = Registry("thing")
    reg.register("a", 1)
    with reg.replaced("a", 2):
        assert reg["a"] == 2
    with reg.replaced("b", 3):
        assert reg["b"] == 3
    assert dict(reg) == {"a": 1}
    with pytest.raises(ValueError, match="registered twice"):
        reg["a"] = 5
