"""Frontends: frame formula, batched == single (bit-exact), padding, parity with torchaudio/librosa."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio
from torchaudio.compliance import kaldi as ta_kaldi

from speechssl.config import ConfigError
from speechssl.features import FRONTENDS, build_frontend, kaldi_kwargs, num_frames
from speechssl.registry import UnknownNameError

# Tolerances (absolute, on log values / cepstra): torchaudio's Kaldi code computes |X| then squares
# and sums in another order, so float32 rounding differs by ~1e-6 (cepstra ~5e-6). librosa differs
# by ~2e-5 typically, up to ~2e-4 on the lowest HTK filters whose energy is tiny (float32 FFT
# leakage), so it is held to 5e-4 absolute with a median below 1e-5.
KALDI_ATOL = 1e-4
LIBROSA_ATOL = 5e-4

LENGTHS = [16000, 401, 7000, 0, 399, 400, 560, 12345, 3]  # very different, incl. < one window
NAMES = ["logmel", "fbank", "mfcc", "waveform"]


def _speechy(n: int, seed: int) -> torch.Tensor:
    """A harmonic tone in noise: varied spectra without any data files."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    f0 = 100 + 50 * seed
    x = sum(torch.sin(2 * torch.pi * f0 * k * t) / k for k in range(1, 6))
    return (0.2 * x + 0.02 * torch.randn(n, generator=g)).float()


def _batch(lengths, pad_value: float = 0.0):
    wavs = torch.full((len(lengths), max(lengths)), pad_value)
    for i, n in enumerate(lengths):
        wavs[i, :n] = _speechy(n, i)
    return wavs, torch.tensor(lengths)


def test_registered_names():
    assert set(NAMES) <= set(FRONTENDS)


@pytest.mark.parametrize(
    "cfg",
    [
        {"name": "logmel"},
        {"name": "logmel", "cmvn": "utterance"},
        {"name": "logmel", "n_fft": 512, "win_length": 320, "hop_length": 80, "power": 1.0},
        {"name": "fbank"},
        {"name": "fbank", "cmvn": "utterance", "use_energy": True},
        {"name": "mfcc"},
        {"name": "mfcc", "cmvn": "utterance", "cmvn_norm_vars": False},
        {"name": "waveform"},
        {"name": "waveform", "normalize": True},
    ],
    ids=lambda c: "-".join(f"{v}" for v in c.values()),
)
def test_batched_equals_single_exactly(cfg):
    # Padding is loud noise, not zeros: nothing beyond an utterance's length may leak into it.
    wavs, lengths = _batch(LENGTHS)
    wavs[wavs == 0] = 0.0
    for i, n in enumerate(LENGTHS):
        wavs[i, n:] = torch.randn(wavs.shape[1] - n)
    fe = build_frontend(cfg).eval()
    feats, feat_lengths = fe(wavs, lengths)
    assert feats.dtype == torch.float32 and feats.shape[2] == fe.out_dim
    assert feats.shape[1] == (fe.num_frames(max(LENGTHS)))
    for i, n in enumerate(LENGTHS):
        single, single_len = fe(wavs[i : i + 1, :n], torch.tensor([n]))
        assert int(single_len) == int(feat_lengths[i]) == fe.num_frames(n)
        assert torch.equal(single[0], feats[i, : int(single_len)]), f"{cfg} length {n}"
        assert torch.count_nonzero(feats[i, int(feat_lengths[i]) :]) == 0  # padding frames zeroed
        assert torch.isfinite(single).all()


@pytest.mark.parametrize("name", NAMES)
def test_frame_formula_matches_outputs(name):
    fe = build_frontend(name).eval()
    if name == "waveform":
        assert (fe.frame_length, fe.frame_shift) == (1, 1)
    else:
        assert (fe.frame_length, fe.frame_shift) == (400, 160)
    for n in [0, 1, 2, 159, 399, 400, 401, 559, 560, 561, 719, 720, 4000, 4001]:
        feats, lens = fe(torch.zeros(1, n) + 0.01, torch.tensor([n]))
        expected = 0 if n < fe.frame_length else 1 + (n - fe.frame_length) // fe.frame_shift
        assert feats.shape[1] == int(lens[0]) == expected == fe.num_frames(n) == num_frames(n, fe.frame_length, fe.frame_shift)
        assert feats.shape[2] == fe.out_dim
    tensor_frames = fe.num_frames(torch.tensor([0, 399, 400, 16000]))
    assert tensor_frames.tolist() == [fe.num_frames(n) for n in (0, 399, 400, 16000)]


FBANK_VARIANTS = [
    {},
    {"use_energy": True},
    {"use_energy": True, "htk_compat": True, "raw_energy": False, "energy_floor": 0.0},
    {"window_type": "hamming", "preemphasis_coefficient": 0.0, "remove_dc_offset": False},
    {"window_type": "blackman", "use_power": False, "num_mel_bins": 40, "low_freq": 64.0, "high_freq": -400.0},
    {"use_log_fbank": False, "window_type": "rectangular", "round_to_power_of_two": False},
    {"window_type": "hanning", "frame_length": 20.0, "frame_shift": 5.0},
]


@pytest.mark.parametrize("variant", FBANK_VARIANTS, ids=lambda v: ",".join(v) or "defaults")
def test_fbank_equals_torchaudio_kaldi(variant):
    wavs, lengths = _batch([16000, 4321, 801])
    fe = build_frontend({"name": "fbank", **variant}).eval()
    feats, feat_lengths = fe(wavs, lengths)
    for i, n in enumerate(lengths.tolist()):
        ref = ta_kaldi.fbank(wavs[i : i + 1, :n], **kaldi_kwargs(fe.config))
        assert ref.shape == (int(feat_lengths[i]), fe.out_dim)
        torch.testing.assert_close(feats[i, : ref.shape[0]], ref, atol=KALDI_ATOL, rtol=1e-5)


@pytest.mark.parametrize("variant", [{}, {"use_energy": True, "cepstral_lifter": 0.0}, {"htk_compat": True}])
def test_mfcc_equals_torchaudio_kaldi_with_deltas(variant):
    wavs, lengths = _batch([16000, 3000, 880])  # 880 samples = 4 frames: deltas hit both ends
    fe = build_frontend({"name": "mfcc", **variant}).eval()
    assert fe.out_dim == 39
    feats, feat_lengths = fe(wavs, lengths)
    for i, n in enumerate(lengths.tolist()):
        ceps = ta_kaldi.mfcc(wavs[i : i + 1, :n], **kaldi_kwargs(fe.config))  # [T, 13]
        d1 = torchaudio.functional.compute_deltas(ceps.T)
        d2 = torchaudio.functional.compute_deltas(d1)
        ref = torch.cat([ceps, d1.T, d2.T], dim=1)
        torch.testing.assert_close(feats[i, : int(feat_lengths[i])], ref, atol=KALDI_ATOL, rtol=1e-5)


def test_mfcc_delta_orders():
    wav = _speechy(4000, 0)[None]
    dims = [build_frontend({"name": "mfcc", "delta_order": k})(wav)[0].shape[2] for k in (0, 1, 2)]
    assert dims == [13, 26, 39]


@pytest.mark.parametrize(
    "cfg,kw",
    [
        ({}, {}),
        ({"mel_scale": "htk", "mel_norm": "none"}, {"htk": True, "norm": None}),
        (
            {"n_mels": 40, "f_min": 50.0, "f_max": 7000.0, "power": 1.0, "window": "hamming"},
            {"n_mels": 40, "fmin": 50.0, "fmax": 7000.0, "power": 1.0, "window": "hamming"},
        ),
    ],
)
def test_logmel_equals_librosa(cfg, kw):
    librosa = pytest.importorskip("librosa")  # a dev dependency; installed in CI
    y = _speechy(8000, 1).numpy()
    fe = build_frontend({"name": "logmel", **cfg}).eval()
    feats, _ = fe(torch.from_numpy(y)[None], torch.tensor([8000]))
    options = {"n_mels": 80, "power": 2.0, **kw}
    ref = librosa.feature.melspectrogram(
        y=y, sr=16000, n_fft=400, hop_length=160, win_length=400, center=False, **options
    )
    ref = np.log(np.maximum(ref, fe.config.log_floor)).T
    assert ref.shape == tuple(feats.shape[1:])
    np.testing.assert_allclose(feats[0].numpy(), ref, atol=LIBROSA_ATOL, rtol=0)
    assert np.median(np.abs(feats[0].numpy() - ref)) < 1e-5


def test_logmel_equals_torchaudio_melspectrogram():
    wav = _speechy(6000, 2)[None]
    ref = torchaudio.transforms.MelSpectrogram(
        16000, n_fft=400, hop_length=160, n_mels=80, center=False, norm="slaney", mel_scale="slaney"
    )(wav)
    feats, _ = build_frontend("logmel")(wav)
    torch.testing.assert_close(feats, ref.clamp(min=1e-6).log().transpose(1, 2), atol=1e-4, rtol=0)


def test_dither_only_in_training():
    wav = _speechy(3000, 0)[None]
    fe = build_frontend({"name": "fbank", "dither": 1e-3})
    fe.eval()
    a, b = fe(wav)[0], fe(wav)[0]
    assert torch.equal(a, b)  # eval: deterministic, no dither
    fe.train()
    c, d = fe(wav)[0], fe(wav)[0]
    assert not torch.equal(c, a) and not torch.equal(c, d)
    assert (c - a).abs().mean() < 0.5  # small noise, same features
    no_dither = build_frontend("fbank").train()
    assert torch.equal(no_dither(wav)[0], a)  # default dither 0: training == eval


def test_waveform_frontend_normalisation_matches_layer_norm():
    wavs, lengths = _batch([5000, 1234])
    feats, out_lengths = build_frontend({"name": "waveform", "normalize": True})(wavs * 3 + 0.5, lengths)
    assert feats.shape == (2, 5000, 1) and torch.equal(out_lengths, lengths)
    valid = (wavs[1, :1234] * 3 + 0.5)
    ref = torch.nn.functional.layer_norm(valid, valid.shape)
    torch.testing.assert_close(feats[1, :1234, 0], ref, atol=1e-5, rtol=1e-5)
    raw, _ = build_frontend("waveform")(wavs, lengths)
    assert torch.equal(raw[..., 0], wavs)


def test_unknown_frontend_lists_choices():
    with pytest.raises(UnknownNameError) as err:
        build_frontend({"name": "spectrogramz"})
    for name in NAMES:
        assert name in str(err.value)


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match="n_melz"):
        build_frontend({"name": "logmel", "n_melz": 40})
    with pytest.raises(ConfigError, match="cmvn"):
        build_frontend({"name": "fbank", "cmvn": "sentence"})


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"name": "fbank", "snip_edges": False}, "snip_edges"),
        ({"name": "fbank", "high_freq": 9000.0}, "high_freq"),
        ({"name": "logmel", "n_fft": 256}, "n_fft"),
        ({"name": "mfcc", "num_ceps": 30}, "num_ceps"),
    ],
)
def test_invalid_options_refused(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_frontend(cfg)


def test_bad_inputs_are_named():
    fe = build_frontend("logmel")
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        fe(torch.zeros(100))
    with pytest.raises(ValueError, match="lengths"):
        fe(torch.zeros(2, 100), torch.tensor([100, 101]))


@pytest.mark.parametrize("name", NAMES)
def test_to_dict_round_trip(name):
    fe = build_frontend({"name": name})
    again = build_frontend(fe.to_dict())
    assert again.to_dict() == fe.to_dict() and type(again) is type(fe)


def test_features_fp32_under_autocast():
    fe = build_frontend("fbank")
    wav = _speechy(2000, 0)[None]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, _ = fe(wav)
    assert feats.dtype == torch.float32
    assert torch.equal(feats, fe(wav)[0])


@pytest.mark.parametrize("name", ["logmel", "fbank", "mfcc"])
def test_cache_blocking_does_not_change_results(name, monkeypatch):
    import speechssl.features.kaldi as kaldi_module
    import speechssl.features.logmel as logmel_module

    wavs, lengths = _batch([9000, 3000, 500])
    fe = build_frontend(name).eval()
    reference, _ = fe(wavs, lengths)
    for module in (kaldi_module, logmel_module):
        monkeypatch.setattr(module, "BLOCK_FRAMES_PER_THREAD", 7)  # many tiny blocks, odd sizes
    blocked, _ = fe(wavs, lengths)
    assert torch.equal(blocked, reference)


def test_readme_frame_counts_hold():
    """The README's frame-count paragraph quotes these numbers; they must be what the code gives."""
    from pathlib import Path

    import speechssl
    from speechssl.modules.conv import conv_out_lengths

    text = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    assert "frames(L) = 1 + (L - frame_length) // frame_shift" in text
    assert "98 frames for 1 s" in text and "`[198, 123]` frames for 32,000 and 20,000 samples" in text
    enc = speechssl.load_encoder("logmel")
    out = enc(torch.zeros(2, 32000), torch.tensor([32000, 20000]))
    assert out.lengths.tolist() == [198, 123]
    assert num_frames(16000, 400, 160) == 98
    mel = torch.tensor([198, 123])
    assert conv_out_lengths(mel, [(192, 3, 2)]).tolist() == [98, 61]  # "[98, 61]" for wav2vec2_tiny
    assert "gives `[98, 61]`" in text and "`[99, 61]`" in text
    assert torch.div(mel, 2, rounding_mode="floor").tolist() == [99, 61]
