"""A damaged weights file (truncated model.safetensors) or a release folder without its weights is a
one-line error naming the file, wherever it is read: load_encoder / extract, --init-from, downstream
models. safetensors' own error is neither a ValueError nor an OSError, so it used to escape as a traceback."""

from __future__ import annotations

import shutil

import pytest
from helpers import make_corpus, tiny_model

import speechssl
from speechssl.cli.main import main
from speechssl.train import checkpoint as ckpt_io
from speechssl.upstream.release import save_released_encoder
from speechssl.utils import read_safetensors


@pytest.fixture
def release(tmp_path):
    folder = tmp_path / "enc"
    save_released_encoder(tiny_model("apc"), folder)
    return folder


def _truncate(path):
    path.write_bytes(path.read_bytes()[:300])


def test_truncated_release_is_a_clear_error(release, tmp_path, capsys):
    _truncate(release / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors: cannot read the weights \(.*\); the file is damaged"):
        speechssl.load_encoder(release)
    manifest = make_corpus(tmp_path / "c", n=2)
    assert main(["extract", "--encoder", str(release), "--input", str(manifest), "--out", str(tmp_path / "f"),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read the weights" in err, err


def test_init_from_a_truncated_release(release):
    _truncate(release / "model.safetensors")
    with pytest.raises(ckpt_io.CheckpointError, match="cannot read the weights"):
        ckpt_io.load_model_weights(tiny_model("apc"), release, "apc")


def test_release_without_weights_says_so(release):
    (release / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"enc: model.safetensors is missing \(its config.json is a speechssl release's\)"):
        speechssl.load_encoder(release)


def test_read_safetensors_names_the_file(tmp_path, release):
    bad = tmp_path / "w.safetensors"
    shutil.copy(release / "model.safetensors", bad)
    assert read_safetensors(bad)  # intact: the tensors
    _truncate(bad)
    with pytest.raises(KeyError, match="w.safetensors: cannot read the weights"):
        read_safetensors(bad, error=KeyError)
