"""speechssl.modules.padding: the one lengths -> mask and pad-to-batch helper every package uses."""

from __future__ import annotations

import numpy as np
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


def test_pad_to_batch_pads_a_chosen_dimension():
    stacks = [torch.arange(12.0).reshape(2, 3, 2), torch.ones(2, 1, 2)]  # [layers, T_i, D]
    out, lengths = pad_to_batch(stacks, time_dim=1)
    assert out.shape == (2, 2, 3, 2) and lengths.tolist() == [3, 1]
    assert torch.equal(out[0], stacks[0]) and torch.equal(out[1, :, :1], stacks[1])
    assert float(out[1, :, 1:].abs().sum()) == 0
    assert torch.equal(pad_to_batch(stacks, time_dim=-2)[0], out)
    with pytest.raises(ValueError, match=r"tensor 1 has shape \(3, 1, 2\), expected \[2, L, 2\]"):
        pad_to_batch([stacks[0], torch.ones(3, 1, 2)], time_dim=1)


def _spy(monkeypatch, module, name: str) -> list:
    """Replace ``module.name`` with a wrapper that records its calls and returns the real result."""
    real, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_waveform_frontend_masks_with_the_shared_helper(monkeypatch):
    from speechssl.features import waveform

    calls = _spy(monkeypatch, waveform, "lengths_to_mask")
    wavs = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 6.0, 5.0, 7.0]])
    frontend = waveform.Waveform(waveform.WaveformConfig(normalize=True))
    feats, lengths = frontend(wavs, torch.tensor([3, 4]))
    assert len(calls) == 1 and lengths.tolist() == [3, 4]
    valid = torch.tensor([1.0, 2.0, 3.0])
    ref = (valid - valid.mean()) / torch.sqrt(valid.var(unbiased=False) + waveform.NORM_EPS)
    torch.testing.assert_close(feats[0, :3, 0], ref)
    assert float(feats[0, 3, 0]) == 0.0  # padding stays zero


def test_collate_features_pads_layer_stacks_with_the_shared_helper(monkeypatch):
    from speechssl.downstream import training

    calls = _spy(monkeypatch, training, "pad_to_batch")
    feats = [[torch.randn(t, 3, dtype=torch.float64) + k for k in range(3)] for t in (4, 2)]
    stacked, lengths, offsets = training.collate_features(feats, [2, 0])
    assert len(calls) == 1 and lengths.tolist() == [4, 2] and offsets == [0, 0]
    assert stacked.shape == (2, 2, 4, 3) and stacked.dtype == torch.float32
    for b, layers in enumerate(feats):  # layer order as asked, zeros beyond each length
        t = layers[0].shape[0]
        assert torch.equal(stacked[b, 0, :t], layers[2].float()) and torch.equal(stacked[b, 1, :t], layers[0].float())
        assert float(stacked[b, :, t:].abs().sum()) == 0


def test_extract_batches_are_padded_with_the_shared_helper(monkeypatch, tmp_path):
    from speechssl.audio import save_audio
    from speechssl.extract import encode
    from speechssl.extract.inputs import Item
    from speechssl.upstream import load_encoder

    calls = _spy(monkeypatch, encode, "pad_to_batch")
    gen = torch.Generator().manual_seed(0)
    items = []
    for name, samples in (("a", 4000), ("b", 6400)):
        save_audio(tmp_path / f"{name}.wav", (0.1 * torch.randn(samples, generator=gen)).numpy())
        items.append(Item(name, str(tmp_path / f"{name}.wav"), samples / 16000))
    enc, got = load_encoder("fbank"), {}

    class Sink:
        def __init__(self, key):
            self.key, self.parts = key, []

        def append(self, arrays):
            self.parts.append(arrays)

        def commit(self):
            got[self.key] = self.parts[0][0]

        def abort(self):
            self.parts = []

    class Consumer:
        def begin(self, item, names, shift):
            return Sink(item.id)

        def failed(self, item, reason):
            raise AssertionError(f"{item.id}: {reason}")

        def finished(self, items):
            pass

    encode.encode_records(enc, items, encode.EncodePolicy(batch_size=2), Consumer())
    assert len(calls) == 1 and sorted(got) == ["a", "b"]  # one padded batch of both files
    for item in items:  # batched == one utterance at a time
        ref = enc(encode.load_item(item)[None]).hidden_states[0][0].numpy()
        np.testing.assert_allclose(got[item.id], ref, atol=1e-5, rtol=0, err_msg=item.id)
