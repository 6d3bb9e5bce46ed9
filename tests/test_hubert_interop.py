"""HuBERT interop: torchaudio HuBERTPretrainModel and Hugging Face HubertModel -> speechssl HuBERT (every layer
equal, batched with padding vs one utterance at a time), and speechssl HuBERT -> a Hugging Face HubertModel
folder that loads with from_pretrained and gives the same outputs. Random weights, nothing downloaded."""

from __future__ import annotations

import pytest
import torch
import torchaudio
import transformers

from speechssl.config import to_dict
from speechssl.models import build_model
from speechssl.models.hubert import HubertModel, hubert_base
from speechssl.upstream import load_encoder
from speechssl.upstream.hf_export import export_hf
from speechssl.upstream.importers import from_hf, from_torchaudio, load_foreign

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CONV = [(16, 10, 5), (16, 3, 2), (16, 3, 2), (16, 2, 2)]
LENGTHS = [3200, 2240]


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return module.eval()


def _padded() -> tuple[torch.Tensor, torch.Tensor]:
    wavs = torch.randn(len(LENGTHS), max(LENGTHS), generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor(LENGTHS)
    return wavs * (torch.arange(wavs.shape[1]) < lengths[:, None]), lengths


def _check_every_layer(ours: HubertModel, reference) -> None:
    """ours on a padded batch == ``reference(wav [1, L]) -> (layer outputs, final)`` on each utterance alone."""
    wavs, lengths = _padded()
    with torch.no_grad():
        enc = ours.encode(wavs, lengths)
        for b, n in enumerate(LENGTHS):
            layers, final = reference(wavs[b: b + 1, :n])
            t = int(enc.lengths[b])
            assert t == final.shape[1]
            for k, ref in enumerate(layers, start=1):
                torch.testing.assert_close(enc.layer(f"layer_{k}")[b, :t], ref[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(enc.layer("context")[b, :t], final[0], atol=1e-4, rtol=1e-4)


def test_torchaudio_hubert_pretrain_model_imports_as_hubert_with_its_head():
    kwargs = dict(
        extractor_mode="group_norm", extractor_conv_layer_config=CONV, extractor_conv_bias=False,
        encoder_embed_dim=24, encoder_projection_dropout=0.1, encoder_pos_conv_kernel=8, encoder_pos_conv_groups=4,
        encoder_num_layers=2, encoder_num_heads=4, encoder_attention_dropout=0.1, encoder_ff_interm_features=48,
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.1, encoder_layer_norm_first=False, encoder_layer_drop=0.0,
        mask_prob=0.8, mask_selection="static", mask_other=0.0, mask_length=10, no_mask_overlap=False,
        mask_min_space=1, mask_channel_prob=0.0, mask_channel_selection="static", mask_channel_other=0.0,
        mask_channel_length=10, no_mask_channel_overlap=False, mask_channel_min_space=1, skip_masked=False,
        skip_nomask=False, num_classes=10, final_dim=8, feature_grad_mult=0.1)
    ta = _randomise(torchaudio.models.hubert_pretrain_model(**kwargs))
    ours = from_torchaudio(ta)
    assert isinstance(ours, HubertModel)
    cfg = ours.config
    assert (cfg.num_classes, cfg.final_dim, cfg.mask_span, cfg.feature_grad_mult) == ([10], 8, 10, 0.1)
    assert cfg.mask_prob == pytest.approx(0.08) and cfg.label_frame_shifts == [ours.frame_shift] == [40]
    torch.testing.assert_close(ours.head.label_embeddings, ta.logit_generator.label_embeddings)
    torch.testing.assert_close(ours.head.final_proj.weight, ta.logit_generator.final_proj.weight)
    torch.testing.assert_close(ours.mask_emb, ta.mask_generator.mask_embedding)
    _check_every_layer(ours, lambda w: (ta.wav2vec2.extract_features(w)[0][:-1], ta.wav2vec2(w)[0]))
    # the head scores like torchaudio's LogitGenerator: cosine(final_proj(x), embedding) / 0.1
    x = torch.randn(5, 24)
    with torch.no_grad():
        proj = ta.logit_generator.final_proj(x)
        want = torch.cosine_similarity(proj[:, None], ta.logit_generator.label_embeddings[None], dim=-1) / 0.1
        torch.testing.assert_close(ours.head(x)[0], want, atol=1e-5, rtol=1e-5)


def _hf_hubert() -> transformers.HubertModel:
    torch.manual_seed(0)
    cfg = transformers.HubertConfig(
        hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        conv_dim=[c for c, _, _ in CONV], conv_kernel=[k for _, k, _ in CONV], conv_stride=[s for _, _, s in CONV],
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4)
    return _randomise(transformers.HubertModel(cfg))


def _hf_reference(hf):
    def run(w):
        out = hf(w, output_hidden_states=True)
        return list(out.hidden_states[1:-1]), out.last_hidden_state
    return run


def test_hf_hubert_model_imports_as_hubert():
    hf = _hf_hubert()
    ours = from_hf(hf)
    assert isinstance(ours, HubertModel) and ours.config.num_layers == 2
    torch.testing.assert_close(ours.mask_emb, hf.masked_spec_embed)
    _check_every_layer(ours, _hf_reference(hf))


def test_export_to_hf_hubert_folder_loads_with_from_pretrained(tmp_path):
    torch.manual_seed(0)
    cfg = {**to_dict(hubert_base()), "conv_layers": CONV, "embed_dim": 24, "num_layers": 2, "num_heads": 4,
           "ffn_dim": 48, "pos_conv_kernel": 8, "pos_conv_groups": 4, "label_frame_shifts": [40]}
    ours = _randomise(build_model({"name": "hubert", **cfg}))
    folder = export_hf(ours, tmp_path / "hf")
    hf = transformers.HubertModel.from_pretrained(folder).eval()
    assert hf.config.model_type == "hubert"
    _check_every_layer(ours, _hf_reference(hf))
    # and back: the exported folder loads as an encoder with the same features
    again = load_foreign(folder)
    enc = load_encoder(str(folder))
    wavs, lengths = _padded()
    with torch.no_grad():
        a, b, c = ours.encode(wavs, lengths), again.encode(wavs, lengths), enc(wavs, lengths)
    for x, y in zip(a.hidden_states, b.hidden_states):
        torch.testing.assert_close(x, y)
    torch.testing.assert_close(c.layer("context"), a.layer("context"))
    mel = build_model({"name": "hubert", **to_dict(hubert_base()), "frontend": {"name": "logmel"}, "conv_layers": [],
                       "stack_frames": 2, "num_layers": 1, "label_frame_shifts": [320]}, init_weights=False)
    with pytest.raises(ValueError, match="only waveform-frontend"):
        export_hf(mel, tmp_path / "mel")
