"""load_encoder takes torchaudio / Hugging Face model objects; save_encoder releases them as folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
import transformers

from speechssl.cli.main import main
from speechssl.upstream import (
    EncoderLoadError,
    ForeignCheckpointError,
    from_hf,
    from_torchaudio,
    load_encoder,
    load_foreign,
    save_encoder,
)

CONV = [(16, 10, 5), (16, 3, 2), (16, 3, 2), (16, 2, 2)]
TA_KWARGS = dict(
    extractor_mode="group_norm", extractor_conv_layer_config=CONV, extractor_conv_bias=False,
    encoder_embed_dim=24, encoder_projection_dropout=0.1, encoder_pos_conv_kernel=8, encoder_pos_conv_groups=4,
    encoder_num_layers=2, encoder_num_heads=4, encoder_attention_dropout=0.1, encoder_ff_interm_features=48,
    encoder_ff_interm_dropout=0.0, encoder_dropout=0.1, encoder_layer_norm_first=False, encoder_layer_drop=0.0,
)  # fmt: skip
HF_SIZES = dict(
    hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
    conv_dim=[c for c, _, _ in CONV], conv_kernel=[k for _, k, _ in CONV], conv_stride=[s for _, _, s in CONV],
    num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
)  # fmt: skip


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return module.eval()


def _ta_hubert() -> torch.nn.Module:
    kwargs = dict(TA_KWARGS)
    kwargs.update(mask_prob=0.5, mask_selection="static", mask_other=0.0, mask_length=2, no_mask_overlap=False,
                  mask_min_space=1, mask_channel_prob=0.0, mask_channel_selection="static", mask_channel_other=0.0,
                  mask_channel_length=1, no_mask_channel_overlap=False, mask_channel_min_space=1,
                  skip_masked=False, skip_nomask=False, num_classes=10, final_dim=8, feature_grad_mult=0.1)  # fmt: skip
    return _randomise(torchaudio.models.hubert_pretrain_model(**kwargs))


def _foreign_models() -> dict[str, tuple[torch.nn.Module, object]]:
    """name -> (object, reference: wavs -> final hidden state of the foreign model)."""
    ta = _randomise(torchaudio.models.wav2vec2_model(aux_num_out=None, **TA_KWARGS))
    hubert = _ta_hubert()
    hf_w2v = _randomise(transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**HF_SIZES)))
    hf_hubert = _randomise(transformers.HubertModel(transformers.HubertConfig(**HF_SIZES)))
    return {
        "torchaudio Wav2Vec2Model": (ta, lambda w: ta(w)[0]),
        "torchaudio HuBERTPretrainModel": (hubert, lambda w: hubert.wav2vec2(w)[0]),
        "transformers Wav2Vec2Model": (hf_w2v, lambda w: hf_w2v(w).last_hidden_state),
        "transformers HubertModel": (hf_hubert, lambda w: hf_hubert(w).last_hidden_state),
    }


def test_importers_are_exported():
    from speechssl.upstream import importers

    assert (from_torchaudio, from_hf, load_foreign) == (importers.from_torchaudio, importers.from_hf,
                                                       importers.load_foreign)  # fmt: skip
    assert issubclass(ForeignCheckpointError, ValueError)


@pytest.mark.parametrize("name", list(_foreign_models()))
def test_load_encoder_takes_foreign_objects(name):
    obj, reference = _foreign_models()[name]
    enc = load_encoder(obj, layers="context")
    assert enc.kind == "foreign" and enc.source == name
    wavs = torch.randn(2, 3200)
    with torch.no_grad():
        ref = reference(wavs)
        out = enc(wavs, torch.tensor([3200, 3200]))
    assert out.layer_names == ["context"]
    torch.testing.assert_close(out.hidden_states[0], ref, atol=1e-4, rtol=1e-4)


def test_unsupported_object_points_to_the_importers():
    with pytest.raises(EncoderLoadError, match=r"torch\.nn\.modules\.linear\.Linear is neither.*"
                                               r"speechssl\.upstream\.importers \(from_torchaudio, from_hf"):  # fmt: skip
        load_encoder(torch.nn.Linear(2, 2))
    not_a_model = transformers.Speech2TextConfig()  # a transformers object, not a model
    with pytest.raises(EncoderLoadError, match="importers"):
        save_encoder(not_a_model, "unused")  # type: ignore[arg-type]
    with pytest.raises(EncoderLoadError, match=r"cannot import transformers\.models\.wavlm.*importers"):
        load_encoder(transformers.WavLMModel(transformers.WavLMConfig(**HF_SIZES)))
    with pytest.raises(EncoderLoadError, match="baselines are rebuilt by name"):
        save_encoder(load_encoder("logmel"), "unused")


def test_save_encoder_folder_loads_and_extracts(tmp_path):
    ta = _randomise(torchaudio.models.wav2vec2_model(aux_num_out=None, **TA_KWARGS))
    folder = save_encoder(ta, tmp_path / "released")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text())["extra"]["source"] == "torchaudio Wav2Vec2Model"
    enc = load_encoder(folder)
    assert enc.kind == "released"
    wav = 0.3 * torch.sin(torch.arange(4000) / 7.0)
    with torch.no_grad():
        direct = load_encoder(ta)(wav[None], torch.tensor([4000]))
        released = enc(wav[None], torch.tensor([4000]))
        layers, _ = ta.extract_features(wav[None])
    assert released.layer_names == direct.layer_names
    for a, b in zip(released.hidden_states, direct.hidden_states):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(released.hidden_states[released.layer_names.index("layer_1")], layers[0],
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    # Saving the Encoder over the imported model gives the same hidden states (the pretraining-only
    # quantizer, which the import leaves freshly initialised, may differ).
    again = save_encoder(load_encoder(ta), tmp_path / "again")
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(again)(wav[None]).hidden_states, released.hidden_states)
    # speechssl extract reads the folder like any released encoder.
    sf.write(tmp_path / "a.wav", wav.numpy(), 16000, subtype="FLOAT")
    out = tmp_path / "feats"
    assert main(["extract", "--encoder", str(folder), "--input", str(tmp_path / "a.wav"), "--out", str(out),
                 "--layers", "context"]) == 0  # fmt: skip
    files = sorted(out.rglob("*.npy"))
    assert len(files) == 1
    np.testing.assert_allclose(np.load(files[0]).reshape(-1, 24), released.layer("context")[0].numpy(), atol=1e-5)
