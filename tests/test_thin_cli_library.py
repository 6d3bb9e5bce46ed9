"""The logic behind `manifest merge/split/info` and `downstream train/label-efficiency` lives in
library functions that tests (and users) call directly; the CLI only parses arguments."""

from __future__ import annotations

import argparse

import pytest
import torch
from corpus_fixtures import make_iemocap, make_librispeech
from safetensors.torch import load_file

from speechssl.cli import corpus as corpus_cli
from speechssl.cli.main import main
from speechssl.corpora import CORPORA, prepare_corpus
from speechssl.corpora.librispeech import prepare_librispeech
from speechssl.data import (
    ManifestError,
    export_manifest,
    format_summary,
    import_manifest,
    manifest_summary,
    merge_manifests,
    read_kaldi_dir,
    read_manifest,
    read_tsv,
    split_manifest,
    write_kaldi_dir,
    write_tsv,
)
from speechssl.data import write_manifest as write
from speechssl.downstream import stratified_split
from speechssl.downstream.protocols import label_efficiency_splits, parse_encoder_list, superb_splits
from speechssl.models.wav2vec2 import Wav2Vec2Config, build_wav2vec2
from speechssl.registry import UnknownNameError
from speechssl.upstream import save_encoder
from speechssl.upstream.hf_export import export_hf
from speechssl.upstream.hf_export_encoder import export_hf_encoder


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


def test_import_and_export_manifest_pick_the_format_in_the_library(tmp_path, capsys):
    """`manifest import` / `export` are `import_manifest` / `export_manifest(fmt, ...)`: format
    choice, tsv-only options and empty sources are handled in the library."""
    recs = _tones(tmp_path, n=3)
    write_tsv(recs, tmp_path / "train.tsv")
    (tmp_path / "train.wrd").write_text("a\nb\nc\n")
    got = import_manifest("tsv", tmp_path / "train.tsv", tmp_path / "tsv.jsonl", label_files={"text": tmp_path / "train.wrd"})
    assert got == read_manifest(tmp_path / "tsv.jsonl") == read_tsv(tmp_path / "train.tsv", label_files={"text": tmp_path / "train.wrd"})
    assert [r["text"] for r in got] == ["a", "b", "c"]
    write_kaldi_dir(recs, tmp_path / "kaldi")
    got = import_manifest("kaldi", tmp_path / "kaldi", tmp_path / "kaldi.jsonl")
    assert got == read_manifest(tmp_path / "kaldi.jsonl") == read_kaldi_dir(tmp_path / "kaldi")
    with pytest.raises(ValueError, match="--labels/--sample-rate apply to --from tsv only"):
        import_manifest("kaldi", tmp_path / "kaldi", tmp_path / "no.jsonl", sample_rate=16000)
    (tmp_path / "empty.tsv").write_text(f"{tmp_path}\n")
    with pytest.raises(ValueError, match=r"empty\.tsv: no entries"):
        import_manifest("tsv", tmp_path / "empty.tsv", tmp_path / "no.jsonl")
    with pytest.raises(ValueError, match="unknown manifest format 'scp'; choices: kaldi, tsv"):
        import_manifest("scp", tmp_path / "kaldi", tmp_path / "no.jsonl")  # type: ignore[arg-type]
    assert not (tmp_path / "no.jsonl").exists()
    # export is the mirror call; export then import gives the records back
    assert export_manifest("kaldi", tmp_path / "kaldi.jsonl", tmp_path / "kaldi2") == got
    assert import_manifest("kaldi", tmp_path / "kaldi2", tmp_path / "kaldi2.jsonl") == got
    assert [r["path"] for r in export_manifest("tsv", tmp_path / "tsv.jsonl", tmp_path / "out" / "t.tsv", root=tmp_path)] == [
        r["path"] for r in recs]
    assert (tmp_path / "out" / "t.tsv").read_text().splitlines()[0] == str(tmp_path)
    with pytest.raises(ValueError, match="unknown manifest format 'scp'"):
        export_manifest("scp", tmp_path / "kaldi.jsonl", tmp_path / "no")  # type: ignore[arg-type]
    # the verbs are those calls
    assert main(["manifest", "export", "--to", "kaldi", str(tmp_path / "kaldi.jsonl"), "--out", str(tmp_path / "k3")]) == 0
    assert (tmp_path / "k3" / "wav.scp").read_text() == (tmp_path / "kaldi2" / "wav.scp").read_text()
    assert main(["manifest", "import", "--from", "kaldi", str(tmp_path / "kaldi"), "--out", str(tmp_path / "cli.jsonl")]) == 0
    assert read_manifest(tmp_path / "cli.jsonl") == read_manifest(tmp_path / "kaldi.jsonl")
    assert "wrote" in capsys.readouterr().out


def test_corpus_registry_lists_choices_and_checks_each_corpus_options(tmp_path, capsys):
    assert list(CORPORA) == ["librispeech", "iemocap", "voxceleb1", "generic"]
    with pytest.raises(UnknownNameError, match="unknown corpus 'timit'; choices: generic, iemocap, librispeech, voxceleb1"):
        prepare_corpus("timit", tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match=r"generic corpus needs --labels FILE"):
        prepare_corpus("generic", tmp_path, tmp_path / "out")
    iemocap = make_iemocap(tmp_path / "iemocap")
    with pytest.raises(ValueError, match="corpus 'iemocap' takes no option subsets; its options: none"):
        prepare_corpus("iemocap", iemocap, tmp_path / "out", subsets=["dev-clean"])
    assert not (tmp_path / "out").exists()
    libri = make_librispeech(tmp_path / "libri")
    written = prepare_corpus("librispeech", libri, tmp_path / "lib", subsets=["train-clean-100"], split_file=None)
    ref = prepare_librispeech(libri, tmp_path / "ref", subsets=["train-clean-100"])
    assert list(written) == list(ref) == ["train-clean-100"]  # None options are "not given"
    assert read_manifest(written["train-clean-100"]) == read_manifest(ref["train-clean-100"])
    # the CLI's choices are the registry, and the verb is one prepare_corpus call
    parser = argparse.ArgumentParser()
    corpus_cli.add_arguments(parser)
    assert next(a for a in parser._actions if a.dest == "corpus").choices == list(CORPORA)
    assert main(["corpus", "iemocap", str(iemocap), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "all.jsonl").is_file() and "wrote all: " in capsys.readouterr().out


def test_export_hf_encoder_loads_checks_and_exports(tmp_path, capsys):
    """`export hf` is `export_hf_encoder(encoder, out)`: the same folder as export_hf of the model."""
    torch.manual_seed(0)
    model = build_wav2vec2(Wav2Vec2Config(conv_layers=[(16, 10, 5), (16, 3, 2)], embed_dim=24, num_layers=2,
                                          num_heads=4, ffn_dim=48, pos_conv_kernel=8, pos_conv_groups=4,
                                          num_vars=8, vq_dim=16, final_dim=12)).eval()
    release = save_encoder(model, tmp_path / "release")
    export_hf(model, tmp_path / "ref")
    assert export_hf_encoder(release, tmp_path / "hf") == tmp_path / "hf"
    for name in ("config.json", "preprocessor_config.json"):
        assert (tmp_path / "hf" / name).read_text() == (tmp_path / "ref" / name).read_text()
    ours, ref = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "ref" / "model.safetensors")
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)
    with pytest.raises(ValueError, match="logmel: hf export needs a wav2vec 2.0 or HuBERT encoder, got "):
        export_hf_encoder("logmel", tmp_path / "no")
    assert not (tmp_path / "no").exists()
    assert main(["export", "hf", "--encoder", str(release), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "config.json").read_text() == (tmp_path / "ref" / "config.json").read_text()
    assert f"wrote {tmp_path / 'cli'}" in capsys.readouterr().err
