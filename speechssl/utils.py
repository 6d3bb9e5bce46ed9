"""Small shared helpers: atomic writes, seeding, hashing."""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    If the body raises (or the disk fills), the temporary file is removed and any
    existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one number."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def file_sha256(path: str | Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:limit] if limit else h.hexdigest()


def git_revision(cwd: str | Path | None = None) -> str | None:
    """The current git commit of ``cwd`` (or of this package), or None outside a checkout."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def read_versioned_json(
    path: str | Path, max_version: int, what: str, error: type[Exception] = ValueError
) -> dict:
    """Read a self-describing JSON config (released encoder, downstream model...).

    Errors (``error``, or FileNotFoundError for a missing file) name the file and what was wrong:
    missing, invalid JSON, no integer ``format_version``, or a version newer than ``max_version``.
    """
    path = Path(path)
    if not path.is_file():
        missing = FileNotFoundError if error is ValueError else error
        raise missing(f"{path.parent} is not {what}: {path.name} is missing")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}: invalid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise error(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    version = cfg.get("format_version")
    if not isinstance(version, int):
        raise error(f"{path}: 'format_version' is missing or not an integer")
    if version > max_version:
        raise error(
            f"{path}: format_version {version} is newer than this speechssl understands ({max_version}); "
            "upgrade speechssl"
        )
    return cfg


def free_space(path: str | Path) -> str:
    """Free space on the file system holding ``path`` (or its nearest existing parent), e.g. "1.2 GB"."""
    import shutil

    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = float(shutil.disk_usage(path).free)
    except OSError:
        return "unknown space"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if free < 1000 or unit == "TB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1000
    return f"{free:.1f} TB"


def checked_device(device: str | torch.device, what: str = "device") -> torch.device:
    """``device`` ("cpu", "cuda", "cuda:1", ...) as a torch device that exists on this machine.

    Raises:
        ValueError: a name torch does not know (``"gpu"``), or CUDA asked for where there is none
            or fewer GPUs than the index, with ``what`` (the option's name) in the message.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what}: expected cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{what}={device}: no CUDA device is available here; use cpu")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{what}={device}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})")
    return dev


def read_safetensors(path: str | Path, device: str = "cpu", error: type[Exception] = ValueError) -> dict:
    """The tensors of a ``.safetensors`` file; a damaged or truncated file raises ``error`` naming it
    (safetensors' own SafetensorError is neither a ValueError nor an OSError)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except SafetensorError as exc:
        reason = (str(exc).strip().splitlines() or ["unreadable"])[0]
        raise error(f"{path}: cannot read the weights ({reason}); the file is damaged or incomplete "
                    "(copied or written only in part?)") from None
