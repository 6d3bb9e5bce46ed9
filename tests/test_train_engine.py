"""Pretraining engine, in process: outputs, checkpoints, exact resume, NaN guard, limits, errors."""

from __future__ import annotations

import errno
import json
import logging
import math

import pytest
import torch
import yaml
from helpers import CRASH, make_corpus, recipe

import speechssl.accel as accel
from speechssl.config import ConfigError
from speechssl.train import checkpoint as ckpt_io
from speechssl.train.batches import micro_batch_stream
from speechssl.train.config import load_pretrain_config
from speechssl.train.optim import LRFactor
from speechssl.train.trainer import Trainer, TrainingError, _refuse_other_model, pretrain
from speechssl.upstream.release import load_released_model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return make_corpus(root, n=12, short=2), make_corpus(root, n=4, name="dev", seed=1)


def run(tmp_path, corpus, overrides=(), exp="exp", init_from=None, **sections):
    cfg = load_pretrain_config(recipe(tmp_path, **sections), list(overrides))
    return pretrain(cfg, corpus[0], corpus[1], tmp_path / exp, init_from=init_from)


def final_state(exp):
    return ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(exp / "checkpoints"))


def test_outputs_checkpoint_contents_and_keep_last(tmp_path, corpus, caplog):
    caplog.set_level(logging.INFO)
    res = run(tmp_path, corpus, ["train.keep_last=2", "train.ckpt_every_steps=1"])
    exp = tmp_path / "exp"
    assert res.status == "finished" and res.step == 6 and res.dropped == {"too_short": 2}
    assert "dropped 2 shorter than" in caplog.text
    # keep_last: only the 2 newest of 6 checkpoints remain, no temporary files
    assert [p.name for p in (exp / "checkpoints").iterdir()] == sorted(["step_00000005.pt", "step_00000006.pt"]) or \
        sorted(p.name for p in (exp / "checkpoints").iterdir()) == ["step_00000005.pt", "step_00000006.pt"]
    ck = torch.load(exp / "checkpoints" / "step_00000006.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "rng", "sampler", "step", "config",
                "format_version", "speechssl_version", "model_name"):
        assert key in ck, key
    assert ck["step"] == 6 and ck["model_name"] == "toy_linear" and ck["config"]["train"]["keep_last"] == 2
    assert set(ck["rng"][0]) == {"python", "numpy", "torch_cpu", "torch_cuda"}
    assert ck["sampler"]["epoch"] >= 1 and "consumed" in ck["sampler"]
    assert int(ck["model"]["last_step"]) == 6  # step_update was called after every step
    info = yaml.safe_load((exp / "config.yaml").read_text())
    assert info["model"]["name"] == "toy_linear" and info["info"]["world_size"] == 1
    assert info["info"]["effective_batch_seconds"] == pytest.approx(1.0)
    assert len(info["info"]["manifests"]["train"]["sha256"]) == 64 and "git_revision" in info["info"]
    assert info["info"]["torch_version"] == str(torch.__version__)
    assert info["info"]["cpu_kernels"]["isa"] == str(torch.backends.cpu.get_cpu_capability())
    assert set(info["info"]["cpu_kernels"]["pinned"]) <= set(accel.KERNEL_PINS)
    lines = [json.loads(x) for x in (exp / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["split"] == "train"]
    assert [x["step"] for x in train] == [1, 2, 3, 4, 5, 6]
    for key in ("epoch", "lr", "loss", "mse", "frames", "seconds_per_second"):
        assert key in train[0]
    assert [x["step"] for x in lines if x["split"] == "valid"] == [0, 3, 6]  # step 0: the untrained model
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(exp / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events.Scalars("valid/mse")] == [0, 3, 6]
    assert (exp / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    enc = load_released_model(exp / "encoder")
    torch.testing.assert_close(enc.state_dict()["enc.weight"], ck["model"]["enc.weight"])
    # rerunning the finished command resumes at the end and does nothing more
    again = run(tmp_path, corpus, ["train.keep_last=2", "train.ckpt_every_steps=1"])
    assert again.step == 6 and len(list((exp / "metrics.jsonl").read_text().splitlines())) == len(lines) + 1


def test_resume_after_crash_is_exact(tmp_path, corpus):
    # accumulation 2 (1.0 s per step, 0.5 s per forward), steps cross epochs, the model draws noise
    sections = {"data": {"device_batch_seconds": 0.5}, "train": {"max_steps": 7}}
    ref = run(tmp_path, corpus, exp="ref", **sections)
    CRASH.update(after=8, calls=0)  # the 9th training forward (step 5) raises
    try:
        with pytest.raises(RuntimeError, match="injected crash"):
            run(tmp_path, corpus, exp="crashed", **sections)
    finally:
        CRASH.update(after=None, calls=0)
    assert ckpt_io.latest_checkpoint(tmp_path / "crashed" / "checkpoints").name == "step_00000003.pt"
    resumed = run(tmp_path, corpus, exp="crashed", **sections)
    assert ref.step == resumed.step == 7
    a, b = final_state(tmp_path / "ref"), final_state(tmp_path / "crashed")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["sampler"] == b["sampler"]
    steps = [json.loads(x)["step"] for x in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["split"] == "train"]
    assert steps == list(range(1, 8))  # lines after the checkpoint were redone, not duplicated


def test_resume_with_more_steps_uses_the_new_schedule(tmp_path, corpus):
    run(tmp_path, corpus, ["train.max_steps=3", "train.valid_every=0"])
    res = run(tmp_path, corpus, ["train.max_steps=6", "train.valid_every=0"])
    assert res.step == 6
    lines = map(json.loads, (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines())
    lrs = {x["step"]: x["lr"] for x in lines if x["split"] == "train"}
    assert lrs[4] == pytest.approx(1e-2 * LRFactor("cosine", 2, 6, 0.0)(3))
    assert lrs[2] == pytest.approx(1e-2)  # before the resume: warm-up end


def test_nan_guard_skips_and_logs_ids_then_stops(tmp_path, corpus, caplog):
    caplog.set_level(logging.WARNING)
    res = run(tmp_path, corpus, ["model.nan_ids=[train_003]"], exp="some_nan")
    assert res.status == "finished" and res.step == 6
    skipped = [json.loads(x) for x in (tmp_path / "some_nan" / "metrics.jsonl").read_text().splitlines()
               if json.loads(x)["split"] == "skipped"]
    assert skipped and all("train_003" in s["ids"] for s in skipped)
    assert "train_003" in caplog.text and "non-finite loss" in caplog.text
    assert all(torch.isfinite(v).all() for v in final_state(tmp_path / "some_nan")["model"].values())
    ids = "[" + ",".join(f"train_{i:03d}" for i in range(12)) + "]"
    with pytest.raises(TrainingError, match="3 consecutive steps skipped"):
        run(tmp_path, corpus, [f"model.nan_ids={ids}", "train.max_bad_steps=3"], exp="all_nan")


def test_unreadable_file_is_left_out_of_its_batch(tmp_path, caplog):
    # it costs its own place in the batch (warned once), not the step: the others still train
    train = make_corpus(tmp_path / "data", n=8)
    (tmp_path / "data" / "train_002.wav").write_bytes(b"not audio at all")
    caplog.set_level(logging.WARNING)
    cfg = load_pretrain_config(recipe(tmp_path), ["train.max_steps=8", "train.valid_every=0"])
    res = pretrain(cfg, train, None, tmp_path / "exp")
    assert res.status == "finished" and res.step == 8
    records = [json.loads(x) for x in (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in records if r["split"] == "skipped"]
    assert caplog.text.count("training: leaving out an unreadable file") == 1 and "train_002.wav" in caplog.text


def test_resume_names_each_changed_setting(tmp_path, corpus, caplog):
    run(tmp_path, corpus)
    caplog.set_level(logging.INFO)
    run(tmp_path, corpus, ["train.max_steps=8", "optim.lr=1e-3"])
    assert ("resuming with changed settings (the new values apply): optim.lr: 0.01 -> 0.001; "
            "train.max_steps: 6 -> 8") in caplog.text


def test_setup_error_leaves_no_empty_experiment_folder(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "path":\n')
    cfg = load_pretrain_config(recipe(tmp_path), ["train.max_steps=2"])
    with pytest.raises(ValueError, match="bad.jsonl:1: bad JSON"):
        pretrain(cfg, bad, None, tmp_path / "exp")
    assert not (tmp_path / "exp").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made is theirs: kept
    with pytest.raises(ValueError):
        pretrain(cfg, bad, None, tmp_path / "mine")
    assert (tmp_path / "mine").is_dir()


def test_every_file_missing_stops_with_advice_on_paths(tmp_path):
    # e.g. a manifest moved away from its audio: the advice is about paths, not learning rates
    train = make_corpus(tmp_path / "data", n=8)
    for wav in (tmp_path / "data").glob("*.wav"):
        wav.unlink()
    cfg = load_pretrain_config(recipe(tmp_path), ["train.max_steps=20", "train.valid_every=0",
                                                  "train.max_bad_steps=3"])
    with pytest.raises(TrainingError) as err:
        pretrain(cfg, train, None, tmp_path / "exp")
    message = str(err.value)
    assert "3 consecutive steps skipped (last: load_error) at step 0; no checkpoint yet." in message
    assert "audio failed to load, e.g. " in message and "file not found" in message
    assert "check the manifest's paths" in message and "optim.lr" not in message


def test_unreadable_validation_file_is_left_out_every_time(tmp_path, caplog):
    # a bad file in --valid used to stop training at the first validation, losing every step since
    # the last checkpoint; it is left out instead (warned once), and a batch of bad files only is skipped
    train = make_corpus(tmp_path / "data", n=8)
    valid = make_corpus(tmp_path / "data", n=6, seed=1, name="dev")
    (tmp_path / "data" / "dev_001.wav").write_bytes(b"not audio at all")
    caplog.set_level(logging.WARNING)
    cfg = load_pretrain_config(recipe(tmp_path), ["train.max_steps=4", "train.valid_every=2",
                                                  "data.max_batch_seconds=1.0"])
    res = pretrain(cfg, train, valid, tmp_path / "exp")
    assert res.status == "finished" and res.step == 4
    losses = [json.loads(x)["loss"] for x in (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["split"] == "valid"]
    assert len(losses) >= 2 and all(math.isfinite(v) for v in losses)
    assert caplog.text.count("validation: leaving out an unreadable file") == 1 and "dev_001.wav" in caplog.text
    caplog.clear()
    only_bad = tmp_path / "data" / "bad.jsonl"
    only_bad.write_text(valid.read_text().splitlines()[1] + "\n")
    res = pretrain(cfg, train, only_bad, tmp_path / "exp2")
    assert res.status == "finished" and caplog.text.count("validation: skipping a batch") == 1


def test_max_minutes_stops_with_checkpoint_and_encoder(tmp_path, corpus):
    res = run(tmp_path, corpus, ["train.max_minutes=1e-6", "train.max_steps=1000", "train.log_every=50"])
    assert res.status == "time_limit" and 1 <= res.step < 1000
    assert res.checkpoint.is_file() and (res.encoder_dir / "model.safetensors").is_file()
    lines = [json.loads(x) for x in (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["split"] == "train"][-1] == res.step  # partial window flushed
    timed = run(tmp_path, corpus, ["train.ckpt_every_steps=null", "train.ckpt_every_minutes=1e-9",
                                   "train.keep_last=10", "train.max_steps=3"], exp="timed")
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path / "timed" / "checkpoints")] == [
        f"step_0000000{i}.pt" for i in (1, 2, 3)] and timed.status == "finished"


def test_full_disk_keeps_previous_checkpoint(tmp_path, corpus, monkeypatch):
    real_save = torch.save

    def save_fills_disk(obj, path, *a, **k):
        if obj["step"] == 6:
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(ckpt_io.torch, "save", save_fills_disk)
    with pytest.raises(OSError, match="No space left.*intact"):
        run(tmp_path, corpus)
    folder = tmp_path / "exp" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step_00000003.pt"]  # no partial/temporary file
    assert ckpt_io.load_checkpoint(folder / "step_00000003.pt")["step"] == 3
    monkeypatch.setattr(ckpt_io.torch, "save", real_save)
    assert run(tmp_path, corpus).step == 6


def test_init_from_and_checkpoint_errors(tmp_path, corpus):
    run(tmp_path, corpus, ["train.max_steps=2"], exp="src")
    cfg = load_pretrain_config(recipe(tmp_path), [])
    src_weights = final_state(tmp_path / "src")["model"]
    for source in (tmp_path / "src" / "encoder", tmp_path / "src" / "checkpoints" / "step_00000002.pt", tmp_path / "src"):
        trainer = Trainer(cfg, corpus[0], None, tmp_path / f"init_{source.name}", init_from=source)
        try:
            torch.testing.assert_close(trainer.model.state_dict()["out.bias"], src_weights["out.bias"])
            assert trainer.step == 0 and not trainer.optimizer.state  # weights only
        finally:
            trainer.close()
    bigger = load_pretrain_config(recipe(tmp_path), ["model.hidden=4"])
    with pytest.raises(ckpt_io.CheckpointError, match=r"tensors have other shapes .*\(model \[") as err:
        Trainer(bigger, corpus[0], None, tmp_path / "x", init_from=tmp_path / "src" / "encoder")
    assert "\n" not in str(err.value)  # one line, not torch's list of every mismatch
    # the same exp folder with another model config refuses to resume
    with pytest.raises(ConfigError, match="different model config.*hidden"):
        pretrain(bigger, corpus[0], None, tmp_path / "src")
    (tmp_path / "src" / "config.yaml").unlink()  # the checkpoint's own config is checked too
    with pytest.raises(ConfigError, match="different model config.*hidden"):
        pretrain(bigger, corpus[0], None, tmp_path / "src")
    # a field added to the family since the checkpoint (saved config lacks it) is accepted
    _refuse_other_model({"name": "toy_linear", "frame": 16}, {"name": "toy_linear", "frame": 16, "new": 1}, "x")
    with pytest.raises(ConfigError, match="differs in: frame"):
        _refuse_other_model({"name": "toy_linear", "frame": 16}, {"name": "toy_linear", "frame": 8}, "x")
    good = tmp_path / "src" / "checkpoints" / "step_00000002.pt"
    with pytest.raises(ckpt_io.CheckpointError, match="holds model 'toy_linear'.*'apc'"):
        ckpt_io.load_checkpoint(good, expect_model="apc")
    state = torch.load(good, weights_only=True)
    state["format_version"] = 99
    torch.save(state, tmp_path / "future.pt")
    with pytest.raises(ckpt_io.CheckpointError, match="format_version 99 is newer"):
        ckpt_io.load_checkpoint(tmp_path / "future.pt")


def test_short_only_manifest_and_precision(tmp_path, corpus):
    shorts = make_corpus(tmp_path / "short", n=0, short=3)
    cfg = load_pretrain_config(recipe(tmp_path), [])
    with pytest.raises(ValueError, match="short.jsonl|train.jsonl"):
        pretrain(cfg, shorts, None, tmp_path / "e1")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        pretrain(load_pretrain_config(recipe(tmp_path), ["train.precision=fp16"]), corpus[0], None, tmp_path / "e2")
    with pytest.raises(ValueError, match="label_fields.*emotion"):
        pretrain(load_pretrain_config(recipe(tmp_path), ["data.label_fields=[emotion]"]), corpus[0], None,
                 tmp_path / "e3")
    labelled = Trainer(load_pretrain_config(recipe(tmp_path), ["data.label_fields=[speaker]"]), corpus[0], None,
                       tmp_path / "e4")
    try:
        batch = next(micro_batch_stream(labelled.train_loader, labelled.min_samples))
        assert len(batch["speaker"]) == len(batch["ids"]) and batch["speaker"][0].startswith("spk")
    finally:
        labelled.close()
    res = run(tmp_path, corpus, ["train.precision=bf16", "train.max_steps=2"], exp="bf16")
    assert res.status == "finished" and res.valid_loss is not None and res.valid_loss < 1.0
