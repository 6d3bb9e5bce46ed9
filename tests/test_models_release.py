"""Every registered family survives release -> load: same config, same weights and buffers, same features.

Parametrized over ``MODELS`` (its ``<name>_tiny()`` preset), so a new family is covered by registering
it; ``VARIANTS`` adds configurations whose round trip has its own risk (batch-norm running
statistics, a transformer context, VQ temperatures in buffers).
"""

from __future__ import annotations

import pytest
import torch
from helpers import built_in_families, speech_batch

from speechssl.config import to_dict
from speechssl.models import build_model
from speechssl.upstream.release import load_released_model, save_released_encoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

VARIANTS = {
    "apc": {"transformer": {"context": "transformer", "num_heads": 2, "ffn_dim": 32},
            "vq": {"context": "gru", "vq": {"after_layers": [1], "num_groups": 2, "num_vars": 8}}},
    "cpc": {"conv_batch_gru_linear": {"norm": "batch", "context": "gru", "predictor": "linear", "negatives": "batch"},
            "frame_transformer": {"encoder": "frame", "frontend": {"name": "logmel", "n_mels": 20,
                                                                     "cmvn": "utterance"},
                                  "frame_dim": 16, "context": "transformer", "predictor": "linear",
                                  "negatives": "utterance"}},
}
CASES = [(family, "tiny") for family in built_in_families()] + [
    (family, variant) for family in built_in_families() for variant in VARIANTS.get(family, {})]


def _config(family: str, variant: str) -> dict:
    import importlib

    preset = getattr(importlib.import_module(f"speechssl.models.{family}"), f"{family}_tiny")()
    return {"name": family, **to_dict(preset), **VARIANTS.get(family, {}).get(variant, {})}


def test_every_built_in_family_is_covered():
    assert {"apc", "cpc", "wav2vec2"} <= set(built_in_families())
    assert set(VARIANTS) <= set(built_in_families())


@pytest.mark.parametrize("family,variant", CASES)
def test_release_round_trip(tmp_path, family, variant):
    torch.manual_seed(0)
    model = build_model(_config(family, variant))
    n = max(model.min_samples, 4000)
    model.train()
    batch = speech_batch([n + 2000, n + 1000], speakers=["s0", "s1"])
    if hasattr(model, "target_specs"):  # HuBERT learns from frame targets (zeros: any class will do)
        batch["targets"] = torch.zeros(2, int(model.num_frames(batch["lengths"]).max()), len(model.target_specs()),
                                       dtype=torch.long)
    model.loss(batch)  # moves batch-norm running statistics away from their init
    model.step_update(5)  # schedules kept in buffers (e.g. Gumbel temperature)
    model.eval()
    save_released_encoder(model, tmp_path / "enc")
    loaded = load_released_model(tmp_path / "enc")
    assert type(loaded) is type(model) and loaded.config == model.config
    # what a release holds (an EMA teacher stays behind: the loaded one is a copy of the student)
    want, got = model.released_state_dict(), loaded.released_state_dict()
    assert list(got) == list(want) and list(loaded.state_dict()) == list(model.state_dict())
    for key in want:
        assert torch.equal(got[key], want[key]), key
    b = speech_batch([n + 3000, n], seed=1)
    a, c = model.encode(b["wavs"], b["lengths"]), loaded.encode(b["wavs"], b["lengths"])
    assert a.layer_names == c.layer_names and torch.equal(a.lengths, c.lengths)
    for x, y in zip(a.hidden_states, c.hidden_states):
        assert torch.equal(x, y)
