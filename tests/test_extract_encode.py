"""encode_records: the one loop that runs a frozen encoder over audio, for extract and downstream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechssl.audio import save_audio
from speechssl.config import to_dict
from speechssl.downstream.feature_cache import EncoderFeatureCache
from speechssl.extract import ExtractConfig, extract_features
from speechssl.extract.encode import EncodePolicy, batches, encode_records
from speechssl.extract.inputs import Item
from speechssl.models import wav2vec2
from speechssl.models.base import build_model
from speechssl.upstream import load_encoder

SECONDS = {"a": 0.6, "b": 1.4, "c": 2.1, "long": 5.3}


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    root = tmp_path_factory.mktemp("encode") / "wavs"
    rng = np.random.default_rng(0)
    for i, (name, sec) in enumerate(SECONDS.items()):
        t = np.arange(int(sec * 16000)) / 16000
        wav = 0.3 * np.sin(2 * np.pi * (130 + 40 * i) * t) * (1 + np.sin(t)) + 0.03 * rng.standard_normal(t.size)
        save_audio(root / f"{name}.wav", wav.astype(np.float32))
    save_audio(root / "tiny.wav", np.zeros(100, np.float32))  # no frame
    (root / "broken.wav").write_bytes(b"RIFF....not audio")
    return root


class Collect:
    """A FeatureConsumer keeping everything in lists."""

    def __init__(self):
        self.done: dict[str, list[np.ndarray]] = {}
        self.failures: dict[str, str] = {}
        self.finished_batches: list[list[str]] = []

    def begin(self, item, layer_names, frame_shift):
        parts: list[list[np.ndarray]] = []
        done = self.done

        class Sink:
            def append(self, arrays):
                parts.append(arrays)

            def commit(self):
                done[item.id] = [np.concatenate(p) for p in zip(*parts)]

            def abort(self):
                parts.clear()

        return Sink()

    def failed(self, item, reason):
        self.failures[item.id] = reason

    def finished(self, items):
        self.finished_batches.append([i.id for i in items])


def _items(wavs, names):
    from speechssl.audio import audio_info

    out = []
    for name in names:
        path = wavs / f"{name}.wav"
        try:
            seconds = audio_info(path).duration
        except ValueError:
            seconds = 0.5
        out.append(Item(name, str(path), seconds))
    return out


def _transformer_encoder():
    """A tiny wav2vec2 (layer-norm convs): its chunked frames differ from one pass, so equal
    outputs below mean that both callers cut long files the same way."""
    torch.manual_seed(0)
    cfg = wav2vec2.wav2vec2_tiny()
    cfg.frontend = {"name": "waveform"}
    cfg.conv_layers = [(32, 10, 5), (32, 3, 2), (32, 3, 2), (32, 3, 2), (32, 3, 2), (32, 2, 2), (32, 2, 2)]
    cfg.conv_norm = "layer_norm"
    return load_encoder(build_model({"name": "wav2vec2", **to_dict(cfg)}))


def test_skip_reports_bad_files_and_goes_on_raise_stops(wavs):
    enc = load_encoder("fbank")
    items = _items(wavs, ["a", "broken", "tiny", "b", "long"])
    got = Collect()
    encode_records(enc, items, EncodePolicy(batch_seconds=10.0, chunk_seconds=2.0, overlap_seconds=0.5), got)
    assert sorted(got.done) == ["a", "b", "long"]
    assert "cannot decode" in got.failures["broken"] and "too short: 100 samples" in got.failures["tiny"]
    assert got.finished_batches[0] == ["long"]  # long files first, alone
    assert sorted(i for b in got.finished_batches for i in b) == sorted(i.id for i in items)
    for name in ("a", "long"):  # features equal one pass of the whole file (fbank: exact chunking)
        wav = torch.from_numpy(__import__("soundfile").read(wavs / f"{name}.wav", dtype="float32")[0])
        ref = enc(wav[None]).hidden_states[0][0].numpy()
        np.testing.assert_allclose(got.done[name][0], ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="broken.wav"):
        encode_records(enc, items, EncodePolicy(errors="raise"), Collect())
    with pytest.raises(ValueError, match=r"'tiny' .*too short for encoder fbank"):
        encode_records(enc, _items(wavs, ["a", "tiny"]), EncodePolicy(errors="raise", name="fbank"), Collect())


def test_batches_by_count_or_by_seconds():
    items = [Item(str(i), "", s) for i, s in enumerate([1.0, 1.0, 1.0, 1.05, 3.0, 3.0, 3.0])]
    assert [len(b) for b in batches(items, EncodePolicy(batch_size=3))] == [3, 3, 1]
    by_seconds = batches(items, EncodePolicy(batch_seconds=6.5))
    assert [len(b) for b in by_seconds] == [4, 2, 1]
    assert [i for b in by_seconds for i in b] == items  # order kept
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        EncodePolicy(batch_size=0)


def test_extract_and_downstream_cache_give_the_same_features(wavs, tmp_path):
    """Both callers run encode_records: the same chunking of long files (one utterance per batch on
    both sides, since a Transformer's frames differ in the last bits with the batch shape)."""
    enc = _transformer_encoder()
    names = ["a", "b", "c", "long"]
    out = tmp_path / "feats"
    cfg = ExtractConfig(layers="all", batch_seconds=0.5, chunk_seconds=2.0, overlap_seconds=0.5, progress=False)
    summary = extract_features(enc, wavs, out, cfg)
    assert summary.written == 4 and summary.failed == 2
    cache = EncoderFeatureCache(enc, batch_size=1, chunk_seconds=2.0, overlap_seconds=0.5)
    records = [{"id": n, "path": str(wavs / f"{n}.wav"), "num_samples": int(SECONDS[n] * 16000),
                "sample_rate": 16000} for n in names]
    fs = cache.features(records)
    assert fs.layer_names == enc.layer_names and cache.encoded == 4
    for name, feats in zip(fs.ids, fs.feats):
        for layer, tensor in zip(enc.layer_names, feats):
            np.testing.assert_array_equal(tensor.numpy(), np.load(out / name / f"{layer}.npy"), err_msg=f"{name} {layer}")
    whole = enc(torch.from_numpy(__import__("soundfile").read(wavs / "long.wav", dtype="float32")[0])[None])
    assert not np.allclose(fs.feats[3][-1].numpy(), whole.hidden_states[-1][0].numpy(), atol=1e-6)  # chunked
    with pytest.raises(ValueError, match="fewer than the model.s receptive field"):  # raised, not skipped
        cache.features([{"id": "tiny", "path": str(wavs / "tiny.wav"), "num_samples": 100, "sample_rate": 16000}])
