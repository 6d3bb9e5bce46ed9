"""Chunked encoding of long files: exact tiling, and stitched == unchunked within stated tolerances.

Tolerances (6 s of audio, 2 s chunks; random-init tiny models; max |difference| over all frames):

* frontends without utterance CMVN and convolutional ``latent`` layers without utterance-level
  normalisation: exact (1e-5);
* recurrent context layers (APC GRU, CPC GRU) with 1 s overlap: 1e-3; with 2 s: 1e-5;
* Transformer context layers (wav2vec 2.0 with layer-norm conv): 0.05 absolute (values ~4), i.e.
  attention over a 4 s window instead of the whole file changes frames by about 1 %.

Encoders with utterance-level statistics (utterance CMVN, wav2vec 2.0 Base's GroupNorm over time)
normalise each window by its own statistics instead: not tested for equality (documented).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechssl.audio import save_audio
from speechssl.config import to_dict
from speechssl.extract import ExtractConfig, extract_features
from speechssl.extract.chunking import encode_chunked, plan_chunks
from speechssl.models import apc, cpc, wav2vec2
from speechssl.models.base import build_model
from speechssl.upstream import load_encoder


def _signal(seconds: float = 8.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(int(seconds * 16000), generator=g)
    return wav * (1 + torch.sin(torch.arange(wav.numel()) / 3000.0))


def _stitched(enc, wav, chunk_s, overlap_s):
    parts = []
    frames = encode_chunked(enc, lambda a, b: wav[a:b], wav.numel(), int(chunk_s * 16000), int(overlap_s * 16000),
                            parts.append)
    stitched = [np.concatenate([p[i] for p in parts]) for i in range(len(enc.layer_names))]
    assert all(s.shape[0] == frames for s in stitched)
    return stitched


def test_plan_tiles_the_signal():
    plan = plan_chunks(100_000, 32_000, 16_000, 320)
    assert plan[0][:3] == (0, 48_000, 0) and plan[-1][1] == plan[-1][3] == 100_000
    cores = [(a, b) for _, _, a, b in plan]
    assert all(b1 == a2 for (_, b1), (a2, _) in zip(cores, cores[1:]))
    assert all(a % 320 == 0 for a, _ in cores)
    assert plan_chunks(1000, 32_000, 0, 160) == [(0, 1000, 0, 1000)]
    with pytest.raises(ValueError, match="must be > 0"):
        plan_chunks(1000, 0, 0, 160)


def _model(name):
    """Explicit configs without utterance-level statistics (independent of the tiny presets)."""
    torch.manual_seed(0)
    if name == "apc":
        cfg = apc.APCConfig(num_layers=3, hidden_size=256, context="gru", frontend={"name": "fbank", "cmvn": "none"})
    elif name == "cpc":
        cfg = cpc.CPCConfig(conv_layers=[(64, k, s) for _, k, s in cpc.PAPER_CONV], hidden_size=64, context="gru")
    else:
        cfg = wav2vec2.wav2vec2_tiny()
        cfg.frontend = {"name": "waveform"}
        cfg.conv_layers = [(64, 10, 5), (64, 3, 2), (64, 3, 2), (64, 3, 2), (64, 3, 2), (64, 2, 2), (64, 2, 2)]
        cfg.conv_norm = "layer_norm"
    return load_encoder(build_model({"name": name, **to_dict(cfg)}))


@pytest.mark.parametrize("family,context_tol", [("apc", 1e-3), ("cpc", 1e-3), ("wav2vec2", 0.05)])
def test_stitched_matches_unchunked(family, context_tol, one_thread):
    enc = _model(family)
    wav = _signal(6.0)
    full = enc(wav[None])
    stitched = _stitched(enc, wav, 2.0, 1.0)
    for name, got, ref in zip(enc.layer_names, stitched, full.hidden_states):
        ref = ref[0].numpy()
        assert got.shape == ref.shape, name
        tol = 1e-5 if name == "latent" else context_tol
        np.testing.assert_allclose(got, ref, atol=tol, rtol=0, err_msg=f"{family} {name}")
    if family == "apc":  # more overlap, less difference: the GRU forgets the missing context
        for got, ref in zip(_stitched(enc, wav, 2.0, 2.0), full.hidden_states):
            np.testing.assert_allclose(got, ref[0].numpy(), atol=1e-5, rtol=0)


def test_overlap_shorter_than_receptive_field_is_an_error():
    enc = _model("cpc")  # receptive field 465 samples
    with pytest.raises(ValueError, match="shorter than the encoder's receptive field"):
        _stitched(enc, _signal(2.0), 0.5, 0.0)


def test_extract_long_file_in_chunks_equals_direct(tmp_path):
    wav = _signal(9.0)
    save_audio(tmp_path / "in" / "long.wav", wav.numpy())
    save_audio(tmp_path / "in" / "short.wav", wav[:8000].numpy())
    cfg = ExtractConfig(chunk_seconds=2.0, overlap_seconds=0.5, progress=False)
    summary = extract_features("fbank", tmp_path / "in", tmp_path / "out", cfg)
    assert summary.written == 2
    from speechssl.audio import load_audio

    wav16 = load_audio(tmp_path / "in" / "long.wav")  # the 16-bit file, as the extractor read it
    ref = load_encoder("fbank")(wav16[None]).hidden_states[0][0].numpy()
    got = np.load(tmp_path / "out" / "long.npy")
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
