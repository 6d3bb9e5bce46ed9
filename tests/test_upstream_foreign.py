"""load_encoder on a torchaudio wav2vec 2.0 folder (via importers.load_foreign; the Hugging Face
folder path goes through the same call and is tested by the importer's own tests)."""

from __future__ import annotations

import json

import pytest
import torch
import torchaudio
from safetensors.torch import save_file

from speechssl.upstream import load_encoder

TA_KWARGS = dict(
    extractor_mode="group_norm", extractor_conv_layer_config=[(32, 10, 5), (32, 3, 2), (32, 2, 2)],
    extractor_conv_bias=False, encoder_embed_dim=48, encoder_projection_dropout=0.0, encoder_pos_conv_kernel=16,
    encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=4, encoder_attention_dropout=0.0,
    encoder_ff_interm_features=96, encoder_ff_interm_dropout=0.0, encoder_dropout=0.0,
    encoder_layer_norm_first=False, encoder_layer_drop=0.0, aux_num_out=None,
)


@pytest.fixture(scope="module")
def torchaudio_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = torchaudio.models.wav2vec2_model(**TA_KWARGS).eval()
    folder = tmp_path_factory.mktemp("ta_w2v")
    (folder / "config.json").write_text(json.dumps(TA_KWARGS))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder, model


def test_torchaudio_folder_matches_torchaudio_and_batches(torchaudio_folder):
    folder, model = torchaudio_folder
    enc = load_encoder(folder)
    assert enc.kind == "foreign" and enc.layer_names == ["latent", "layer_1", "layer_2", "context"]
    g = torch.Generator().manual_seed(0)
    a, b = 0.1 * torch.randn(16000, generator=g), 0.1 * torch.randn(2500, generator=g)
    with torch.no_grad():
        ref, _ = model.extract_features(a[None])
    single = enc(a)
    for ours, theirs in zip(single.hidden_states[1:3], ref):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    wavs = torch.zeros(2, 16000)
    wavs[0], wavs[1, :2500] = a, b
    batch = enc(wavs, torch.tensor([16000, 2500]))
    short = enc(b)
    n = int(short.lengths[0])
    assert int(batch.lengths[1]) == n
    for hb, hs in zip(batch.hidden_states, short.hidden_states):
        torch.testing.assert_close(hb[1, :n], hs[0], atol=1e-5, rtol=0)


def test_folder_that_is_nothing_known(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a speechssl release.*nor a torchaudio/Hugging Face model folder"):
        load_encoder(tmp_path)
