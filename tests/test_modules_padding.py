"""speechssl.modules.padding: the one lengths -> mask and pad-to-batch helper every package uses."""

from __future__ import annotations

import pytest
import torch

from speechssl.data.dataset import collate_audio
from speechssl.downstream import pooling
from speechssl.features import base as features_base
from speechssl.modules import recurrent
from speechssl.modules.padding import lengths_to_mask, pad_to_batch


def test_lengths_to_mask():
    mask = lengths_to_mask(torch.tensor([3, 0, 5]), 5)
    assert mask.dtype == torch.bool and mask.shape == (3, 5)
    assert mask.sum(1).tolist() == [3, 0, 5] and mask[0].tolist() == [True, True, True, False, False]


def test_every_package_uses_the_same_mask_helper():
    assert features_base.frame_mask is lengths_to_mask
    assert pooling.valid_mask is lengths_to_mask
    assert recurrent.lengths_to_mask is lengths_to_mask


def test_pad_to_batch_values_lengths_and_errors():
    a, b = torch.arange(1.0, 4.0), torch.tensor([7.0])
    out, lengths = pad_to_batch([a, b])
    assert out.tolist() == [[1.0, 2.0, 3.0], [7.0, 0.0, 0.0]] and lengths.tolist() == [3, 1]
    assert out.dtype == torch.float32 and lengths.dtype == torch.long
    frames, _ = pad_to_batch([torch.ones(2, 4, dtype=torch.float64), torch.ones(5, 4)], dtype=torch.float64)
    assert frames.shape == (2, 5, 4) and frames.dtype == torch.float64 and float(frames[0, 2:].abs().sum()) == 0
    with pytest.raises(ValueError, match="no tensors"):
        pad_to_batch([])
    with pytest.raises(ValueError, match="tensor 1 has shape"):
        pad_to_batch([torch.ones(2, 4), torch.ones(2, 3)])


def test_collate_audio_pads_with_the_shared_helper():
    items = [{"id": "a", "wav": torch.tensor([0.5, -0.5]), "speaker": "s1"}, {"id": "b", "wav": torch.tensor([1.0])}]
    batch = collate_audio(items)
    assert batch["wavs"].tolist() == [[0.5, -0.5], [1.0, 0.0]] and batch["lengths"].tolist() == [2, 1]
    assert batch["ids"] == ["a", "b"] and batch["speaker"] == ["s1", None]
