"""Exclusive folder locks, so two jobs never write into the same experiment or feature folder.

Usage::

    with FolderLock(exp_dir, purpose="speechssl pretrain"):
        ...                                   # a second writer gets FolderLockedError
    lock = hold_rank_lock(out, rank, world)   # sharded extraction: one lock per rank of one job

A lock is a file (``.speechssl.lock`` by default) holding the writer's pid, host, start time,
job id and command as JSON, plus an ``fcntl.flock`` on it. The kernel drops the flock when the
process ends in any way (exception, signal, ``kill -9``), so liveness never depends on our own
clean-up; the JSON only names the holder in messages. A file left by a dead writer is taken over
with a logged note. The flock works on local file systems and, through fcntl byte-range locks,
on NFSv4.

Ranks of one ``torchrun`` job share a job id (:func:`job_id`); a lock of another job, or of a
job with another world size, is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_NAME = ".speechssl.lock"
#: Set the same value in every process of one job to share a folder without torchrun or SLURM.
JOB_ID_ENV = "SPEECHSSL_JOB_ID"
# Temporaries of writers that embed their pid: ``.<name>.<pid>.tmp`` (files or folders).
_PID_TMP = re.compile(r"^\..+\.(\d+)\.tmp$")


class FolderLockedError(OSError):
    """Another live process holds the folder's lock; ``str()`` names its pid, host and start time."""


def job_id() -> str:
    """An id shared by every rank of one job and by no concurrent other job.

    ``$SPEECHSSL_JOB_ID`` if set; under torchrun the rendezvous id plus the master address and
    port (two live jobs cannot bind the same port); under SLURM the job and step ids; otherwise
    this process.
    """
    if os.environ.get(JOB_ID_ENV):
        return os.environ[JOB_ID_ENV]
    if os.environ.get("TORCHELASTIC_RUN_ID") is not None and os.environ.get("MASTER_PORT"):
        return (f"torchrun:{os.environ['TORCHELASTIC_RUN_ID']}@{os.environ.get('MASTER_ADDR', '')}"
                f":{os.environ['MASTER_PORT']}")
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm:{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '')}"
    return f"process:{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (a zombie counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _describe(info: dict[str, Any]) -> str:
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (started {when}, job {info.get('job', '?')})"


def _read_info(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    try:
        info = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


class FolderLock:
    """An exclusive lock on ``folder`` (see the module docstring); a context manager.

    Args:
        folder: the folder to lock (created if missing).
        purpose: what the holder does, quoted in the refusal message (``"speechssl pretrain"``).
        name: lock file name inside ``folder``.
        world_size: recorded so that ranks of one job can check each other (:func:`hold_rank_lock`).
    """

    def __init__(self, folder: str | Path, purpose: str = "speechssl", name: str = LOCK_NAME,
                 world_size: int = 1):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.purpose = purpose
        self.world_size = int(world_size)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        """Take the lock.

        Raises:
            FolderLockedError: a live process holds it (the message names pid, host, start time).
        """
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_info(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise FolderLockedError(
                    f"{self.folder} is in use by {_describe(holder)} ({holder.get('purpose', 'speechssl')}); "
                    f"wait for it to finish, stop it, or use another folder"
                ) from None
            # A releasing holder unlinks the file while still holding its flock: if we locked an
            # inode that is no longer at self.path, another process may lock the new file; retry.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_info(fd)
        if previous:
            log.warning("taking over the stale lock %s of %s, which is no longer running", self.path,
                        _describe(previous))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "job": job_id(),
                "world_size": self.world_size, "purpose": self.purpose, "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (unlink first, so no one locks a dying file)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def live_holder(path: str | Path) -> dict[str, Any] | None:
    """The JSON of the lock file ``path`` if a live process holds it, else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_info(fd)
        return None  # nobody holds it
    finally:
        os.close(fd)  # also drops our probe's shared lock


def hold_rank_lock(folder: str | Path, rank: int, world_size: int, purpose: str = "speechssl extract") -> FolderLock:
    """Lock ``folder`` for rank ``rank`` of a job of ``world_size`` sharded ranks.

    Each rank takes its own ``.speechssl.lock.rank<r>``, then checks every other rank's lock that
    is held: it must belong to the same job (:func:`job_id`) with the same world size, so the
    ranks of one torchrun job share the folder while any other writer is refused. The caller
    releases the returned lock (``with hold_rank_lock(...):``).

    Raises:
        FolderLockedError: another job writes into ``folder``.
    """
    lock = FolderLock(folder, purpose=purpose, name=f"{LOCK_NAME}.rank{rank}", world_size=world_size).acquire()
    me = job_id()
    try:
        for other in sorted(Path(folder).glob(f"{LOCK_NAME}.rank*")):
            if other == lock.path:
                continue
            holder = live_holder(other)
            if holder is not None and (holder.get("job") != me or holder.get("world_size") != world_size):
                raise FolderLockedError(
                    f"{folder} is in use by {_describe(holder)} ({holder.get('purpose', 'speechssl')}, "
                    f"world size {holder.get('world_size', '?')}); wait for it to finish, stop it, or use "
                    "another folder"
                )
    except BaseException:
        lock.release()
        raise
    return lock


def _pid_temporaries(folder: Path) -> Iterator[tuple[Path, int]]:
    for root, dirs, files in os.walk(folder):
        for name in list(dirs) + files:
            match = _PID_TMP.match(name)
            if match:
                if name in dirs:
                    dirs.remove(name)  # never descend into a temporary folder
                yield Path(root) / name, int(match.group(1))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete ``.<name>.<pid>.tmp`` files and folders under ``folder`` whose pid is dead.

    Only call this while holding the folder's lock(s), with every writer on this host: a pid is
    checked against this host's processes. Returns the removed paths (each logged).
    """
    removed = []
    for path, pid in _pid_temporaries(Path(folder)):
        if pid == os.getpid() or pid_alive(pid):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        log.warning("removed %d temporary file(s) left by killed writers in %s: %s", len(removed), folder,
                    ", ".join(str(p.relative_to(folder)) for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))
    return removed
