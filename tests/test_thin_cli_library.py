"""The logic behind `manifest merge/split/info` and `downstream train/label-efficiency` lives in
library functions that tests (and users) call directly; the CLI only parses arguments."""

from __future__ import annotations

import pytest

from speechssl.cli.main import main
from speechssl.data import (
    ManifestError,
    format_summary,
    manifest_summary,
    merge_manifests,
    read_manifest,
    split_manifest,
)
from speechssl.data import write_manifest as write
from speechssl.downstream import stratified_split
from speechssl.downstream.protocols import label_efficiency_splits, parse_encoder_list, superb_splits


def _recs(ids, speaker="s0", emotion=None):
    return [{"id": i, "path": f"/data/{i}.wav", "num_samples": 16000, "sample_rate": 16000, "speaker": speaker,
             "emotion": emotion or "ab"[n % 2]} for n, i in enumerate(ids)]


def test_merge_manifests(tmp_path):
    a, b = write(_recs(["a1", "a2"]), tmp_path / "a.jsonl"), write(_recs(["b1"], "s1"), tmp_path / "b.jsonl")
    merged = merge_manifests([a, b], tmp_path / "all.jsonl")
    assert [r["id"] for r in merged] == [r["id"] for r in read_manifest(tmp_path / "all.jsonl")] == ["a1", "a2", "b1"]
    with pytest.raises(ManifestError, match=r"id 'a1' is in both .*a\.jsonl and .*a\.jsonl"):
        merge_manifests([a, a], tmp_path / "twice.jsonl")
    assert not (tmp_path / "twice.jsonl").exists()
    # the CLI prints the same result as before
    assert main(["manifest", "merge", str(a), str(b), "--out", str(tmp_path / "cli.jsonl")]) == 0
    assert read_manifest(tmp_path / "cli.jsonl") == read_manifest(tmp_path / "all.jsonl")


def test_split_manifest_and_format_summary(tmp_path, capsys):
    src = write(_recs([f"u{i}" for i in range(10)]), tmp_path / "all.jsonl")
    parts = split_manifest(src, tmp_path / "out", {"train": 0.8, "test": 0.2}, seed=3)
    assert {k: len(v[1]) for k, v in parts.items()} == {"train": 8, "test": 2}
    assert read_manifest(parts["test"][0]) == parts["test"][1]
    text = format_summary(manifest_summary(read_manifest(src)), "all.jsonl")
    assert text.splitlines()[0] == "all.jsonl: 10 utterances, 0.003 h"
    assert "  emotion: 2 distinct: a x5, b x5" in text.splitlines()


def test_superb_splits(tmp_path):
    data = write(_recs([f"u{i}" for i in range(20)]), tmp_path / "all.jsonl")
    fractions = {"train": 0.5, "dev": 0.25, "test": 0.25}
    splits, protocol = superb_splits("emotion", 0, data=data, fractions=fractions)
    assert splits == stratified_split(read_manifest(data), "emotion", fractions, seed=0)  # as the CLI did
    assert sum(map(len, splits.values())) == 20 and all(splits.values())
    assert protocol["name"] == "superb" and protocol["split"]["from"] == str(data.resolve())
    splits, protocol = superb_splits("emotion", 0, train=data, dev_fraction=0.2)
    assert len(splits["dev"]) == 4 and splits["test"] == [] and set(protocol["manifests"]) == {"train"}
    with pytest.raises(ValueError, match="either --data"):
        superb_splits("emotion", data=data, train=data)
    with pytest.raises(ValueError, match="--train"):
        superb_splits("emotion")


def test_label_efficiency_splits_and_encoder_lists():
    pool = _recs([f"u{i}" for i in range(12)])
    rest, dev = label_efficiency_splits(pool, "emotion", dev_per_class=2)
    assert len(dev) == 4 and len(rest) == 8 and not {r["id"] for r in dev} & {r["id"] for r in rest}
    assert label_efficiency_splits(pool, "emotion", dev_per_class=2) == (rest, dev)  # the same for every run
    assert label_efficiency_splits(pool, "emotion") == (pool, [])
    assert parse_encoder_list("logmel, apc=exp/apc/encoder") == {"logmel": "logmel", "apc": "exp/apc/encoder"}
    with pytest.raises(ValueError, match="'logmel' is given twice"):
        parse_encoder_list("logmel,logmel")


def _tones(tmp_path, n=8):
    import numpy as np

    from speechssl.audio import save_audio

    recs = []
    for i in range(n):
        t = np.arange(8000) / 16000
        path = tmp_path / "wavs" / f"u{i}.wav"
        save_audio(path, (0.3 * np.sin(2 * np.pi * (150 if i % 2 else 400) * t)).astype(np.float32))
        recs.append({"id": f"u{i}", "path": str(path), "num_samples": t.size, "sample_rate": 16000, "pitch": "lh"[i % 2]})
    return recs


def test_label_efficiency_and_superb_take_feature_folders_and_encoders_alike(tmp_path, capsys):
    """No index.tsv probing in the CLI: open_source tells a feature folder from an encoder, for a
    NAME=PATH of --encoders as for --features."""
    from speechssl.downstream import label_efficiency, load_downstream_config, superb
    from speechssl.extract import ExtractConfig, extract_features

    recs = _tones(tmp_path)
    pool, test = write(recs[:6], tmp_path / "pool.jsonl"), write(recs[6:], tmp_path / "test.jsonl")
    feats = tmp_path / "feats"
    extract_features("fbank", tmp_path / "wavs", feats, ExtractConfig(progress=False))
    cfg = load_downstream_config(None, ["train.max_steps=2", "head.name=linear_probe"], label="pitch")
    assert cfg.task.label == "pitch" and cfg.train.max_steps == 2
    with pytest.raises(ValueError, match="no label field: pass --label FIELD"):
        load_downstream_config(None, [])
    result = label_efficiency(cfg, parse_encoder_list(f"fbank,folder={feats}"), pool, test, tmp_path / "le",
                              shots=[1], seeds=[0], progress=False)
    assert result.encoders["folder"]["features"] == str(feats.resolve()) and result.encoders["folder"]["spec"] == "fbank"
    assert result.encoders["fbank"]["features"] is None
    assert result.curves["folder"] == result.curves["fbank"]  # the same features either way
    res = superb(cfg, tmp_path / "sup", features=feats, train=pool, test=test, progress=False)
    assert res.encoder["features"] == str(feats.resolve())
    # the verb is that call: the same table from the CLI
    assert main(["downstream", "label-efficiency", "--encoders", f"fbank,folder={feats}", "--train", str(pool),
                 "--test", str(test), "--label", "pitch", "--shots", "1", "--seeds", "1", "--out",
                 str(tmp_path / "le_cli"), "--quiet", "train.max_steps=2", "head.name=linear_probe"]) == 0
    assert (tmp_path / "le_cli" / "label_efficiency.md").read_text() == (tmp_path / "le" / "label_efficiency.md").read_text()
