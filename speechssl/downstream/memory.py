"""How much memory this process can still use (``/proc/meminfo``, under a cgroup limit): whether
features fit in memory or must be read from disk."""

from __future__ import annotations


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_available(root: str = "/sys/fs/cgroup") -> int | None:
    """Memory left under this process's cgroup limit (v2 or v1; a container's or a SLURM job's),
    counting inactive page cache as free (as ``docker stats`` does); None without a limit."""
    for limit_file, usage_file, stat_file, key in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat", "total_inactive_file"),
    ):
        limit_file, usage_file, stat_file = (f"{root}/{name}" for name in (limit_file, usage_file, stat_file))
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is None or usage is None or limit >= 2**60:  # "max" or the v1 "no limit" value
            continue
        inactive = 0
        try:
            with open(stat_file, encoding="ascii") as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == key:
                        inactive = int(value)
        except (OSError, ValueError):
            pass
        return max(0, limit - usage + inactive)
    return None


def available_memory_bytes() -> int | None:
    """Memory this process can still use: ``MemAvailable`` of ``/proc/meminfo``, or less under a
    cgroup memory limit; None when neither can be read (not Linux)."""
    found = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        found = None
    cgroup = _cgroup_available()
    if cgroup is not None:
        found = cgroup if found is None else min(found, cgroup)
    return found


def size_text(n: float) -> str:
    """``1.5 GiB`` or ``12.0 MiB``."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
