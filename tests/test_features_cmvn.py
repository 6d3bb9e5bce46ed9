"""CMVN: utterance statistics over valid frames only; global statistics from a corpus, kept in buffers."""

from __future__ import annotations

import pytest
import torch

from speechssl.audio import AudioNotFoundError, save_audio
from speechssl.features import build_frontend, compute_global_cmvn, utterance_cmvn


def _wav(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    return (0.3 * torch.sin(2 * torch.pi * (150 + 40 * seed) * t) + 0.03 * torch.randn(n, generator=g)).float()


@pytest.mark.parametrize("name", ["logmel", "fbank", "mfcc"])
def test_utterance_cmvn_uses_only_valid_frames(name):
    lengths = [8000, 2000]
    wavs = torch.randn(2, 8000) * 5  # loud padding that must be ignored
    for i, n in enumerate(lengths):
        wavs[i, :n] = _wav(n, i)
    fe = build_frontend({"name": name, "cmvn": "utterance"}).eval()
    feats, feat_lengths = fe(wavs, torch.tensor(lengths))
    for i in range(2):
        valid = feats[i, : int(feat_lengths[i])]
        torch.testing.assert_close(valid.mean(0), torch.zeros(fe.out_dim), atol=1e-4, rtol=0)
        torch.testing.assert_close(valid.std(0, unbiased=False), torch.ones(fe.out_dim), atol=1e-3, rtol=0)
        assert torch.count_nonzero(feats[i, int(feat_lengths[i]) :]) == 0
    # equals CMVN of the utterance alone, computed by hand
    raw = build_frontend(name).eval()(wavs[1:, :2000], torch.tensor([2000]))[0][0]
    ref = (raw - raw.mean(0)) / raw.std(0, unbiased=False)
    torch.testing.assert_close(feats[1, : int(feat_lengths[1])], ref, atol=1e-4, rtol=1e-4)


def test_utterance_cmvn_mean_only_and_empty_rows():
    feats = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]], [[7.0, 7.0], [0.0, 0.0], [0.0, 0.0]]])
    out = utterance_cmvn(feats, torch.tensor([2, 1]), norm_vars=False)
    assert out.tolist() == [[[-1.0, -2.0], [1.0, 2.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]]
    out = utterance_cmvn(feats, torch.tensor([0, 0]))
    assert torch.count_nonzero(out) == 0 and torch.isfinite(out).all()
    # a constant dimension normalises to 0, not inf
    const = utterance_cmvn(torch.ones(1, 4, 3), torch.tensor([4]))
    assert torch.count_nonzero(const) == 0


def _corpus(tmp_path, lengths=(8000, 4000, 300, 6000)):
    records = []
    for i, n in enumerate(lengths):
        path = tmp_path / f"u{i}.wav"
        save_audio(path, _wav(n, i))
        records.append({"id": f"u{i}", "path": str(path), "num_samples": n, "sample_rate": 16000})
    return records


def test_global_cmvn_statistics_and_buffers(tmp_path):
    from speechssl.audio import load_audio

    records = _corpus(tmp_path)
    fe = build_frontend({"name": "fbank", "cmvn": "global"})
    mean, std = compute_global_cmvn(records, fe)
    # by hand: all valid frames of all utterances (the 300-sample one has none)
    raw = build_frontend("fbank").eval()
    frames = torch.cat([raw(load_audio(r["path"])[None])[0][0] for r in records]).double()
    torch.testing.assert_close(mean, frames.mean(0).float(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(std, frames.std(0, unbiased=False).float(), atol=1e-4, rtol=1e-4)

    with pytest.raises(ValueError, match="no statistics"):
        fe(torch.zeros(1, 1000))
    fe.set_global_cmvn(mean, std)
    wav = load_audio(records[0]["path"])[None]
    out, _ = fe.eval()(wav)
    ref = (raw(wav)[0] - mean) / std
    torch.testing.assert_close(out, ref)

    # the statistics travel in the state dict (so released checkpoints carry them)
    state = fe.state_dict()
    assert {"cmvn_mean", "cmvn_std", "cmvn_frames"} <= set(state)
    fresh = build_frontend(fe.to_dict())
    fresh.load_state_dict(state)
    assert torch.equal(fresh.eval()(wav)[0], out)


def test_global_cmvn_from_manifest_with_segments_and_max_utts(tmp_path):
    from speechssl.data.manifest import write_manifest

    records = _corpus(tmp_path)
    records[0] = {**records[0], "start": 0.1, "duration": 0.2}
    write_manifest(records, tmp_path / "m.jsonl")
    fe = build_frontend({"name": "logmel", "cmvn": "global"})
    from_path = compute_global_cmvn(tmp_path / "m.jsonl", fe, max_utts=2)
    from_records = compute_global_cmvn(records[:2], fe)
    for a, b in zip(from_path, from_records):
        torch.testing.assert_close(a, b)
    only_first = compute_global_cmvn(records[:1], fe)
    assert not torch.allclose(only_first[0], from_records[0])  # max_utts=2 used the second record too


def test_global_cmvn_errors(tmp_path):
    fe = build_frontend({"name": "mfcc", "cmvn": "global"})
    with pytest.raises(ValueError, match="no frames"):
        compute_global_cmvn(_corpus(tmp_path, lengths=(100, 200)), fe)
    with pytest.raises(AudioNotFoundError, match="missing.wav"):
        compute_global_cmvn([{"path": str(tmp_path / "missing.wav")}], fe)
    with pytest.raises(ValueError, match="39 values"):
        fe.set_global_cmvn(torch.zeros(13), torch.ones(13))
    with pytest.raises(ValueError, match="std > 0"):
        fe.set_global_cmvn(torch.zeros(39), torch.zeros(39))
    with pytest.raises(ValueError, match="cmvn='global'"):
        build_frontend("mfcc").set_global_cmvn(torch.zeros(39), torch.ones(39))
    with pytest.raises(ValueError, match="logmel/fbank/mfcc"):
        compute_global_cmvn([], build_frontend("waveform"))


def test_fill_global_cmvn_fills_only_unset_global_frontends_from_a_seeded_sample(tmp_path):
    from torch import nn

    from speechssl.features.cmvn import fill_global_cmvn

    records = _corpus(tmp_path, lengths=(8000, 4000, 6000, 5000, 7000))
    model = nn.ModuleDict({"a": build_frontend({"name": "logmel", "n_mels": 20, "cmvn": "global"}),
                           "b": build_frontend({"name": "logmel", "n_mels": 20, "cmvn": "utterance"})})
    assert fill_global_cmvn(model, records, max_utts=3, seed=1) == ["a"]
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(1))[:3]
    mean, std = compute_global_cmvn([records[int(i)] for i in order], build_frontend({"name": "logmel", "n_mels": 20}))
    torch.testing.assert_close(model["a"].cmvn_mean, mean)
    torch.testing.assert_close(model["a"].cmvn_std, std)
    assert int(model["a"].cmvn_frames) > 0
    # statistics already there (a resumed or --init-from model) are never recomputed
    model["a"].cmvn_mean.fill_(3.0)
    assert fill_global_cmvn(model, records) == []
    assert torch.all(model["a"].cmvn_mean == 3.0)
