"""speechssl.augment: the statistics each augmentation promises (SNR in range, duration / factor,
mask coverage, RT60 and DRR of the RIRs, band edges), reproducibility, padding and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import make_corpus

from speechssl.augment import (
    SpectrogramAugment,
    WaveformAugment,
    augment_config,
    default_augment,
    mask_along_axis,
    random_resize_crop,
    two_crops,
)
from speechssl.augment import waveform as W
from speechssl.augment.config import MixupConfig, ResizeCropConfig
from speechssl.augment.spectrogram import MixupMemory, mask_fraction
from speechssl.cli.main import main as cli_main
from speechssl.config import ConfigError


def _batch(lengths=(16000, 12000, 8000), seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(max(lengths)) / 16000
    rows = []
    for i, n in enumerate(lengths):
        x = 0.3 * torch.sin(2 * math.pi * (150 + 40 * i) * t) + 0.01 * torch.randn(len(t), generator=g)
        x[n:] = 0
        rows.append(x)
    return torch.stack(rows), torch.tensor(lengths)


def test_noise_snr_is_within_the_sampled_range_on_valid_samples():
    x, lengths = _batch()
    cfg = augment_config({"waveform": {"noise": {"p": 1.0, "min_snr_db": 5, "max_snr_db": 10,
                                                 "colours": ["white", "pink", "brown"]}}})
    aug = WaveformAugment(cfg.waveform)
    y, out_lens, params = aug(x, lengths, generator=torch.Generator().manual_seed(1), return_params=True)
    assert torch.equal(out_lens, lengths)
    for b in range(3):
        n = int(lengths[b])
        noise = y[b, :n] - x[b, :n]
        snr = 10 * math.log10(float(x[b, :n].pow(2).mean() / noise.pow(2).mean()))
        assert 5.0 - 1e-3 <= snr <= 10.0 + 1e-3
        assert snr == pytest.approx(params["noise"][b], abs=1e-3)
        assert float(y[b, n:].abs().sum()) == 0.0  # padding stays zero


def test_coloured_noise_slopes():
    noise = W.coloured_noise(3, 32000, torch.tensor([0.0, 1.0, 2.0]), torch.Generator().manual_seed(0))
    power = torch.fft.rfft(noise, dim=1).abs().pow(2)
    low, high = power[:, 200:400].mean(1), power[:, 6400:12800].mean(1)  # 0.5 Hz bins: 100-200 vs 3200-6400 Hz
    ratio_db = 10 * torch.log10(low / high)  # 5 octaves up: 0, 15 (pink, 1/f) and 30 dB (brown, 1/f^2) less
    assert abs(float(ratio_db[0])) < 1.5
    assert 13.5 < float(ratio_db[1]) < 16.5 and 28 < float(ratio_db[2]) < 32


def test_speed_changes_duration_by_the_factor_and_keeps_padding_consistent():
    x, lengths = _batch()
    y, out_lens = W.speed(x, lengths, torch.tensor([0.9, 1.0, 1.1]))
    for b, f in enumerate([0.9, 1.0, 1.1]):
        assert abs(int(out_lens[b]) - int(lengths[b]) / f) <= 1
    assert y.shape[1] == int(out_lens.max())
    aug = WaveformAugment(augment_config({"waveform": {"speed": {"p": 1.0, "min_factor": 1.2,
                                                                 "max_factor": 1.2}}}).waveform)
    y2, lens2 = aug(x, lengths)
    assert torch.allclose(lens2.float(), lengths / 1.2, atol=1)
    assert float(y2[2, int(lens2[2]):].abs().sum()) == 0.0


def test_tempo_and_pitch():
    x, lengths = _batch((16000, 8000))
    y, out_lens = W.tempo(x, lengths, torch.tensor([0.8, 1.25]))
    assert abs(int(out_lens[0]) - 20000) <= 1 and abs(int(out_lens[1]) - 6400) <= 1
    shifted = W.pitch_shift(x, lengths, torch.tensor([12.0, 0.0]))  # one octave up: 150 Hz -> 300 Hz
    assert shifted.shape == x.shape
    spec = torch.fft.rfft(shifted[0, 2000:14000]).abs()
    peak_hz = float(spec.argmax()) * 16000 / 12000
    assert 285 < peak_hz < 315


def test_batched_stretch_matches_each_rows_own_rate_and_pitch_keeps_duration():
    """One STFT for the batch, each row at its own rate: the same as stretching each row alone, and
    a 200 Hz tone stays at 200 Hz (tempo) while pitch moves it by the factor and keeps the length."""
    t = torch.arange(16000) / 16000
    tone = 0.3 * torch.sin(2 * math.pi * 200 * t)
    x, lengths = torch.stack([tone, tone, tone]), torch.tensor([16000, 16000, 12000])
    x[2, 12000:] = 0
    rates = torch.tensor([0.8, 1.25, 1.1])
    y, out_lens = W.stretch(x, lengths, rates)
    assert out_lens.tolist() == [20000, 12800, round(12000 / 1.1)]
    for b in range(3):
        alone, n = W.stretch(x[b:b + 1, : int(lengths[b])], lengths[b:b + 1], rates[b:b + 1])
        inner = int(n[0]) - 512  # the last frame sees the batch's zero padding, alone the reflection
        torch.testing.assert_close(y[b, :inner], alone[0, :inner], atol=1e-4, rtol=1e-4)
        seg = y[b, 2000: int(out_lens[b]) - 2000]
        assert abs(float(torch.fft.rfft(seg).abs().argmax()) * 16000 / seg.numel() - 200) < 5
        assert float(y[b, int(out_lens[b]):].abs().sum()) == 0.0
    shifted = W.pitch_shift(x, lengths, torch.tensor([2.0, -2.0, 0.0]))
    assert shifted.shape == x.shape and float(shifted[2, 12000:].abs().sum()) == 0.0
    for b, semis in enumerate([2.0, -2.0]):
        seg = shifted[b, 2000:14000]
        peak = float(torch.fft.rfft(seg).abs().argmax()) * 16000 / seg.numel()
        assert peak == pytest.approx(200 * 2 ** (semis / 12), abs=3)
        assert float(shifted[b, :16000].pow(2).mean()) == pytest.approx(float(tone.pow(2).mean()), rel=1e-3)
    assert float((shifted[2, 1000:11000] - x[2, 1000:11000]).abs().max()) < 0.02  # 0 semitones: near identity


def test_fast_fft_sizes_and_filters_on_any_width():
    assert [W.fast_len(n) for n in (1, 7, 64000, 64001, 75199)] == [1, 8, 64000, 64800, 76800]
    for n in (1, 7, 64000, 64001, 75199, 131073):
        m = W.fast_len(n)
        assert m >= n and m <= 2 * n
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        assert r == 1
    # a prime width: the filters pad to a fast size and keep the width, lengths and padding
    x = torch.randn(2, 16001, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([16001, 9000])
    x[1, 9000:] = 0
    y = W.band_limit(x, lengths, torch.tensor([3000.0, 3000.0]), torch.tensor([0.0, 0.0]))
    z = W.random_eq(x, lengths, torch.zeros(2, 3), torch.tensor([0.0, 1000.0, 8000.0]))
    assert y.shape == x.shape and float(y[1, 9000:].abs().sum()) == 0.0
    torch.testing.assert_close(z, x, atol=1e-5, rtol=1e-5)  # a flat 0 dB curve is the identity
    high = torch.fft.rfft(y[0, 1000:15000]).abs().pow(2)
    ref = torch.fft.rfft(x[0, 1000:15000]).abs().pow(2)
    cut = int(3400 * 14000 / 16000)
    assert float(high[cut:].sum() / ref[cut:].sum()) < 1e-3


def test_costly_augmentations_run_on_the_selected_rows_only_and_keep_the_others():
    """noise / EQ / band-limit / codec / reverb compute only the rows whose coin came up; the other
    rows pass unchanged, and the draws (hence the augmented rows) do not depend on which rows ran."""
    x, lengths = _batch((8000,) * 6)
    ops = {"noise": {"min_snr_db": 5, "max_snr_db": 5, "colours": ["pink"]}, "eq": {}, "band_limit": {},
           "codec": {}, "reverb": {}}
    for name, op in ops.items():
        half = WaveformAugment(augment_config({"waveform": {name: {**op, "p": 0.5}}}).waveform)
        full = WaveformAugment(augment_config({"waveform": {name: {**op, "p": 1.0}}}).waveform)
        y, _, params = half(x, lengths, generator=torch.Generator().manual_seed(2), return_params=True)
        y_all, _ = full(x, lengths, generator=torch.Generator().manual_seed(2))
        applied = [not math.isnan(v) for v in params[name]]
        assert 0 < sum(applied) < 6, name
        for b in range(6):
            if applied[b]:
                torch.testing.assert_close(y[b], y_all[b], atol=1e-5, rtol=1e-4)
            else:
                assert torch.equal(y[b], x[b]), name


def test_reverb_rir_has_the_requested_rt60_and_drr_and_keeps_alignment():
    rt60, drr = torch.tensor([0.3, 0.6]), torch.tensor([0.0, 6.0])
    rir = W.synthetic_rir(rt60, drr, torch.Generator().manual_seed(0))
    assert float(rir[0, 0]) == 1.0
    for b in range(2):
        tail = rir[b, 1:].pow(2)
        assert 10 * math.log10(1.0 / float(tail.sum())) == pytest.approx(float(drr[b]), abs=1e-3)
        edc = tail.flip(0).cumsum(0).flip(0)  # Schroeder energy decay curve: -60 dB at rt60 (from -5 to -25)
        edc_db = 10 * torch.log10(edc / edc[0])
        t5, t25 = int((edc_db < -5).nonzero()[0]), int((edc_db < -25).nonzero()[0])
        assert 3 * (t25 - t5) / 16000 == pytest.approx(float(rt60[b]), rel=0.2)
    x, lengths = _batch((8000,))
    click = torch.zeros_like(x)
    click[0, 1000] = 1.0
    wet = W.reverberate(click, lengths, rir[:1])
    assert int(wet[0].abs().argmax()) == 1000  # the direct path stays where it was


def test_band_limit_removes_energy_above_the_cutoff():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16000, generator=g)
    y = W.band_limit(x, torch.tensor([16000]), torch.tensor([3000.0]), torch.tensor([300.0]))
    spec = torch.fft.rfft(y[0]).abs().pow(2)
    ref = torch.fft.rfft(x[0]).abs().pow(2)
    assert float(spec[3200:].sum() / ref[3200:].sum()) < 1e-6  # 1 Hz bins
    assert float(spec[1000:2800].sum() / ref[1000:2800].sum()) > 0.99
    assert float(spec[:200].sum() / ref[:200].sum()) < 1e-6


def test_random_eq_follows_its_curve():
    x = torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    knots = torch.tensor([0.0, 1000.0, 8000.0])
    y = W.random_eq(x, torch.tensor([16000]), torch.tensor([[0.0, 6.0, -6.0]]), knots)
    ratio_db = 10 * torch.log10(torch.fft.rfft(y[0]).abs().pow(2) / torch.fft.rfft(x[0]).abs().pow(2))
    assert float(ratio_db[1000]) == pytest.approx(6.0, abs=0.01)  # 1 Hz bins: exactly at the knot
    assert float(ratio_db[7990]) == pytest.approx(-6.0, abs=0.1)
    assert float(ratio_db[0]) == pytest.approx(0.0, abs=0.01)
    aug = WaveformAugment(augment_config({"waveform": {"eq": {"p": 1.0, "max_db": 3.0}}}).waveform)
    _, _, params = aug(x, torch.tensor([16000]), return_params=True)
    assert 0 < params["eq"][0] <= 3.0


def test_gain_polarity_time_shift_codec():
    x, lengths = _batch()
    assert torch.allclose(W.apply_gain(x, torch.tensor([6.0, 0.0, -6.0]))[0], x[0] * 10 ** 0.3)
    assert torch.equal(W.apply_polarity(x, torch.tensor([True, False, True]))[1], x[1])
    shifted = W.time_shift(x, lengths, torch.tensor([100, 0, -50]))
    assert torch.equal(shifted[0, 100:16000], x[0, :15900]) and torch.equal(shifted[0, :100], x[0, 15900:16000])
    assert torch.equal(shifted[2, :7950], x[2, 50:8000]) and float(shifted[2, 8000:].abs().max()) == 0.0
    coded = W.mu_law_codec(x, torch.tensor([8, 8, 4]))
    assert 0 < float((coded[0] - x[0]).abs().max()) < 0.02 < float((coded[2] - x[2]).abs().max())


def test_two_crops_respect_the_gap_and_come_from_the_utterance():
    x = torch.arange(48000, dtype=torch.float32)[None].repeat(4, 1)  # sample value = its index
    lengths = torch.tensor([48000, 30000, 12000, 5000])
    a, la, b, lb = two_crops(x, lengths, 8000, min_gap=4000, generator=torch.Generator().manual_seed(0))
    assert a.shape == (4, 8000) and la.tolist() == [8000, 8000, 8000, 5000] and torch.equal(la, lb)
    for i in range(2):  # long enough: disjoint with the gap
        sa, sb = int(a[i, 0]), int(b[i, 0])
        assert abs(sa - sb) >= 12000 and max(sa, sb) + 8000 <= int(lengths[i])
        assert torch.equal(a[i], torch.arange(sa, sa + 8000, dtype=torch.float32))
    assert torch.equal(a[3, :5000], x[3, :5000]) and float(a[3, 5000:].abs().max()) == 0.0


def test_specaugment_masks_cover_the_requested_fraction():
    feats = torch.randn(64, 200, 80, generator=torch.Generator().manual_seed(0))
    lengths = torch.full((64,), 200)
    lengths[:8] = 100
    g = torch.Generator().manual_seed(1)
    out, mask = mask_along_axis(feats, lengths, "time", num_masks=1, max_fraction=0.2, generator=g)
    # one mask of width U{0..0.2 T}: mean coverage ~0.1 of the valid frames, never above 0.2
    assert 0.08 < mask_fraction(mask, lengths) < 0.12
    per_row = mask[:, :, 0].sum(1).float() / lengths
    assert float(per_row.max()) <= 0.2 + 1e-6
    assert not bool(mask[:8, 100:].any())  # padding never masked
    valid_mean = feats[8, :200].mean()
    assert torch.allclose(out[8][mask[8]], valid_mean.expand(int(mask[8].sum())))
    _, fmask = mask_along_axis(feats, lengths, "freq", num_masks=2, max_fraction=0.1, generator=g)
    assert float(fmask[:, 0, :].sum(1).max()) <= 16


def test_mixup_memory_mixes_with_past_examples_in_the_exp_domain():
    mix = MixupMemory(MixupConfig(p=1.0, max_ratio=0.4, memory_size=4, memory_frames=10), num_bins=3)
    first = torch.zeros(2, 12, 3)
    out, ratios = mix(first, torch.tensor([12, 12]))
    assert torch.equal(out, first) and float(ratios.abs().sum()) == 0  # empty memory: unmixed
    assert int(mix.filled) == 2
    x = torch.full((2, 12, 3), math.log(2.0))
    out, ratios = mix(x, torch.tensor([12, 6]))  # memory holds zeros (exp 1)
    for b in range(2):
        r = float(ratios[b])
        assert 0 < r <= 0.4
        assert torch.allclose(out[b, :1], torch.tensor(math.log((1 - r) * 2 + r)).expand(1, 3), atol=1e-5)
    assert torch.equal(out[1, 6:], x[1, 6:])  # padding frames untouched
    assert int(mix.filled) == 4 and int(mix.pointer) == 0
    assert {"memory", "filled", "pointer"} <= set(mix.state_dict())


def test_random_resize_crop_keeps_shape_and_padding():
    feats = torch.randn(3, 50, 40, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([50, 30, 1])
    out = random_resize_crop(feats, lengths, ResizeCropConfig(), generator=torch.Generator().manual_seed(0))
    assert out.shape == feats.shape
    assert torch.equal(out[1, 30:], feats[1, 30:]) and torch.equal(out[2], feats[2])
    assert not torch.equal(out[0], feats[0])
    same = random_resize_crop(feats, lengths, ResizeCropConfig(min_time_scale=1.0, max_time_scale=1.0,
                                                               min_freq_scale=1.0, max_freq_scale=1.0,
                                                               virtual_scale=1.0))
    assert torch.allclose(same, feats, atol=1e-5)  # scale 1 on a canvas of the same size: identity


def test_random_resize_crop_along_time_only_keeps_every_frame_spectrum_of_the_crop():
    # freq False: each output frame is a (bicubic) mix of input frames along time only, so a spectrum
    # constant over time stays that spectrum (a frequency crop would stretch or shift it)
    spectrum = torch.randn(40, generator=torch.Generator().manual_seed(1))
    feats = spectrum.expand(2, 50, 40).clone()
    lengths = torch.tensor([50, 35])
    cfg = ResizeCropConfig(freq=False, min_time_scale=0.6, max_time_scale=1.0, virtual_scale=1.0)
    out = random_resize_crop(feats, lengths, cfg, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[0], feats[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, :35], feats[1, :35], atol=1e-5, rtol=1e-5)
    assert torch.equal(out[1, 35:], feats[1, 35:])
    ramp = torch.arange(50.0)[None, :, None].expand(1, 50, 40).clone()  # varies over time: the crop moves it
    moved = random_resize_crop(ramp, torch.tensor([50]), cfg, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(moved, ramp, atol=1e-3)
    assert torch.allclose(moved[0], moved[0, :, :1].expand(50, 40))  # still the same value in every bin
    with_freq = random_resize_crop(feats, lengths, ResizeCropConfig(), generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(with_freq[0], feats[0], atol=1e-2)


def test_pipelines_are_seeded_and_reproducible():
    x, lengths = _batch()
    aug = WaveformAugment(default_augment().waveform)
    y1, l1 = aug(x, lengths, generator=torch.Generator().manual_seed(3))
    y2, l2 = aug(x, lengths, generator=torch.Generator().manual_seed(3))
    y3, _ = aug(x, lengths, generator=torch.Generator().manual_seed(4))
    assert torch.equal(y1, y2) and torch.equal(l1, l2) and not torch.equal(y1, y3)
    torch.manual_seed(5)  # without a generator: the global RNG (what the Trainer checkpoints)
    g1, _ = aug(x, lengths)
    torch.manual_seed(5)
    g2, _ = aug(x, lengths)
    assert torch.equal(g1, g2)
    spec_cfg = augment_config({"spectrogram": {"mixup": {"memory_size": 8, "memory_frames": 5},
                                               "resize_crop": {}, "time_mask": {}, "freq_mask": {}}}).spectrogram
    feats = torch.randn(3, 20, 8)
    outs = []
    for _ in range(2):
        spec = SpectrogramAugment(spec_cfg, 8)
        g = torch.Generator().manual_seed(0)
        outs.append([spec(feats, torch.tensor([20, 15, 10]), generator=g) for _ in range(2)])
    assert all(torch.equal(a, b) for a, b in zip(outs[0], outs[1]))


def test_probability_zero_is_identity_and_p_selects_rows():
    x, lengths = _batch()
    off = augment_config({"waveform": {k: {"p": 0.0} for k in ["gain", "noise", "reverb", "band_limit", "codec", "eq",
                                                              "polarity", "time_shift", "speed", "pitch"]}})
    y, out_lens = WaveformAugment(off.waveform)(x, lengths)
    assert torch.equal(y, x) and torch.equal(out_lens, lengths)
    cfg = augment_config({"waveform": {"gain": {"p": 0.5, "min_db": 6, "max_db": 6}}})
    xs, ls = _batch((4000,) * 200)
    y, _, params = WaveformAugment(cfg.waveform)(xs, ls, generator=torch.Generator().manual_seed(0),
                                                 return_params=True)
    applied = [not math.isnan(v) for v in params["gain"]]
    assert 70 < sum(applied) < 130
    for b in range(200):
        assert torch.allclose(y[b], xs[b] * (10 ** 0.3 if applied[b] else 1.0))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="noise.p"):
        augment_config({"waveform": {"noise": {"p": 1.5}}})
    with pytest.raises(ConfigError, match="speed.min_factor"):
        augment_config({"waveform": {"speed": {"min_factor": 1.2, "max_factor": 1.1}}})
    with pytest.raises(ConfigError, match="augment.waveform.echo"):
        augment_config({"waveform": {"echo": {}}})
    with pytest.raises(ConfigError, match="order"):
        augment_config({"waveform": {"gain": {}, "order": ["noise"]}})


def test_noise_manifest_and_cli_write_examples(tmp_path, capsys):
    manifest = make_corpus(tmp_path / "corpus", n=3, seconds=(0.5, 0.6))
    cfg = tmp_path / "aug.yaml"
    cfg.write_text(f"waveform:\n  noise: {{p: 1.0, min_snr_db: 10, max_snr_db: 10, manifest: {manifest}}}\n"
                   "  speed: {p: 1.0}\nspectrogram:\n  time_mask: {p: 1.0}\n")
    out = tmp_path / "examples"
    assert cli_main(["augment", "--config", str(cfg), "--input", str(manifest), "--out", str(out), "-n", "2",
                     "--max-utts", "2"]) == 0
    assert "wrote 9 files" in capsys.readouterr().out
    assert len(list(out.glob("*.wav"))) == 6 and len(list(out.glob("*.png"))) == 2
    lines = [json.loads(line) for line in (out / "params.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(line["noise"] == pytest.approx(10.0) and "speed" in line for line in lines)
    bad = tmp_path / "bad.yaml"
    bad.write_text("waveform:\n  noise: {p: 2}\n")
    assert cli_main(["augment", "--config", str(bad), "--input", str(manifest), "--out", str(out)]) == 1
    assert "noise.p" in capsys.readouterr().err


def test_augmented_copies_for_downstream_training(tmp_path):
    from speechssl.augment.offline import augment_records
    from speechssl.data.manifest import read_manifest
    from speechssl.downstream import load_downstream_config
    from speechssl.downstream.protocols import superb

    manifest = make_corpus(tmp_path / "corpus", n=3, seconds=(0.3, 0.4))
    records = read_manifest(manifest)
    cfg = augment_config({"waveform": {"noise": {"p": 1.0}, "speed": {"p": 1.0, "min_factor": 1.1, "max_factor": 1.1}}})
    copies = augment_records(records, cfg, tmp_path / "aug", copies=2, seed=0)
    assert [c["id"] for c in copies[:2]] == [f"{records[0]['id']}__aug1", f"{records[0]['id']}__aug2"]
    assert all(c["speaker"] == r["speaker"] for c, r in zip(copies[::2], records))
    assert abs(copies[0]["num_samples"] - records[0]["num_samples"] / 1.1) <= 2
    first = (tmp_path / "aug" / f"{records[0]['id']}__aug1.wav").read_bytes()
    (tmp_path / "aug" / f"{records[0]['id']}__aug1.wav").unlink()
    augment_records(records, cfg, tmp_path / "aug", copies=2, seed=0)  # rewritten the same (seeded per copy)
    assert (tmp_path / "aug" / f"{records[0]['id']}__aug1.wav").read_bytes() == first
    with pytest.raises(ValueError, match="needs --encoder"):
        superb(load_downstream_config(None, [], "speaker"), tmp_path / "exp", features=str(tmp_path), train=manifest,
               augment=cfg)
