"""Folder locks: one writer per experiment / feature folder, stale locks and temporaries of dead pids."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from speechssl.audio import save_audio
from speechssl.cli.main import main as cli_main
from speechssl.locks import (
    JOB_ID_ENV,
    FolderLock,
    FolderLockedError,
    hold_rank_lock,
    remove_stale_temporaries,
)

ROOT = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
from pathlib import Path
from speechssl.locks import FolderLock, hold_rank_lock
folder, mode = sys.argv[1], sys.argv[2]
lock = FolderLock(folder, purpose="holder test").acquire() if mode == "folder" else hold_rank_lock(folder, int(mode), 2)
print("ready", flush=True)
while not Path(folder, "stop").exists():
    time.sleep(0.05)
lock.release()
"""


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
    env.pop(JOB_ID_ENV, None)
    env.update(extra)
    return env


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()  # blocks until the child holds its lock (or died)
    assert line.strip() == "ready", proc.stderr.read()
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_writer_is_refused_with_the_holder_named(tmp_path):
    proc = _start(["-c", HOLDER, str(tmp_path), "folder"], _env())
    try:
        with pytest.raises(FolderLockedError) as info:
            FolderLock(tmp_path).acquire()
        message = str(info.value)
        assert f"pid {proc.pid}" in message and socket.gethostname() in message and "started 20" in message
        assert "holder test" in message and len(message.splitlines()) == 1
    finally:
        (tmp_path / "stop").touch()
        proc.wait(timeout=60)
    assert proc.returncode == 0 and not (tmp_path / ".speechssl.lock").exists()  # released on exit
    with FolderLock(tmp_path) as lock:  # free again
        assert lock.held


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    proc = _start(["-c", HOLDER, str(tmp_path), "folder"], _env())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert (tmp_path / ".speechssl.lock").is_file()  # kill -9 leaves the file behind
    with caplog.at_level(logging.WARNING, logger="speechssl.locks"), FolderLock(tmp_path) as lock:
        assert lock.held
    assert f"taking over the stale lock {tmp_path / '.speechssl.lock'} of pid {proc.pid}" in caplog.text


def test_lock_is_released_on_exceptions(tmp_path):
    with pytest.raises(RuntimeError), FolderLock(tmp_path):
        raise RuntimeError("boom")
    FolderLock(tmp_path).acquire().release()


def test_ranks_of_one_job_share_a_folder_and_other_jobs_are_refused(tmp_path, monkeypatch):
    proc = _start(["-c", HOLDER, str(tmp_path), "1"], _env(**{JOB_ID_ENV: "job-a"}))
    try:
        monkeypatch.setenv(JOB_ID_ENV, "job-a")
        hold_rank_lock(tmp_path, 0, 2).release()  # rank 0 of the same job: fine
        monkeypatch.setenv(JOB_ID_ENV, "job-b")
        with pytest.raises(FolderLockedError, match=f"pid {proc.pid} .*job job-a"):
            hold_rank_lock(tmp_path, 0, 2)
        with pytest.raises(FolderLockedError, match=f"pid {proc.pid}"):
            hold_rank_lock(tmp_path, 0, 1)  # a single-process job
        assert not (tmp_path / ".speechssl.lock.rank0").exists()  # the refused rank let go of its own lock
    finally:
        (tmp_path / "stop").touch()
        proc.wait(timeout=60)


def test_stale_temporaries_of_dead_pids_are_removed(tmp_path):
    dead, live = _dead_pid(), os.getpid()
    (tmp_path / "spk").mkdir()
    stale = [tmp_path / f".a.npy.{dead}.tmp", tmp_path / "spk" / f".b.{dead}.tmp"]
    stale[0].write_bytes(b"x")
    stale[1].mkdir()
    (stale[1] / "context.npy").write_bytes(b"x")
    kept = [tmp_path / f".c.npy.{live}.tmp", tmp_path / "d.npy"]
    for path in kept:
        path.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


SLOW_EXTRACT = """
import sys, time
from pathlib import Path
import speechssl.extract.runner as runner
from speechssl.extract import ExtractConfig, extract_features
wavs, out = sys.argv[1], Path(sys.argv[2])
original = runner._Extraction.begin
def slow_begin(self, *args):
    print("ready", flush=True)  # the folder is locked and extraction is under way
    while not (out.parent / "go").exists():
        time.sleep(0.05)
    return original(self, *args)
runner._Extraction.begin = slow_begin
extract_features("logmel", wavs, out, ExtractConfig(progress=False))
"""


def test_two_extractions_into_one_folder_the_second_is_refused(tmp_path, capsys):
    wavs = tmp_path / "wavs"
    for i in range(3):
        save_audio(wavs / f"u{i}.wav", np.random.default_rng(i).standard_normal(8000).astype(np.float32) * 0.1)
    out = tmp_path / "feats"
    out.mkdir()
    dead = _dead_pid()
    (out / f".u0.npy.{dead}.tmp").write_bytes(b"left by a killed run")
    first = _start(["-c", SLOW_EXTRACT, str(wavs), str(out)], _env())
    try:
        assert not (out / f".u0.npy.{dead}.tmp").exists()  # cleaned at start, under the lock
        assert cli_main(["extract", "--encoder", "logmel", "--input", str(wavs), "--out", str(out),
                         "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert f"is in use by pid {first.pid} on host {socket.gethostname()}" in err
        assert "speechssl extract" in err and len(err.strip().splitlines()) == 1
    finally:
        (tmp_path / "go").touch()
        first.wait(timeout=120)
    assert first.returncode == 0, first.stderr.read()
    index = (out / "index.tsv").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in index[1:]) == ["u0", "u1", "u2"]
    assert not list(out.glob(".speechssl.lock*"))
    # a rerun after the first one finished is accepted (and resumes: nothing left to do)
    assert cli_main(["extract", "--encoder", "logmel", "--input", str(wavs), "--out", str(out), "--no-progress"]) == 0
    assert "3 already done" in capsys.readouterr().err
