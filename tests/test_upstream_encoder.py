"""Encoder API: load_encoder for every source kind, layer selection, batched == single, options."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import built_in_families, tiny_model

import speechssl
from speechssl.models.base import build_model
from speechssl.train.checkpoint import save_checkpoint
from speechssl.upstream import Encoder, EncoderLoadError, load_encoder
from speechssl.upstream.release import save_released_encoder

LONG, SHORT = 20000 + 123, 3217  # very different lengths (1.26 s vs 0.2 s)


def two_clips(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = 0.1 * torch.randn(LONG, generator=g)
    b = 0.1 * torch.randn(SHORT, generator=g)
    wavs = torch.zeros(2, LONG)
    wavs[0], wavs[1, :SHORT] = a, b
    return wavs, a, b


def assert_batched_equals_single(enc: Encoder, atol: float) -> None:
    wavs, a, b = two_clips()
    batch = enc(wavs, torch.tensor([LONG, SHORT]))
    for i, clip in enumerate((a, b)):
        single = enc(clip[None], torch.tensor([clip.numel()]))
        n = int(single.lengths[0])
        assert int(batch.lengths[i]) == n > 0
        for name, hb, hs in zip(batch.layer_names, batch.hidden_states, single.hidden_states):
            assert hb.shape[1] >= n and hs.shape[1] == n, name
            torch.testing.assert_close(hb[i, :n], hs[0], atol=atol, rtol=0, msg=f"layer {name}")


# The package's own families (other test modules register toy models in MODELS too).
FAMILIES = built_in_families()


def test_every_family_has_a_tiny_preset():
    assert {"apc", "cpc", "wav2vec2"} <= set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_equals_single_every_family(family):
    enc = load_encoder(tiny_model(family))
    assert enc.layer_names[0] == "latent" and enc.layer_names[-1] == "context"
    assert_batched_equals_single(enc, atol=1e-5)


@pytest.mark.parametrize("name,dim", [("logmel", 80), ("fbank", 80), ("mfcc", 39)])
def test_baselines_batched_equals_single(name, dim):
    enc = load_encoder(name)
    assert enc.layer_names == ["features"] and enc.hidden_sizes == [dim] and enc.frame_shift == 160
    assert enc.kind == "baseline"
    assert_batched_equals_single(enc, atol=1e-5)


def test_baseline_takes_frontend_options_and_aliases():
    enc = load_encoder("fbank", num_mel_bins=40, layers="context")
    assert enc.hidden_sizes == [40] and enc.layer_names == ["context"]
    assert load_encoder("logmel", layers=["latent"]).layer_names == ["latent"]


def test_unknown_option_lists_valid_options():
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'n_mel'.*valid options: layers, device, trainable, precision.*n_mels"):
        load_encoder("logmel", n_mel=40)
    with pytest.raises(TypeError, match="unknown option.*'num_mel_bins'.*valid options: layers, device, trainable, precision$"):
        load_encoder(tiny_model("apc"), num_mel_bins=40)


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing file/folder nor a baseline name"):
        load_encoder(str(tmp_path / "missing"))
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"xx")
    with pytest.raises(EncoderLoadError, match="training checkpoint"):
        load_encoder(bad)


def test_layer_selection():
    model = tiny_model("apc")
    enc = load_encoder(model, layers="context,latent")
    assert enc.layer_names == ["context", "latent"]
    sizes = dict(zip(model.layer_names, load_encoder(model).hidden_sizes))
    assert enc.hidden_sizes == [sizes["context"], sizes["latent"]] and sizes["latent"] != sizes["context"]
    with pytest.raises(ValueError, match="different sizes"):
        _ = enc.hidden_size
    wavs, a, _ = two_clips()
    out = enc(a)
    full = load_encoder(model)(a)
    torch.testing.assert_close(out.hidden_states[0], full.layer("context"))
    torch.testing.assert_close(out.hidden_states[1], full.layer("latent"))
    assert load_encoder(model, layers=[-1, 1]).layer_names == ["context", "layer_1"]
    assert load_encoder(model, layers="all").layer_names == model.layer_names
    with pytest.raises(ValueError, match="unknown layer 'layer_9'; layers: latent, layer_1"):
        load_encoder(model, layers=["layer_9"])
    with pytest.raises(ValueError, match="out of range"):
        load_encoder(model, layers=[7])


def test_frozen_by_default_and_trainable_option():
    model = tiny_model("cpc")
    enc = load_encoder(model)
    enc.train()  # a frozen encoder stays in eval mode inside a training model
    assert not enc.training and not model.training
    _, _, b = two_clips()
    out = enc(b)
    assert not out.hidden_states[-1].requires_grad
    assert all(not p.requires_grad for p in enc.parameters())
    enc2 = load_encoder(tiny_model("cpc"), trainable=True)
    out2 = enc2(b)
    out2.hidden_states[-1].sum().backward()
    assert any(p.grad is not None for p in enc2.parameters())


def test_released_folder_roundtrip(tmp_path):
    model = tiny_model("wav2vec2", seed=3)
    folder = save_released_encoder(model, tmp_path / "exp" / "encoder")
    enc = speechssl.load_encoder(str(folder))
    assert enc.kind == "released" and enc.layer_names == model.layer_names
    _, a, _ = two_clips()
    ref = model.encode(a[None], torch.tensor([a.numel()]))
    got = enc(a)
    for r, g in zip(ref.hidden_states, got.hidden_states):
        torch.testing.assert_close(g, r)
    # an experiment folder resolves to its encoder/ release
    assert load_encoder(tmp_path / "exp").source.endswith("encoder")


def test_training_checkpoint(tmp_path):
    model = tiny_model("apc", seed=4)
    ckpt = tmp_path / "exp" / "checkpoints" / "step_000010.pt"
    ckpt.parent.mkdir(parents=True)
    save_checkpoint(ckpt, {"model_name": "apc", "config": {"model": model.config_dict()}, "step": 10,
                           "model": model.state_dict()})
    enc = load_encoder(ckpt, layers="context")
    assert enc.kind == "checkpoint"
    _, a, _ = two_clips()
    ref = model.encode(a[None], torch.tensor([a.numel()])).layer("context")
    torch.testing.assert_close(enc(a).hidden_states[0], ref)
    # an experiment folder without encoder/ uses its newest checkpoint
    older = ckpt.with_name("step_000002.pt")
    save_checkpoint(older, {"config": {"model": model.config_dict()}, "model": tiny_model("apc", 9).state_dict()})
    assert load_encoder(tmp_path / "exp").source == str(ckpt)
    save_checkpoint(tmp_path / "noconfig.pt", {"model": model.state_dict()})
    with pytest.raises(EncoderLoadError, match="no 'config' -> 'model' section"):
        load_encoder(tmp_path / "noconfig.pt")
    torch.save({"model": model.state_dict()}, tmp_path / "foreign.pt")  # not written by the trainer
    with pytest.raises(ValueError, match="not a speechssl pretraining checkpoint"):
        load_encoder(tmp_path / "foreign.pt")


def test_encode_wav_resamples_with_a_warning(caplog):
    enc = load_encoder("logmel")
    wav = 0.1 * torch.randn(2, 8000)  # stereo, 8 kHz, 1 s
    with caplog.at_level(logging.WARNING):
        out = enc.encode_wav(wav, 8000)
    assert "resampling 8000 Hz" in caplog.text and "averaging 2 channels" in caplog.text
    assert int(out.lengths[0]) == 1 + (16000 - 400) // 160


def test_bad_input_shapes():
    enc = load_encoder("logmel")
    with pytest.raises(ValueError, match=r"expected wavs of shape \[batch, samples\]"):
        enc(torch.zeros(1, 1, 100))
    with pytest.raises(ValueError, match="exceeds the padded size"):
        enc(torch.zeros(2, 100), torch.tensor([100, 200]))


@pytest.mark.parametrize("family", FAMILIES)
def test_loading_skips_random_init_yet_restores_every_weight(tmp_path, family):
    model = tiny_model(family, seed=5)
    folder = save_released_encoder(model, tmp_path / family)
    init_fns = {name: getattr(torch.nn.init, name) for name in ("normal_", "uniform_", "kaiming_normal_")}
    enc = speechssl.load_encoder(str(folder))
    assert {name: getattr(torch.nn.init, name) for name in init_fns} == init_fns  # torch.nn.init restored
    loaded = enc.backbone.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key
    # and a model built afterwards is randomly initialised again
    torch.manual_seed(0)
    a = build_model(model.config_dict())
    torch.manual_seed(0)
    b = build_model(model.config_dict())
    c = build_model(model.config_dict(), init_weights=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert set(c.state_dict()) == set(a.state_dict())
