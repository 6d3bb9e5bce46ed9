"""speechssl.upstream.foreign_tables: the config and key tables shared by the importers and the HF exporter."""

from __future__ import annotations

import dataclasses

import pytest

from speechssl.models.wav2vec2 import Wav2Vec2Config, build_wav2vec2
from speechssl.upstream import foreign_tables, hf_export, importers
from speechssl.upstream.foreign_tables import HF_FIELDS, TORCHAUDIO_FIELDS, ForeignCheckpointError


def _distinct_config() -> Wav2Vec2Config:
    """A small config whose every table field differs from both our default and the foreign default."""
    base = Wav2Vec2Config(frontend={"name": "waveform", "normalize": True}, conv_layers=[(16, 10, 5), (16, 3, 2)],
                          embed_dim=24, num_layers=1, num_heads=2, ffn_dim=32, pos_conv_kernel=8, pos_conv_groups=4,
                          num_vars=8, vq_dim=12, final_dim=8)
    changes = {}
    for f in HF_FIELDS:
        value = getattr(base, f.ours)
        if f.ours in ("embed_dim", "num_layers", "num_heads", "ffn_dim", "pos_conv_kernel", "pos_conv_groups",
                      "num_vars", "vq_dim", "final_dim"):
            continue
        changes[f.ours] = (not value) if isinstance(value, bool) else type(value)(value + (1 if isinstance(value, int) else 0.01))
    return dataclasses.replace(base, **changes)


def test_hf_export_then_import_reproduces_every_table_field():
    cfg = _distinct_config()
    exported = hf_export.hf_config(build_wav2vec2(cfg))
    assert {f.theirs for f in HF_FIELDS} <= set(exported)
    back = importers.config_from_hf(exported, {"do_normalize": True})
    for f in HF_FIELDS:
        assert getattr(back, f.ours) == pytest.approx(getattr(cfg, f.ours)), f.ours
    assert back.conv_layers == cfg.conv_layers and back.conv_norm == cfg.conv_norm


def test_torchaudio_table_reads_every_field_and_names_missing_keys():
    value = {int: 4, float: 0.25, bool: True}
    kwargs = {"extractor_mode": "layer_norm", **{f.theirs: value[f.cast] for f in TORCHAUDIO_FIELDS}}
    cfg = importers.config_from_torchaudio_kwargs(kwargs)
    for f in TORCHAUDIO_FIELDS:
        assert getattr(cfg, f.ours) == value[f.cast], f.ours
    required = [f.theirs for f in TORCHAUDIO_FIELDS if f.default is foreign_tables.REQUIRED]
    with pytest.raises(ForeignCheckpointError, match=rf"ta: missing keys \['extractor_mode', '{required[0]}'"):
        importers.config_from_torchaudio_kwargs({}, where="ta")


def test_hf_required_and_badly_typed_keys_are_named():
    hf = {"model_type": "wav2vec2", "conv_dim": [8], "conv_kernel": [10], "conv_stride": [5]}
    with pytest.raises(ForeignCheckpointError, match=r"cfg.json: missing keys \['hidden_size', 'num_hidden_layers'"):
        importers.config_from_hf(hf, where="cfg.json")
    hf.update(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size="many")
    with pytest.raises(ForeignCheckpointError, match="intermediate_size='many' is not a valid int"):
        importers.config_from_hf(hf, where="cfg.json")


def test_importers_and_exporter_share_one_error_class_and_key_table():
    assert importers.ForeignCheckpointError is ForeignCheckpointError
    assert importers.key_table is foreign_tables.key_table is hf_export.key_table
    assert importers.export_hf is hf_export.export_hf
