"""FeatureSource: one protocol for encoders and `speechssl extract` folders; open_source tells them apart."""

from __future__ import annotations

import numpy as np
import pytest

from speechssl.audio import save_audio
from speechssl.downstream import EncoderSource, FeatureSource, PrecomputedSource, open_source
from speechssl.downstream.experiment import run_key
from speechssl.downstream.model import downstream_config
from speechssl.extract import ExtractConfig, extract_features


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    records = []
    for i, sec in enumerate([0.5, 0.9, 1.3]):
        t = np.arange(int(sec * 16000)) / 16000
        path = root / "wavs" / f"u{i}.wav"
        save_audio(path, (0.3 * np.sin(2 * np.pi * (150 + 50 * i) * t)).astype(np.float32))
        records.append({"id": f"u{i}", "path": str(path), "num_samples": t.size, "sample_rate": 16000})
    extract_features("fbank", root / "wavs", root / "feats", ExtractConfig(progress=False))
    return root, records


def test_open_source_tells_feature_folders_from_encoders(audio):
    root, records = audio
    folder = open_source(root / "feats")
    encoder = open_source("fbank")
    assert isinstance(folder, PrecomputedSource) and isinstance(encoder, EncoderSource)
    for source in (folder, encoder):
        assert isinstance(source, FeatureSource)
    assert folder.spec == "fbank"  # from extract.json
    a, b = folder.features(records), encoder.features(records)
    assert a.ids == b.ids and a.layer_names == b.layer_names == ["features"] and a.frame_shift == b.frame_shift
    for x, y in zip(a.feats, b.feats):
        np.testing.assert_allclose(x[0].numpy(), y[0].numpy(), atol=1e-5)
    assert folder.describe()["features"] == str((root / "feats").resolve()) and encoder.describe()["features"] is None
    # an explicit --features DIR names its encoder by the first argument
    named = open_source("my-fbank", root / "feats", features_in_memory="never")
    assert isinstance(named, PrecomputedSource) and named.spec == "my-fbank" and named.lazy is True
    cfg = downstream_config({})
    keys = {run_key(s, {"train": records}, cfg, {"name": "x"}, "speaker") for s in (folder, encoder, named)}
    assert len(keys) == 3
    # head training does not read the finetune section: its settings leave finished runs reusable
    tuned = downstream_config({"finetune": {"encoder_lr": 3e-4, "freeze": ["feature_encoder"]}})
    assert run_key(encoder, {"train": records}, tuned, {"name": "x"}, "speaker") == run_key(
        encoder, {"train": records}, cfg, {"name": "x"}, "speaker")
    assert run_key(encoder, {"train": records}, downstream_config({"optim": {"lr": 0.5}}), {"name": "x"},
                   "speaker") not in keys  # the sections it does read still count


def test_open_source_errors(audio, tmp_path):
    root, _ = audio
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "extract.json").write_text((root / "feats" / "extract.json").read_text())
    with pytest.raises(ValueError, match="extract` folder without index.tsv"):
        open_source(unfinished)
    with pytest.raises(ValueError, match="features_in_memory: expected auto, always or never"):
        open_source(root / "feats", features_in_memory="sometimes")
    with pytest.raises(ValueError, match="give an encoder"):
        open_source(None)
    with pytest.raises(ValueError, match="encode.dtype: expected one of float32"):
        open_source("fbank", dtype="int8")
