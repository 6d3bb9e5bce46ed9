"""A device the machine does not have (a typo such as "gpu", CUDA without a GPU, cuda:N past the
last GPU) is a one-line error naming the option, in every verb that takes one (no torch traceback)."""

from __future__ import annotations

import json

import pytest
import torch

import speechssl
from speechssl.cli.main import main
from speechssl.utils import checked_device


def test_checked_device_accepts_cpu_and_names_bad_values():
    assert checked_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^--device: expected cpu, cuda or cuda:N, got 'gpu'$"):
        checked_device("gpu", "--device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available here"):
            checked_device("cuda:0")
    else:
        n = torch.cuda.device_count()
        with pytest.raises(ValueError, match=f"only {n} CUDA device"):
            checked_device(f"cuda:{n}")


def test_load_encoder_refuses_an_unknown_device():
    with pytest.raises(ValueError, match="expected cpu, cuda or cuda:N, got 'gpu'"):
        speechssl.load_encoder("logmel", device="gpu")


def _manifest(tmp_path):
    import numpy as np
    import soundfile as sf

    sf.write(tmp_path / "a.wav", np.zeros(16000, dtype="float32"), 16000)
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": "a", "path": "a.wav", "num_samples": 16000, "sample_rate": 16000,
                                "speaker": "s"}) + "\n")
    return path


@pytest.mark.parametrize("verb", ["extract", "targets", "downstream"])
def test_cli_bad_device_is_one_line(verb, tmp_path, capsys):
    manifest = str(_manifest(tmp_path))
    argv = {
        "extract": ["extract", "--encoder", "logmel", "--input", manifest, "--out", str(tmp_path / "f"),
                    "--device", "gpu", "--no-progress"],
        "targets": ["targets", "kmeans", "--features", "logmel", "--train", manifest, "--k", "2",
                    "--out", str(tmp_path / "km"), "--device", "gpu"],
        "downstream": ["downstream", "train", "--encoder", "logmel", "--train", manifest, "--label", "speaker",
                       "--exp", str(tmp_path / "exp"), "--quiet", "encode.device=gpu"],
    }[verb]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected cpu, cuda or cuda:N, got 'gpu'" in err, err
