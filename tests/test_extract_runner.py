"""speechssl extract: inputs, formats, index/errors, resume, sharding, CLI."""

from __future__ import annotations

import json
import shutil

import h5py
import kaldiio
import numpy as np
import pytest
import torch

from speechssl.audio import load_audio, save_audio
from speechssl.cli.main import main as cli_main
from speechssl.extract import ExtractConfig, extract_features
from speechssl.upstream import load_encoder
from speechssl.upstream.release import save_released_encoder

SECONDS = {"a": 0.6, "b": 1.9, "c": 3.3, "d": 1.1}


def _tone(seconds: float, freq: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    wavs = root / "wavs"
    for i, (name, sec) in enumerate(SECONDS.items()):
        save_audio(wavs / f"{name}.wav", _tone(sec, 150 + 40 * i, i))
    save_audio(wavs / "spk1" / "tiny.wav", np.zeros(120, np.float32))  # shorter than one frame
    (wavs / "broken.wav").write_bytes(b"RIFF....not audio")
    return root


def _index(out):
    lines = (out / "index.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return header, {r.split("\t")[0]: dict(zip(header, r.split("\t"))) for r in lines[1:]}


def _errors(out):
    return {r.split("\t")[0]: r.split("\t")[2] for r in (out / "errors.tsv").read_text().splitlines()[1:]}


def _reference(enc, path):
    wav = load_audio(path)
    out = enc(wav[None], torch.tensor([wav.numel()]))
    return {n: h[0].numpy() for n, h in zip(out.layer_names, out.hidden_states)}


def test_cli_folder_npy_index_errors_and_rerun(corpus, tmp_path, capsys):
    torch.manual_seed(0)
    from helpers import tiny_model

    model = tiny_model("cpc")
    release = save_released_encoder(model, tmp_path / "enc")
    out = tmp_path / "feats"
    argv = ["extract", "--encoder", str(release), "--input", str(corpus / "wavs"), "--out", str(out),
            "--layers", "context,latent", "--batch-seconds", "4", "--no-progress"]
    assert cli_main(argv) == 0
    assert "extracted 4 utterance(s)" in capsys.readouterr().err
    header, rows = _index(out)
    assert header == ["id", "path", "frames", "frame_rate", "layers", "dim"]
    assert list(rows) == ["a", "b", "c", "d"]  # input order, not batch order
    enc = load_encoder(release, layers="context,latent")
    for utt in rows:
        row = rows[utt]
        assert row["path"] == f"{utt}" and row["frame_rate"] == "100" and row["layers"] == "context,latent"
        assert row["dim"] == "256,128"
        ref = _reference(enc, corpus / "wavs" / f"{utt}.wav")
        for layer in ("context", "latent"):
            got = np.load(out / utt / f"{layer}.npy")
            assert got.shape == ref[layer].shape and int(row["frames"]) == got.shape[0]
            np.testing.assert_allclose(got, ref[layer], atol=1e-5)
    errors = _errors(out)
    assert set(errors) == {"broken", "spk1/tiny"}
    assert "cannot decode" in errors["broken"] and "too short: 120 samples" in errors["spk1/tiny"]
    # a rerun skips everything that is done
    (out / "b" / "context.npy").unlink()  # ... but redoes an utterance whose output is damaged
    assert cli_main(argv) == 0
    assert "extracted 1 utterance(s)" in capsys.readouterr().err and (out / "b" / "context.npy").is_file()
    assert list(_index(out)[1]) == ["a", "b", "c", "d"]
    # another encoder configuration into the same folder is refused
    argv2 = [a if a != "context,latent" else "context" for a in argv]
    assert cli_main(argv2) == 1
    assert "different layers" in capsys.readouterr().err
    # ... and so is the same path after the encoder was released again with other weights
    save_released_encoder(tiny_model("cpc", seed=1), tmp_path / "enc")
    assert cli_main(argv) == 1
    assert "other weights than those of" in capsys.readouterr().err
    # ... or another compute precision
    save_released_encoder(model, tmp_path / "enc")  # the first weights again: resuming is fine
    assert cli_main(argv) == 0
    assert cli_main([*argv, "--precision", "bf16"]) == 1
    assert "different precision" in capsys.readouterr().err


@pytest.mark.parametrize("fmt,dtype", [("pt", "float16"), ("kaldi", "float32"), ("hdf5", "float32")])
def test_formats_match_direct_encoding(corpus, tmp_path, fmt, dtype):
    out = tmp_path / fmt
    cfg = ExtractConfig(layers="all", format=fmt, dtype=dtype, batch_seconds=5, progress=False)
    summary = extract_features("fbank", corpus / "wavs", out, cfg)
    assert (summary.written, summary.failed) == (4, 2)
    enc = load_encoder("fbank")
    _, rows = _index(out)
    tol = 2e-2 if dtype == "float16" else 1e-5
    for utt in SECONDS:
        ref = _reference(enc, corpus / "wavs" / f"{utt}.wav")["features"]
        if fmt == "pt":
            got = torch.load(out / rows[utt]["path"], weights_only=True)["features"]
            assert got.dtype == torch.float16
            got = got.float().numpy()
        elif fmt == "kaldi":
            got = kaldiio.load_scp(str(out / "feats.scp"))[utt]
            np.testing.assert_array_equal(got, kaldiio.load_mat(str(out / rows[utt]["path"])))
        else:
            with h5py.File(out / "feats.h5") as f:
                got = f[utt]["features"][:]
        np.testing.assert_allclose(got, ref, atol=tol, rtol=tol)
    # rerun: nothing to do, and the containers are intact
    again = extract_features("fbank", corpus / "wavs", out, cfg)
    assert (again.written, again.skipped) == (0, 4)


def test_kaldi_resume_truncates_a_half_written_tail(corpus, tmp_path):
    out = tmp_path / "ark"
    cfg = ExtractConfig(format="kaldi", progress=False)
    extract_features("logmel", corpus / "wavs", out, cfg)
    index = (out / "index.tsv").read_text().splitlines()
    # simulate a crash: utterance "a" not committed, garbage appended to the ark
    (out / "index.tsv").write_text("\n".join(line for line in index if not line.startswith("a\t")) + "\n")
    assert not list(out.glob("*.part*.tsv"))  # merged into index.tsv / errors.tsv
    size = (out / "feats.ark").stat().st_size
    with open(out / "feats.ark", "ab") as f:
        f.write(b"a \0BFM garbage")
    summary = extract_features("logmel", corpus / "wavs", out, cfg)
    assert (summary.written, summary.skipped) == (1, 3)
    mats = kaldiio.load_scp(str(out / "feats.scp"))
    assert sorted(mats) == ["a", "b", "c", "d"] and (out / "feats.ark").stat().st_size > size
    ref = _reference(load_encoder("logmel"), corpus / "wavs" / "a.wav")["features"]
    np.testing.assert_allclose(mats["a"], ref, atol=1e-5)


def test_manifest_and_wav_scp_inputs_and_segments(corpus, tmp_path):
    wavs = corpus / "wavs"
    manifest = tmp_path / "m.jsonl"
    recs = [
        {"id": "seg", "path": str(wavs / "c.wav"), "num_samples": int(3.3 * 16000), "sample_rate": 16000,
         "start": 1.0, "duration": 1.5, "emotion": "neu"},
        {"id": "whole", "path": str(wavs / "a.wav"), "num_samples": int(0.6 * 16000), "sample_rate": 16000},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "from_manifest"
    extract_features("logmel", manifest, out, ExtractConfig(progress=False))
    _, rows = _index(out)
    assert rows["seg"]["frames"] == str(1 + (24000 - 400) // 160)
    seg = load_audio(wavs / "c.wav", start=1.0, duration=1.5)
    ref = load_encoder("logmel")(seg[None]).hidden_states[0][0].numpy()
    np.testing.assert_allclose(np.load(out / "seg.npy"), ref, atol=1e-5)
    scp = tmp_path / "wav.scp"
    scp.write_text(f"utt_b {wavs / 'b.wav'}\nutt_d {wavs / 'd.wav'}\n")
    out2 = tmp_path / "from_scp"
    summary = extract_features("logmel", scp, out2, ExtractConfig(progress=False))
    assert summary.written == 2 and list(_index(out2)[1]) == ["utt_b", "utt_d"]
    scp.write_text("utt_x sox in.wav -t wav - |\n")
    with pytest.raises(ValueError, match="pipes are not supported"):
        extract_features("logmel", scp, tmp_path / "x", ExtractConfig(progress=False))


def test_two_ranks_shard_and_rank0_merges(corpus, tmp_path):
    out = tmp_path / "sharded"
    written = []
    for rank in (1, 0):  # rank 0 waits for rank 1's marker, so run rank 1 first
        cfg = ExtractConfig(format="hdf5", rank=rank, world_size=2, progress=False, merge_timeout_minutes=0.2)
        summary = extract_features("logmel", corpus / "wavs", out, cfg)
        written.append(summary.written)
    assert sum(written) == 4 and min(written) >= 1
    _, rows = _index(out)
    assert list(rows) == ["a", "b", "c", "d"]
    files = {r["path"].split(":")[0] for r in rows.values()}
    assert files == {"feats.r0.h5", "feats.r1.h5"}
    with h5py.File(out / "feats.r1.h5") as f1, h5py.File(out / "feats.r0.h5") as f0:
        assert len(f0) + len(f1) == 4
    # balanced by seconds: c (3.3 s) alone on one rank, b + d + a (3.6 s) on the other
    from speechssl.extract.inputs import Item
    from speechssl.extract.runner import shard_items

    shards = shard_items([Item(k, "", v) for k, v in SECONDS.items()], 2)
    assert [sorted(i.id for i in s) for s in shards] == [["c"], ["a", "b", "d"]]
    assert set(_errors(out)) == {"broken", "spk1/tiny"}


def test_a_file_the_model_refuses_fails_alone(corpus, tmp_path):
    """wav2vec 2.0 raises for inputs shorter than its receptive field: only that file fails."""
    from helpers import tiny_model

    release = save_released_encoder(tiny_model("wav2vec2"), tmp_path / "w2v")
    summary = extract_features(release, corpus / "wavs", tmp_path / "out",
                               ExtractConfig(layers="context", batch_seconds=100, progress=False))
    assert (summary.written, summary.failed) == (4, 2)
    assert "receptive field" in _errors(tmp_path / "out")["spk1/tiny"]


def test_batches_fit_the_budget_and_cap_padding():
    from speechssl.extract.encode import Item
    from speechssl.extract.encode import seconds_batches as _batches

    def items(seconds):
        return [Item(id=f"u{i}", path=f"u{i}.wav", seconds=s) for i, s in enumerate(seconds)]

    # equal lengths: only the budget splits
    assert [len(b) for b in _batches(items([5.0] * 10), 20.0)] == [4, 4, 2]
    # 2 s and 15 s clips never share a batch (87 % of it would be padding)
    for batch in _batches(items(sorted([2.0, 2.0, 4.5, 7.0, 9.5, 12.0, 15.0] * 2)), 60.0):
        longest = max(i.seconds for i in batch)
        real = sum(i.seconds for i in batch)
        assert longest * len(batch) <= 60.0
        assert 1 - real / (longest * len(batch)) <= 0.1 + 1e-9
    # max_padding=1 keeps the old budget-only batching
    assert [len(b) for b in _batches(items([1.0, 2.0, 3.0, 4.0]), 100.0, max_padding=1.0)] == [4]


def test_rerun_with_other_chunking_is_refused(corpus, tmp_path):
    """chunk_seconds and overlap_seconds decide the frames of long files: a rerun with other values
    would mix two kinds of features in one folder."""
    out = tmp_path / "feats"
    cfg = ExtractConfig(chunk_seconds=2.0, overlap_seconds=0.5, progress=False)
    assert extract_features("fbank", corpus / "wavs", out, cfg).written == 4
    for key, value in (("chunk_seconds", 3.0), ("overlap_seconds", 1.0)):
        other = ExtractConfig(**{**cfg.__dict__, key: value})
        with pytest.raises(ValueError, match=f"different {key} \\({key}=") as info:
            extract_features("fbank", corpus / "wavs", out, other)
        assert str(out) in str(info.value)
    assert json.loads((out / "extract.json").read_text())["chunk_seconds"] == 2.0  # not overwritten
    assert extract_features("fbank", corpus / "wavs", out, cfg).skipped == 4  # the same values resume


def test_extract_json_records_layer_aliases_and_role(corpus, tmp_path):
    """A feature folder answers for its encoder by itself: which layers are aliases (structurally,
    no value comparison) and its role (no lookup of a released encoder that may have moved)."""
    from helpers import tiny_model

    from speechssl.downstream import open_source

    release = save_released_encoder(tiny_model("cpc", seed=1), tmp_path / "enc", role="control", control_of="cpc_long")
    out = tmp_path / "feats"
    extract_features(str(release), corpus / "wavs", out, ExtractConfig(progress=False))
    meta = json.loads((out / "extract.json").read_text())
    enc = load_encoder(release)
    assert meta["layer_aliases"] == enc.layer_aliases == {"context": "layer_1"}
    assert {k: meta[k] for k in ("role", "control_of", "architecture")} == enc.role_info()
    assert meta["role"] == "control" and meta["control_of"] == "cpc_long"
    shutil.rmtree(release)  # the encoder is gone: the folder alone must tell
    source = open_source(out)
    assert source.layer_aliases() == {"context": "layer_1"}
    described = source.describe()
    assert (described["role"], described["control_of"], described["architecture"]) == (
        "control", "cpc_long", meta["architecture"])
    # a folder written before these keys existed still opens: nothing recorded, nothing to look up
    for key in ("layer_aliases", "role", "control_of", "architecture"):
        del meta[key]
    (out / "extract.json").write_text(json.dumps(meta))
    old = open_source(out)
    assert old.layer_aliases() is None and old.describe()["role"] is None
    assert open_source(out).features([{"id": "a"}]).layer_names == ["latent", "layer_1", "context"]


def test_progress_lines_when_stderr_is_not_a_terminal(corpus, tmp_path, monkeypatch, caplog, capsys):
    import logging

    import speechssl.extract.runner as runner

    monkeypatch.setattr(runner, "PROGRESS_EVERY_SECONDS", 0.0)  # a line after every batch
    caplog.set_level(logging.INFO, logger="speechssl.extract.runner")
    cfg = ExtractConfig(layers="all", batch_seconds=2, progress=True)  # the bar asked for, but stderr is captured
    extract_features("fbank", corpus / "wavs", tmp_path / "out", cfg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("extract[rank 0]: ")]
    total = sum(SECONDS.values())
    assert lines and lines[-1].startswith(f"extract[rank 0]: {total:.1f}/{total:.1f} s of audio (100.0%), ")
    assert "audio-s/s" in lines[-1] and "eta " in lines[-1]
    assert "\r" not in capsys.readouterr().err  # no tqdm bar in a redirected log
