"""train.max_steps=0 releases the initial weights: the random-init control of an architecture."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from speechssl.cli.main import main
from speechssl.corpora.synthetic import synthesize_corpus


def test_max_steps_zero_releases_seeded_initial_weights(tmp_path):
    manifest = synthesize_corpus(tmp_path / "synth", backend="formant", speakers=2, utts_per_speaker=2)
    outs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        exp = tmp_path / name
        argv = ["pretrain", "--config", str(Path(__file__).parents[1] / "recipes/pretrain/apc_tiny.yaml"), "--train", str(manifest), "--exp", str(exp),
                "train.max_steps=0", f"train.seed={seed}", "train.progress=false"]
        assert main(argv) == 0
        outs.append(load_file(str(exp / "encoder" / "model.safetensors")))
    assert outs[0].keys() == outs[2].keys()
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])  # same seed, same control
    assert any(not torch.equal(outs[0][k], outs[2][k]) for k in outs[0])  # another seed, other weights
