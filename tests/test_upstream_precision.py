"""load_encoder(precision="bf16"): autocast compute, float32 outputs close to fp32."""

from __future__ import annotations

import pytest
import torch

from speechssl import load_encoder
from speechssl.config import to_dict
from speechssl.models.base import build_model
from speechssl.models.wav2vec2 import wav2vec2_tiny


def test_bf16_close_to_fp32():
    torch.manual_seed(0)
    model = build_model({"name": "wav2vec2", **to_dict(wav2vec2_tiny())}).eval()
    wavs, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 9000])
    ref = load_encoder(model)(wavs, lengths)
    out = load_encoder(model, precision="bf16")(wavs, lengths)
    assert out.layer_names == ref.layer_names
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert a.dtype == torch.float32
        rel = (a - b).norm() / b.norm()
        assert rel < 0.05, rel


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16'"):
        load_encoder("logmel", precision="fp8")
