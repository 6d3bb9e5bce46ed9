"""The toy model of tests/helpers.py (used by the pretraining-engine tests) ignores padding."""

from __future__ import annotations

import torch
from helpers import ToyConfig, ToyLinear


def test_toy_model_loss_ignores_padding():
    model = ToyLinear(ToyConfig(noise=0.0)).eval()
    wav = torch.randn(1, 160)
    single = model.loss({"wavs": wav, "lengths": torch.tensor([160]), "ids": ["a"]}).loss
    padded = torch.cat([wav, torch.zeros(1, 64)], 1)
    batched = model.loss({"wavs": padded, "lengths": torch.tensor([160]), "ids": ["a"]}).loss
    torch.testing.assert_close(single, batched)
