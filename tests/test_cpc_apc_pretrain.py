"""End to end: `speechssl pretrain` with the tiny APC and CPC recipes releases encoders that reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speechssl.audio import load_audio
from speechssl.cli.main import main
from speechssl.corpora.synthetic import synthesize_corpus
from speechssl.data import read_manifest
from speechssl.upstream.release import load_released_model

RECIPES = Path(__file__).parents[1] / "recipes" / "pretrain"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize_corpus(tmp_path_factory.mktemp("synth"), backend="formant", speakers=2, utts_per_speaker=2)


@pytest.mark.parametrize("recipe", ["apc_tiny", "cpc_tiny"])
def test_tiny_recipe_trains_and_releases(corpus, tmp_path, recipe):
    exp = tmp_path / recipe
    argv = ["pretrain", "--config", str(RECIPES / f"{recipe}.yaml"), "--train", str(corpus), "--valid", str(corpus),
            "--exp", str(exp), "train.max_steps=3", "train.valid_every=0", "train.progress=false", "train.plot=false"]
    assert main(argv) == 0
    model = load_released_model(exp / "encoder")
    assert model.name == recipe.split("_")[0]
    wavs = [load_audio(r["path"]) for r in read_manifest(corpus)[:2]]
    lengths = torch.tensor([len(w) for w in wavs])
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    out = model.encode(batch, lengths)
    for i, w in enumerate(wavs):
        single = model.encode(w[None], lengths[i : i + 1])
        n = int(out.lengths[i])
        for hb, hs in zip(out.hidden_states, single.hidden_states):
            torch.testing.assert_close(hb[i, :n], hs[0], atol=2e-5, rtol=1e-4)
