"""speechssl.audio: formats, segments, downmix, resampling, typed errors, atomic writes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from speechssl.audio import (
    AudioDecodeError,
    AudioError,
    AudioNotFoundError,
    AudioSegmentError,
    AudioTooShortError,
    EmptyAudioError,
    NonFiniteAudioError,
    audio_info,
    load_audio,
    save_audio,
)
from speechssl.audio import io as audio_io


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wav: torch.Tensor, sr: int) -> float:
    spec = np.abs(np.fft.rfft(wav.numpy() * np.hanning(wav.numel())))
    return float(np.argmax(spec) * sr / wav.numel())


def test_wav_16k_mono_roundtrip_exact(tmp_path):
    x = np.random.default_rng(0).integers(-32768, 32767, 16000, dtype=np.int16)
    sf.write(tmp_path / "a.wav", x, 16000, subtype="PCM_16")
    wav = load_audio(tmp_path / "a.wav")
    assert wav.dtype == torch.float32 and wav.ndim == 1
    np.testing.assert_array_equal(wav.numpy(), x.astype(np.float32) / 32768)
    info = audio_info(tmp_path / "a.wav")
    assert (info.num_samples, info.sample_rate, info.channels, info.duration) == (16000, 16000, 1, 1.0)


@pytest.mark.parametrize("ext", ["flac", "ogg", "mp3"])
def test_compressed_formats(tmp_path, ext):
    sf.write(tmp_path / f"a.{ext}", _sine(440, 16000, 1.0), 16000)
    wav = load_audio(tmp_path / f"a.{ext}")
    assert abs(wav.numel() - 16000) <= 1200  # mp3 encoder delay/padding may add a frame
    assert abs(_peak_hz(wav, 16000) - 440) < 5


def test_segment_reads_only_that_part(tmp_path):
    x = (np.arange(32000) % 1000 / 1000).astype(np.float32)
    sf.write(tmp_path / "a.wav", x, 16000, subtype="FLOAT")
    seg = load_audio(tmp_path / "a.wav", start=0.5, duration=0.25)
    np.testing.assert_array_equal(seg.numpy(), x[8000:12000])
    tail = load_audio(tmp_path / "a.wav", start=1.5)
    np.testing.assert_array_equal(tail.numpy(), x[24000:])
    head = load_audio(tmp_path / "a.wav", duration=0.1)
    np.testing.assert_array_equal(head.numpy(), x[:1600])
    # a few ms past the end (rounding in segment lists) is cut at the end of the file
    assert load_audio(tmp_path / "a.wav", start=1.9, duration=0.12).numel() == 1600


@pytest.mark.parametrize(
    "start,duration,match",
    [(3.0, None, "starts at"), (1.0, 5.0, "past the end"), (-1.0, None, "start"), (0.0, 0.0, "duration")],
)
def test_bad_segments(tmp_path, start, duration, match):
    sf.write(tmp_path / "a.wav", np.zeros(32000, np.float32), 16000)
    with pytest.raises(AudioSegmentError, match=match) as err:
        load_audio(tmp_path / "a.wav", start=start, duration=duration)
    assert str(tmp_path / "a.wav") in str(err.value)


def test_stereo_downmix_is_channel_mean(tmp_path):
    left, right = _sine(300, 16000, 0.5), _sine(700, 16000, 0.5, amp=0.25)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    assert audio_info(tmp_path / "s.wav").channels == 2
    wav = load_audio(tmp_path / "s.wav")
    np.testing.assert_allclose(wav.numpy(), (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("sr", [8000, 44100])
def test_resample_to_16k(tmp_path, sr, caplog):
    audio_io._noted.discard(("rate", sr))
    sf.write(tmp_path / "a.wav", _sine(1000, sr, 1.0), sr, subtype="FLOAT")
    sf.write(tmp_path / "b.wav", _sine(1000, sr, 1.0), sr, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="speechssl.audio.io"):
        wav = load_audio(tmp_path / "a.wav")
        load_audio(tmp_path / "b.wav")
    assert wav.numel() == 16000
    assert abs(_peak_hz(wav, 16000) - 1000) < 3
    # amplitude kept away from the edges (no gain change)
    assert abs(wav[2000:14000].abs().max().item() - 0.5) < 0.01
    notes = [r for r in caplog.records if f"resampling {sr} Hz" in r.getMessage()]
    assert len(notes) == 1  # once per rate, not once per file


def test_missing_file():
    with pytest.raises(AudioNotFoundError, match="file not found") as err:
        load_audio("/nonexistent/x.wav")
    assert err.value.path == "/nonexistent/x.wav" and isinstance(err.value, ValueError)
    with pytest.raises(AudioNotFoundError):
        audio_info("/nonexistent/x.wav")


def test_corrupt_bytes(tmp_path):
    p = tmp_path / "bad.wav"
    p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    with pytest.raises(AudioDecodeError, match="cannot decode") as err:
        load_audio(p)
    assert err.value.path == str(p)
    with pytest.raises(AudioDecodeError):
        audio_info(p)
    with pytest.raises(AudioDecodeError, match="directory"):
        load_audio(tmp_path)


def test_empty_files(tmp_path):
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(EmptyAudioError, match="0 bytes"):
        load_audio(tmp_path / "zero.wav")
    sf.write(tmp_path / "noframes.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(EmptyAudioError, match="no samples"):
        load_audio(tmp_path / "noframes.wav")


def test_non_finite_samples(tmp_path):
    x = np.zeros(1000, np.float32)
    x[123] = np.nan
    x[500] = np.inf
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(NonFiniteAudioError, match="2 non-finite.*first at sample 123"):
        load_audio(tmp_path / "nan.wav")


def test_too_short(tmp_path):
    sf.write(tmp_path / "short.wav", np.zeros(300, np.float32), 16000)
    assert load_audio(tmp_path / "short.wav", min_samples=300).numel() == 300
    with pytest.raises(AudioTooShortError, match="300 samples.*400") as err:
        load_audio(tmp_path / "short.wav", min_samples=400)
    assert isinstance(err.value, AudioError)


def test_save_audio_atomic_pcm16(tmp_path):
    wav = torch.tensor([0.0, 0.5, -0.5, 2.0, -2.0])
    save_audio(tmp_path / "sub" / "o.wav", wav)
    info = audio_info(tmp_path / "sub" / "o.wav")
    assert (info.subtype, info.sample_rate, info.num_samples) == ("PCM_16", 16000, 5)
    back = load_audio(tmp_path / "sub" / "o.wav")
    np.testing.assert_allclose(back.numpy(), [0, 0.5, -0.5, 1, -1], atol=1 / 16000)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["o.wav"]  # no temporary left
    with pytest.raises(ValueError, match="non-finite"):
        save_audio(tmp_path / "sub" / "o.wav", torch.tensor([float("nan")]))
    assert audio_info(tmp_path / "sub" / "o.wav").num_samples == 5  # old file untouched


def test_errors_pickle_with_path_and_reason():
    import pickle

    err = pickle.loads(pickle.dumps(AudioTooShortError("/x.wav", "too short")))
    assert type(err) is AudioTooShortError and (err.path, err.reason) == ("/x.wav", "too short")
    assert str(err) == "/x.wav: too short"


def test_flac_segment_equals_slice_of_whole_file(tmp_path):
    x = (np.random.default_rng(1).integers(-20000, 20000, 48000) / 32768).astype(np.float32)
    sf.write(tmp_path / "a.flac", x, 16000, subtype="PCM_16")
    whole = load_audio(tmp_path / "a.flac")
    seg = load_audio(tmp_path / "a.flac", start=1.25, duration=0.5)
    assert torch.equal(seg, whole[20000:28000])


def test_truncated_compressed_file_is_a_decode_error(tmp_path):
    sf.write(tmp_path / "a.ogg", _sine(440, 16000, 2.0), 16000)
    data = (tmp_path / "a.ogg").read_bytes()
    (tmp_path / "cut.ogg").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioDecodeError, match="cut.ogg"):
        load_audio(tmp_path / "cut.ogg")
