"""Pretraining under attack: two writers, a full disk, truncated checkpoints, kill -9 leftovers,
validation slices, silent runs and non-finite config values (issue 12)."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import CRASH, make_corpus, recipe
from safetensors import SafetensorError

import speechssl.upstream.release as release
from speechssl.cli.main import main as cli_main
from speechssl.config import ConfigError
from speechssl.locks import FolderLockedError
from speechssl.progress import Progress
from speechssl.train import checkpoint as ckpt_io
from speechssl.train.config import load_pretrain_config
from speechssl.train.trainer import Trainer, pretrain

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return make_corpus(root, n=12), make_corpus(root, n=4, name="dev", seed=1)


def run(tmp_path, corpus, overrides=(), exp="exp", **sections):
    cfg = load_pretrain_config(recipe(tmp_path, **sections), list(overrides))
    return pretrain(cfg, corpus[0], corpus[1], tmp_path / exp)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


SLOW_PRETRAIN = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from helpers import recipe
from speechssl.train.config import load_pretrain_config
from speechssl.train.trainer import Trainer, pretrain
tmp, train, valid = Path(sys.argv[2]), sys.argv[3], sys.argv[4]
original = Trainer.train_step
def slow_step(self, micro):
    if self.step == 2:
        print("ready", flush=True)  # the folder is locked and training is under way
        while not (tmp / "go").exists():
            time.sleep(0.05)
    return original(self, micro)
Trainer.train_step = slow_step
pretrain(load_pretrain_config(recipe(tmp)), train, valid, tmp / "exp")
"""


def test_second_pretrain_on_one_exp_is_refused(tmp_path, corpus, capsys):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-c", SLOW_PRETRAIN, str(ROOT / "tests"), str(tmp_path),
                              str(corpus[0]), str(corpus[1])], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "ready", first.stderr.read()
        with pytest.raises(FolderLockedError, match=f"in use by pid {first.pid} on host {socket.gethostname()}"):
            run(tmp_path, corpus)
        assert cli_main(["pretrain", "--config", str(recipe(tmp_path)), "--train", str(corpus[0]),
                         "--exp", str(tmp_path / "exp")]) == 1
        err = capsys.readouterr().err.strip()
        assert f"pid {first.pid}" in err and "speechssl pretrain" in err and len(err.splitlines()) == 1
    finally:
        (tmp_path / "go").touch()
        first.wait(timeout=300)
    assert first.returncode == 0, first.stderr.read()
    lines = [json.loads(x) for x in (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["split"] == "train"] == [1, 2, 3, 4, 5, 6]  # no second writer
    assert not (tmp_path / "exp" / ".speechssl.lock").exists()


def test_checkpoint_serialisation_error_is_one_line_with_free_space(tmp_path, corpus, monkeypatch):
    real_save = torch.save

    def save_fails(obj, path, *a, **k):
        if obj["step"] == 6:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4288 vs 4176\nframe #0")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(ckpt_io.torch, "save", save_fails)
    with pytest.raises(OSError) as info:
        run(tmp_path, corpus)
    message = str(info.value)
    assert message.startswith("could not write checkpoint ") and "unexpected pos 4288 vs 4176" in message
    assert "earlier checkpoints in" in message and "are intact" in message and " free there" in message
    assert len(message.splitlines()) == 1
    folder = tmp_path / "exp" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step_00000003.pt"]


def test_encoder_release_is_atomic_and_full_disk_is_one_line(tmp_path, corpus, monkeypatch):
    def save_fills_disk(state, filename, *a, **k):
        Path(filename).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              'message: "No space left on device" })')

    real_save_file = release.save_file
    monkeypatch.setattr(release, "save_file", save_fills_disk)
    with pytest.raises(OSError, match="could not release the encoder to .*No space left on device.* free there"):
        run(tmp_path, corpus)
    exp = tmp_path / "exp"
    assert not (exp / "encoder").exists()  # never an empty encoder/
    assert not [p.name for p in exp.iterdir() if p.name.startswith(".encoder")]
    monkeypatch.setattr(release, "save_file", real_save_file)
    assert run(tmp_path, corpus).encoder_dir == exp / "encoder"
    monkeypatch.setattr(release, "save_file", save_fills_disk)
    with pytest.raises(OSError, match="the encoder released earlier is intact"):
        run(tmp_path, corpus, ["train.max_steps=7"])
    assert json.loads((exp / "encoder" / "config.json").read_text())["extra"]["step"] == 6
    assert release.load_released_model(exp / "encoder") is not None


def test_released_weights_get_the_umask_mode(tmp_path, corpus):
    old = os.umask(0o022)
    try:
        run(tmp_path, corpus)
    finally:
        os.umask(old)
    encoder = tmp_path / "exp" / "encoder"
    assert (encoder / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (encoder / "config.json").stat().st_mode & 0o777 == 0o644


def test_truncated_newest_checkpoint_falls_back_to_the_previous(tmp_path, corpus, caplog):
    ref = run(tmp_path, corpus, ["train.max_steps=9"], exp="ref")
    run(tmp_path, corpus)  # checkpoints at steps 3 and 6
    newest = tmp_path / "exp" / "checkpoints" / "step_00000006.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # killed / full disk mid-write
    caplog.set_level(logging.INFO)
    res = run(tmp_path, corpus, ["train.max_steps=9"])
    assert "step_00000006.pt: not a readable speechssl checkpoint" in caplog.text
    assert "falling back to the previous checkpoint" in caplog.text
    assert "step_00000003.pt at step 3" in caplog.text
    assert res.step == ref.step == 9
    assert (tmp_path / "exp" / "checkpoints" / "step_00000006.pt.unreadable").is_file()  # kept, out of the way
    a = ckpt_io.load_checkpoint(tmp_path / "ref" / "checkpoints" / "step_00000009.pt")["model"]
    b = ckpt_io.load_checkpoint(tmp_path / "exp" / "checkpoints" / "step_00000009.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k  # resumed exactly from step 3


def test_stale_temporaries_of_killed_writes_are_removed(tmp_path, corpus):
    run(tmp_path, corpus)
    exp = tmp_path / "exp"
    leftovers = [exp / "checkpoints" / ".step_00000009.pt.k2j4x9ab.tmp", exp / f".encoder.{_dead_pid()}.tmp"]
    leftovers[0].write_bytes(b"x" * 1000)
    leftovers[1].mkdir()
    (leftovers[1] / "model.safetensors").write_bytes(b"x")
    assert run(tmp_path, corpus).step == 6
    assert not any(p.exists() for p in leftovers)


def test_release_killed_between_renames_is_restored(tmp_path, corpus):
    run(tmp_path, corpus)
    exp = tmp_path / "exp"
    os.replace(exp / "encoder", exp / f".encoder.{_dead_pid()}.old")  # killed after moving the old one aside
    Trainer(load_pretrain_config(recipe(tmp_path)), corpus[0], None, exp).close()
    assert release.load_released_model(exp / "encoder") is not None
    assert not [p for p in exp.iterdir() if p.name.startswith(".encoder")]


def test_run_killed_before_its_first_checkpoint_keeps_no_old_metrics(tmp_path, corpus):
    CRASH.update(after=2, calls=0)  # step 3 raises, before the first checkpoint
    try:
        with pytest.raises(RuntimeError, match="injected crash"):
            run(tmp_path, corpus)
    finally:
        CRASH.update(after=None, calls=0)
    path = tmp_path / "exp" / "metrics.jsonl"
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 1, 2]
    run(tmp_path, corpus)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["step"] for x in lines if x["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [x["step"] for x in lines if x["split"] == "valid"] == [0, 3, 6]


def test_capped_validation_measures_the_same_batches_every_time(tmp_path, corpus):
    # one dev utterance per validation batch, 1 of 4 batches per validation
    cfg = load_pretrain_config(recipe(tmp_path), ["train.valid_max_batches=1", "data.valid_batch_seconds=0.3"])
    trainer = Trainer(cfg, corpus[0], corpus[1], tmp_path / "exp")
    try:
        assert len(trainer.valid_loader) == 4
        first, second, third = trainer.validate(), trainer.validate(), trainer.validate()
    finally:
        trainer.close()
    assert first == second == third


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_bar_on_a_terminal_lines_otherwise(caplog):
    caplog.set_level(logging.INFO)
    stream = _Stream(tty=True)
    bar = Progress(10, 0, bar=True, every_seconds=1e-9, main=True, stream=stream)
    bar.update(1)
    bar.close()
    assert "pretrain" in stream.getvalue() and "step 1/10" not in caplog.text  # a tqdm bar, no lines
    for tty, show_bar in ((False, True), (True, False)):  # a pipe, or progress: false on a terminal
        caplog.clear()
        bar = Progress(10, 2, bar=show_bar, every_seconds=1e-9, main=True, stream=_Stream(tty))
        bar.set_postfix(loss="1.5")
        bar.update(3)
        bar.close()
        assert "pretrain: step 3/10 (30.0%), loss 1.5, " in caplog.text and "eta " in caplog.text
    caplog.clear()
    Progress(10, 0, bar=False, every_seconds=1e-9, main=False, stream=_Stream(False)).update(1)
    assert caplog.text == ""  # only the main rank reports


def test_tiny_recipe_without_a_bar_still_reports_progress(tmp_path, corpus, caplog):
    caplog.set_level(logging.INFO)
    run(tmp_path, corpus, ["train.progress=false", "train.progress_every_seconds=1e-9"])
    assert "pretrain: step 6/6 (100.0%)" in caplog.text


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.max_steps=.inf", ["train.max_steps", "integer", "inf"]),
        ("optim.lr=.inf", ["optim.lr", "finite", "inf"]),
        ("optim.lr=.nan", ["optim.lr", "finite", "nan"]),
        ("optim.betas=[0.9,1.0]", ["optim.betas", "[0, 1)"]),
        ("optim.eps=0", ["optim.eps", "> 0"]),
        ("data.crop_seconds=.inf", ["data.crop_seconds", "finite"]),
        ("train.max_minutes=.nan", ["train.max_minutes", "finite"]),
        ("train.valid_max_batches=0", ["train.valid_max_batches", ">= 1"]),
        ("train.progress_every_seconds=0", ["train.progress_every_seconds", "> 0"]),
    ],
)
def test_non_finite_and_out_of_range_numbers_fail_before_any_work(tmp_path, corpus, capsys, override, words):
    with pytest.raises(ConfigError) as info:
        load_pretrain_config(recipe(tmp_path), [override])
    for word in words:
        assert word in str(info.value)
    assert cli_main(["pretrain", "--config", str(recipe(tmp_path)), "--train", str(corpus[0]),
                     "--exp", str(tmp_path / "exp"), override]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words[0] in err and not (tmp_path / "exp").exists()
