"""`downstream finetune` checkpoints: a run stopped by SIGTERM after step k (the pretraining drill,
``SPEECHSSL_SELF_SIGTERM_AT_STEP``) writes a checkpoint and a rerun resumes it to the same weights
and test predictions as an uninterrupted run; a finished run is reported, not trained again; other
settings are refused (listed) unless --restart; a damaged checkpoint is a one-line error naming
it; a frozen encoder encodes dev once."""

from __future__ import annotations

import logging
import shutil
import signal

import pytest
import torch
from helpers import make_corpus, tiny_model
from safetensors.torch import load_file

from speechssl.cli.main import main
from speechssl.config import ConfigError
from speechssl.data import read_manifest
from speechssl.downstream import downstream_config
from speechssl.downstream.feature_cache import EncoderFeatureCache
from speechssl.downstream.finetune import FinetuneInterrupted, finetune
from speechssl.train import checkpoint as ckpt_io
from speechssl.train.checkpoint import CheckpointError
from speechssl.train.signals import SELF_SIGTERM_ENV
from speechssl.upstream import save_encoder

SETTINGS = {"task": {"label": "speaker"}, "train": {"max_steps": 7, "valid_every": 3, "batch_size": 8},
            "head": {"hidden_dim": 16}, "optim": {"lr": 1e-3}, "finetune": {"encoder_lr": 1e-3, "batch_seconds": 4.0}}


def _cfg(**train):
    return downstream_config({**SETTINGS, "train": {**SETTINGS["train"], **train}})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ftr")
    files = {name: make_corpus(root, n=n, seed=seed, name=name, seconds=(0.5, 0.8))
             for name, n, seed in (("train", 12, 0), ("dev", 6, 1), ("test", 6, 2))}
    paths = {name: read_manifest(path) for name, path in files.items()}
    paths["files"] = files
    paths["encoder"] = save_encoder(tiny_model("wav2vec2"), root / "w2v2")
    paths["root"] = root
    return paths


def _run(corpus, out, cfg=None, **kw):
    return finetune(cfg or _cfg(), corpus["encoder"], corpus["train"], out, dev=corpus["dev"], test=corpus["test"],
                    progress=False, **kw)


@pytest.fixture(scope="module")
def reference(corpus):
    out = corpus["root"] / "reference"
    return out, _run(corpus, out)


def _same_outputs(a, b):
    for name in ("model.safetensors", "encoder/model.safetensors"):
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    assert (a / "predictions_test.tsv").read_text() == (b / "predictions_test.tsv").read_text()


@pytest.mark.parametrize("stop_at", [3, 5])  # at an evaluation; between two (epoch 2, the head's best is older)
def test_stopped_run_resumes_to_the_same_weights_and_predictions(corpus, reference, tmp_path, monkeypatch, caplog,
                                                                 stop_at):
    out = tmp_path / "ft"
    monkeypatch.setenv(SELF_SIGTERM_ENV, str(stop_at))
    with pytest.raises(FinetuneInterrupted, match=f"stopped by SIGTERM at step {stop_at}; checkpoint .*step_0*{stop_at}"
                                                  r"\.pt; rerun the same command to resume"):
        _run(corpus, out)
    assert [p.name for p in ckpt_io.list_checkpoints(out / "checkpoints")] == [f"step_{stop_at:08d}.pt"]
    assert [p.name for p in (out / "checkpoints").glob("best_*")] == ["best_step_00000003.safetensors"]
    assert not (out / "results.json").exists() and not (out / "encoder").exists()
    monkeypatch.delenv(SELF_SIGTERM_ENV)
    with caplog.at_level(logging.INFO, logger="speechssl.downstream.finetune"):
        results = _run(corpus, out)
    assert f"resuming from {out / 'checkpoints' / f'step_{stop_at:08d}.pt'} at step {stop_at}" in caplog.text
    ref_out, ref = reference
    assert results["history"] == ref["history"] and results["test"] == ref["test"]
    assert (results["best_step"], results["steps_run"]) == (ref["best_step"], ref["steps_run"])
    _same_outputs(ref_out, out)


def test_finished_run_is_reported_not_trained_again(corpus, reference, caplog):
    out, ref = reference
    with caplog.at_level(logging.INFO, logger="speechssl.downstream.finetune"):
        again = _run(corpus, out)
    assert "this fine-tuning has finished (best step" in caplog.text and "nothing to do" in caplog.text
    assert again.to_dict() == ref.to_dict()
    assert [p.name for p in ckpt_io.list_checkpoints(out / "checkpoints")] == ["step_00000007.pt"]


def test_other_settings_are_refused_unless_restart(corpus, reference, tmp_path, caplog):
    out = tmp_path / "changed"
    shutil.copytree(reference[0], out)
    with pytest.raises(ConfigError, match=r"step_00000007\.pt was written with other settings \(optim\.lr: 0\.001 -> "
                                          r"0\.002; train\.patience: 10 -> 3\): .*--restart to start over"):
        _run(corpus, out, downstream_config({**SETTINGS, "optim": {"lr": 2e-3}, "train": {**SETTINGS["train"],
                                                                                              "patience": 3}}))
    with pytest.raises(ConfigError, match=r"other settings \(inputs\.dev: "):
        finetune(_cfg(), corpus["encoder"], corpus["train"], out, dev=corpus["dev"][:4], progress=False)
    with caplog.at_level(logging.INFO, logger="speechssl.downstream.finetune"):
        results = _run(corpus, out, _cfg(max_steps=3), restart=True)
    assert "resuming" not in caplog.text and results["steps_run"] == 3
    assert [p.name for p in ckpt_io.list_checkpoints(out / "checkpoints")] == ["step_00000003.pt"]


def test_damaged_checkpoint_is_a_one_line_error_naming_it(corpus, tmp_path, monkeypatch):
    out = tmp_path / "damaged"
    monkeypatch.setenv(SELF_SIGTERM_ENV, "4")
    with pytest.raises(FinetuneInterrupted):
        _run(corpus, out)
    monkeypatch.delenv(SELF_SIGTERM_ENV)
    path = out / "checkpoints" / "step_00000004.pt"
    best = out / "checkpoints" / "best_step_00000003.safetensors"
    data = best.read_bytes()
    best.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        _run(corpus, out)
    assert str(best) in str(err.value) and "\n" not in str(err.value)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as err:
        _run(corpus, out)
    assert str(err.value).startswith(f"{path}: not a readable speechssl checkpoint")
    assert "--restart" in str(err.value) and "\n" not in str(err.value)


def test_cli_stops_on_sigterm_with_a_checkpoint_and_resumes(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    opts = ["downstream", "finetune", "--encoder", str(corpus["encoder"]), "--train", str(corpus["files"]["train"]),
            "--dev", str(corpus["files"]["dev"]), "--label", "speaker", "--out", str(out), "--quiet"]
    overrides = ["train.max_steps=4", "train.valid_every=2", "head.hidden_dim=16", "finetune.batch_seconds=4",
                 "finetune.encoder_lr=1e-3"]
    monkeypatch.setenv(SELF_SIGTERM_ENV, "3")
    assert main(opts + overrides) == 128 + signal.SIGTERM
    assert [p.name for p in ckpt_io.list_checkpoints(out / "checkpoints")] == ["step_00000003.pt"]
    monkeypatch.delenv(SELF_SIGTERM_ENV)
    assert main(opts + overrides) == 0 and "best step" in capsys.readouterr().out
    assert main(opts + overrides + ["train.max_steps=5"]) != 0  # refused: one line naming the change
    assert "train.max_steps: 4 -> 5" in capsys.readouterr().err
    assert main(opts + ["--restart"] + overrides + ["train.max_steps=5"]) == 0
    assert "best step" in capsys.readouterr().out


def test_frozen_encoder_encodes_dev_once(corpus, tmp_path, monkeypatch):
    original, seen = EncoderFeatureCache.features, []

    def features(self, records, *args, **kwargs):
        seen.append((id(self), len(self)))  # which cache, how many utterances it held already
        return original(self, records, *args, **kwargs)

    monkeypatch.setattr(EncoderFeatureCache, "features", features)
    cfg = downstream_config({**SETTINGS, "finetune": {"encoder_lr": 0.0, "batch_seconds": 4.0}})
    finetune(cfg, corpus["encoder"], corpus["train"], tmp_path / "frozen", dev=corpus["dev"], progress=False)
    during = seen[:3]  # evaluations at steps 3, 6, 7; then the final scoring with the exported encoder
    assert len({cache for cache, _ in during}) == 1, "dev was encoded again at every evaluation"
    assert [held for _, held in during] == [0, 6, 6]


def test_a_finetune_checkpoint_given_as_pretraining_one_says_whose_it_is(tmp_path):
    from speechssl.downstream.finetune_checkpoint import FINETUNE_KIND

    path = ckpt_io.save_checkpoint(tmp_path / "step_00000003.pt", {"step": 3}, kind=FINETUNE_KIND)
    with pytest.raises(CheckpointError) as err:
        ckpt_io.load_checkpoint(path)  # e.g. pretrain --init-from a fine-tuning folder
    text = str(err.value)
    assert "a speechssl finetune checkpoint, not a pretraining one" in text and "OUT/encoder" in text
    assert "\n" not in text
    with pytest.raises(CheckpointError, match="not a speechssl pretraining checkpoint"):  # a foreign dict
        torch.save({"kind": "other"}, tmp_path / "foreign.pt")
        ckpt_io.load_checkpoint(tmp_path / "foreign.pt")
