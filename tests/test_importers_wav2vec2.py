"""torchaudio / Hugging Face importers and the Hugging Face exporter: hidden-state parity to 1e-4."""

import json

import pytest
import torch
import torchaudio
import transformers
from safetensors.torch import save_file

from speechssl.models.wav2vec2 import Wav2Vec2Config, build_wav2vec2
from speechssl.upstream.hf_export import export_hf
from speechssl.upstream.importers import ForeignCheckpointError, from_hf, from_torchaudio, load_foreign

CONV = [(16, 10, 5), (16, 3, 2), (16, 3, 2), (16, 2, 2)]
TA_KWARGS = dict(
    extractor_conv_layer_config=CONV, encoder_embed_dim=24, encoder_projection_dropout=0.1,
    encoder_pos_conv_kernel=8, encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=4,
    encoder_attention_dropout=0.1, encoder_ff_interm_features=48, encoder_ff_interm_dropout=0.0,
    encoder_dropout=0.1, encoder_layer_drop=0.0,
)


def _randomise(module: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def _ta_model(stable: bool) -> torch.nn.Module:
    model = torchaudio.models.wav2vec2_model(
        extractor_mode="layer_norm" if stable else "group_norm", extractor_conv_bias=stable,
        encoder_layer_norm_first=stable, aux_num_out=None, **TA_KWARGS)
    _randomise(model)
    return model.eval()


def _hf_config(stable: bool) -> transformers.Wav2Vec2Config:
    return transformers.Wav2Vec2Config(
        hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        conv_dim=[c for c, _, _ in CONV], conv_kernel=[k for _, k, _ in CONV], conv_stride=[s for _, _, s in CONV],
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, feat_extract_norm="layer" if stable else "group",
        do_stable_layer_norm=stable, conv_bias=stable, num_codevectors_per_group=8, codevector_dim=16,
        proj_codevector_dim=12,
    )


def _assert_layers_equal(ours, layers: list[torch.Tensor], final: torch.Tensor, n: int | None = None):
    for k, ref in enumerate(layers, start=1):
        torch.testing.assert_close(ours.layer(f"layer_{k}")[:, :n], ref[:, :n], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.layer("context")[:, :n], final[:, :n], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("stable", [False, True], ids=["group_norm_post_ln", "layer_norm_pre_ln"])
def test_torchaudio_parity(stable):
    ta = _ta_model(stable)
    ours = from_torchaudio(ta)
    assert ours.config.layer_norm_first == stable
    wavs = torch.randn(2, 3200)
    with torch.no_grad():
        layers, _ = ta.extract_features(wavs)
        final, _ = ta(wavs)
        enc = ours.encode(wavs)
    _assert_layers_equal(enc, layers, final)
    if stable:  # layer-norm models see no padding leak in torchaudio either: compare a padded batch
        lengths = torch.tensor([3200, 2000])
        with torch.no_grad():
            final, out_lengths = ta(wavs * (torch.arange(3200) < lengths[:, None]), lengths)
            enc = ours.encode(wavs * (torch.arange(3200) < lengths[:, None]), lengths)
        assert enc.lengths.tolist() == out_lengths.tolist()
        n = int(out_lengths[1])
        torch.testing.assert_close(enc.layer("context")[1, :n], final[1, :n], atol=1e-4, rtol=1e-4)


def test_torchaudio_hubert_pretrain_model_and_folder(tmp_path):
    kwargs = dict(TA_KWARGS)
    kwargs.update(extractor_mode="group_norm", extractor_conv_bias=False, encoder_layer_norm_first=False,
                  mask_prob=0.5, mask_selection="static", mask_other=0.0, mask_length=2, no_mask_overlap=False,
                  mask_min_space=1, mask_channel_prob=0.0, mask_channel_selection="static", mask_channel_other=0.0,
                  mask_channel_length=1, no_mask_channel_overlap=False, mask_channel_min_space=1,
                  skip_masked=False, skip_nomask=False, num_classes=10, final_dim=8, feature_grad_mult=0.1)
    hubert = torchaudio.models.hubert_pretrain_model(**kwargs)
    _randomise(hubert)
    hubert.eval()
    ours = from_torchaudio(hubert)
    torch.testing.assert_close(ours.mask_emb, hubert.mask_generator.mask_embedding)
    wavs = torch.randn(1, 2400)
    with torch.no_grad():
        layers, _ = hubert.wav2vec2.extract_features(wavs)
        final, _ = hubert.wav2vec2(wavs)
        _assert_layers_equal(ours.encode(wavs), layers, final)
    # the same encoder as a torchaudio folder: wav2vec2_model kwargs + safetensors
    ta = _ta_model(False)
    cfg = dict(TA_KWARGS)
    cfg.update(extractor_mode="group_norm", extractor_conv_bias=False, encoder_layer_norm_first=False)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in ta.state_dict().items()}, str(tmp_path / "model.safetensors"))
    loaded = load_foreign(tmp_path)
    with torch.no_grad():
        layers, _ = ta.extract_features(wavs)
        final, _ = ta(wavs)
        _assert_layers_equal(loaded.encode(wavs), layers, final)


@pytest.mark.parametrize("stable", [False, True], ids=["group_norm_post_ln", "stable_layer_norm"])
def test_hf_parity_object_and_folder(stable, tmp_path):
    torch.manual_seed(0)
    hf = transformers.Wav2Vec2ForPreTraining(_hf_config(stable))
    _randomise(hf)
    hf.eval()
    ours = from_hf(hf)
    torch.testing.assert_close(ours.quantizer.codevectors, hf.quantizer.codevectors)
    torch.testing.assert_close(ours.final_proj.weight, hf.project_hid.weight)
    wavs = torch.randn(2, 3200)
    with torch.no_grad():
        ref = hf.wav2vec2(wavs, output_hidden_states=True)
        enc = ours.encode(wavs)
    n = len(ref.hidden_states) - 1
    _assert_layers_equal(enc, list(ref.hidden_states[1:n]), ref.last_hidden_state)
    if stable:  # layer-norm models take an attention mask in transformers: padded batch parity
        lengths = torch.tensor([3200, 2000])
        valid = torch.arange(3200)[None] < lengths[:, None]
        with torch.no_grad():
            ref_pad = hf.wav2vec2(wavs * valid, attention_mask=valid.long()).last_hidden_state
            enc_pad = ours.encode(wavs * valid, lengths)
        frames = int(enc_pad.lengths[1])
        torch.testing.assert_close(enc_pad.layer("context")[1, :frames], ref_pad[1, :frames], atol=1e-4, rtol=1e-4)
    # a saved Wav2Vec2Model folder (safetensors), and the same weights as pytorch_model.bin
    hf.wav2vec2.save_pretrained(tmp_path / "st")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    torch.save(hf.wav2vec2.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    for sub in ("st", "bin"):
        loaded = load_foreign(tmp_path / sub)
        with torch.no_grad():
            _assert_layers_equal(loaded.encode(wavs), list(ref.hidden_states[1:n]), ref.last_hidden_state)


def test_legacy_weight_norm_names_are_accepted():
    hf = transformers.Wav2Vec2Model(_hf_config(False)).eval()
    state = dict(hf.state_dict())
    prefix = "encoder.pos_conv_embed.conv."
    state[prefix + "weight_g"] = state.pop(prefix + "parametrizations.weight.original0")
    state[prefix + "weight_v"] = state.pop(prefix + "parametrizations.weight.original1")

    class Legacy(torch.nn.Module):
        config = hf.config

        def state_dict(self):
            return state

    ours = from_hf(Legacy())
    wavs = torch.randn(1, 2400)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(wavs).layer("context"), hf(wavs).last_hidden_state,
                                   atol=1e-4, rtol=1e-4)


def test_bad_checkpoint_names_missing_and_extra_keys(tmp_path):
    hf = transformers.Wav2Vec2Model(_hf_config(False))
    hf.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "model.safetensors"))
    del state["encoder.layers.1.attention.k_proj.weight"]
    state["encoder.layers.1.attention.rel_bias.weight"] = torch.zeros(3)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ForeignCheckpointError) as err:
        load_foreign(tmp_path)
    assert "encoder.layers.1.attention.k_proj.weight" in str(err.value)
    assert "encoder.layers.1.attention.rel_bias.weight" in str(err.value)


def test_unknown_folder_and_unsupported_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden": 3}))
    with pytest.raises(ForeignCheckpointError, match="neither a Hugging Face"):
        load_foreign(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ForeignCheckpointError, match="whisper"):
        load_foreign(tmp_path)
    with pytest.raises(ForeignCheckpointError, match="not a folder"):
        load_foreign(tmp_path / "nope")


@pytest.mark.parametrize("stable", [False, True], ids=["group_norm_post_ln", "layer_norm_pre_ln"])
def test_export_hf_round_trip(stable, tmp_path):
    torch.manual_seed(0)
    cfg = Wav2Vec2Config(conv_layers=CONV, conv_norm="layer_norm" if stable else "group_norm", conv_bias=stable,
                         layer_norm_first=stable, embed_dim=24, num_layers=2, num_heads=4, ffn_dim=48,
                         pos_conv_kernel=8, pos_conv_groups=4, num_vars=8, vq_dim=16, final_dim=12)
    ours = build_wav2vec2(cfg)
    _randomise(ours)
    ours.eval()
    export_hf(ours, tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["sampling_rate"] == 16000
    hf = transformers.Wav2Vec2Model.from_pretrained(tmp_path).eval()
    wavs = torch.randn(2, 3200)
    with torch.no_grad():
        ref = hf(wavs, output_hidden_states=True)
        enc = ours.encode(wavs)
    n = len(ref.hidden_states) - 1
    _assert_layers_equal(enc, list(ref.hidden_states[1:n]), ref.last_hidden_state)
    full = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path)
    torch.testing.assert_close(full.quantizer.weight_proj.weight, ours.quantizer.weight_proj.weight)
    back = load_foreign(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(back.encode(wavs).layer("context"), enc.layer("context"))


def test_export_refuses_logmel_models(tmp_path):
    cfg = Wav2Vec2Config(frontend={"name": "logmel"}, conv_layers=[(16, 3, 2)], embed_dim=24, num_layers=1,
                         num_heads=4, ffn_dim=48, pos_conv_kernel=8, pos_conv_groups=4, num_vars=8, vq_dim=16,
                         final_dim=12)
    with pytest.raises(ValueError, match="only waveform-frontend"):
        export_hf(build_wav2vec2(cfg), tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_hf_hubert_model_parity():
    cfg = transformers.HubertConfig(
        hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        conv_dim=[c for c, _, _ in CONV], conv_kernel=[k for _, k, _ in CONV], conv_stride=[s for _, _, s in CONV],
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
    )
    hf = transformers.HubertModel(cfg)
    _randomise(hf)
    hf.eval()
    ours = from_hf(hf)
    wavs = torch.randn(1, 2400)
    with torch.no_grad():
        ref = hf(wavs, output_hidden_states=True)
        _assert_layers_equal(ours.encode(wavs), list(ref.hidden_states[1:2]), ref.last_hidden_state)
