"""What a user sees when the input is wrong: one line naming the file, field or key, without
the Python repr of the exception (no quotes around a KeyError's message) and without a traceback."""

from __future__ import annotations

import json

import pytest

from speechssl.cli.main import main


def _manifest(path, n=4):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"u{i}", "path": f"u{i}.wav", "num_samples": 16000, "sample_rate": 16000,
                                "speaker": f"s{i % 2}"}) + "\n")
    return path


def test_missing_field_error_is_printed_plainly(tmp_path, capsys):
    manifest = _manifest(tmp_path / "all.jsonl")
    code = main(["manifest", "split", str(manifest), "--out-dir", str(tmp_path / "out"),
                 "--fractions", "train=0.5,dev=0.5", "--group-by", "spkr"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("speechssl manifest: error: record 'u0' has no field 'spkr'"), err
    assert "Traceback" not in err and not err.endswith('"'), err


def test_augment_yaml_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "aug.yaml"
    bad.write_text("noise:\n  p: 1\n")
    manifest = _manifest(tmp_path / "m.jsonl")
    assert main(["augment", "--config", str(bad), "--input", str(manifest), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"speechssl augment: error: {bad}: unknown key(s) augment.noise"), err
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: {name: simclr}\n")
    assert main(["augment", "--config", str(recipe), "--input", str(manifest), "--out", str(tmp_path / "o")]) == 1
    assert f"{recipe}: a recipe without a model.augment section" in capsys.readouterr().err


def test_downstream_config_errors_name_the_file_or_the_override(tmp_path):
    from speechssl.config import ConfigError
    from speechssl.downstream.model import load_downstream_config

    bad = tmp_path / "ds.yaml"
    bad.write_text("optim: {lrr: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        load_downstream_config(bad, [], "speaker")
    assert str(err.value).startswith(f"{bad}: unknown key(s) optim.lrr for OptimConfig"), err.value
    with pytest.raises(ConfigError) as err:
        load_downstream_config(None, ["train.max_steps=abc"], "speaker")
    assert str(err.value) == "override 'train.max_steps=abc': train.max_steps: expected an integer, got 'abc'"
