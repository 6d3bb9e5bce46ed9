"""Feature writers: npy, pt, Kaldi ark, HDF5. Every utterance is committed atomically.

Layouts under the output folder (``R`` = ``.r<rank>`` when several ranks write, else empty):

=======  ==============================================  ==================================
format   one layer                                       several layers
=======  ==============================================  ==================================
npy      ``<id>.npy`` [frames, dim]                      ``<id>/<layer>.npy`` (one folder)
pt       ``<id>.pt``: ``{layer: Tensor[frames, dim]}``   same file, one key per layer
kaldi    ``feats<R>.ark`` (+ ``feats.scp``)              ``<layer><R>.ark`` (+ ``<layer>.scp``)
hdf5     ``feats<R>.h5``: dataset ``/<id>/<layer>``      same file, one dataset per layer
=======  ==============================================  ==================================

An utterance counts as done only once its ``index`` line is written, which happens after the
writer committed it: npy/pt outputs are written to a temporary name and renamed; ark files are
appended and their committed size recorded (a rerun truncates a half-written tail); HDF5 groups
that are not in the index are deleted on a rerun. npy and HDF5 stream frames to disk (bounded
memory for any file length); pt and Kaldi hold one utterance's features in memory.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from speechssl.extract.config import FORMATS
from speechssl.extract.inputs import safe_id_path
from speechssl.utils import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

_NPY_HEADER = 128  # bytes reserved for the .npy header so it can be rewritten with the final shape


class NpyStream:
    """Append rows to a ``.npy`` file whose frame count is only known at the end."""

    def __init__(self, path: Path, dim: int, dtype: np.dtype):
        self.path, self.dim, self.dtype, self.frames = path, dim, np.dtype(dtype), 0
        self.f = open(path, "wb")
        self.f.write(self._header(0))

    def _header(self, frames: int) -> bytes:
        text = str({"descr": self.dtype.str, "fortran_order": False, "shape": (frames, self.dim)})
        body = text.encode("latin1")
        pad = _NPY_HEADER - 10 - len(body) - 1
        if pad < 0:
            raise ValueError(f"npy header too long for shape ({frames}, {self.dim})")
        return b"\x93NUMPY\x01\x00" + (_NPY_HEADER - 10).to_bytes(2, "little") + body + b" " * pad + b"\n"

    def append(self, rows: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.frames += rows.shape[0]

    def close(self) -> None:
        self.f.seek(0)
        self.f.write(self._header(self.frames))
        self.f.close()


class UtteranceSink:
    """Receives one utterance's frames chunk by chunk, then ``commit()`` or ``abort()``."""

    def append(self, arrays: list[np.ndarray]) -> None:
        raise TypeError("abstract")

    def commit(self) -> str:
        raise TypeError("abstract")

    def abort(self) -> None:
        raise TypeError("abstract")


class FeatureWriter:
    """Base: ``begin(id, dims)`` -> :class:`UtteranceSink`; ``recover(done)`` after a crash."""

    def __init__(self, out: Path, layers: list[str], dtype: np.dtype, rank: int = 0, world_size: int = 1):
        self.out, self.layers, self.dtype = Path(out), list(layers), np.dtype(dtype)
        self.suffix = f".r{rank}" if world_size > 1 else ""
        self.out.mkdir(parents=True, exist_ok=True)

    def recover(self, done: dict[str, str]) -> set[str]:
        """Ids of ``done`` (id -> location) whose outputs are intact."""
        return {utt for utt, loc in done.items() if all((self.out / p).exists() for p in loc.split(","))}

    def begin(self, utt_id: str, dims: list[int]) -> UtteranceSink:
        raise TypeError("abstract")

    def close(self) -> None:
        pass


class _NpySink(UtteranceSink):
    def __init__(self, writer: NpyWriter, utt_id: str, dims: list[int]):
        self.w, rel = writer, safe_id_path(utt_id)
        single = len(writer.layers) == 1
        self.final = writer.out / (rel + ".npy" if single else rel)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.final.parent / f".{self.final.name}.{os.getpid()}.tmp"
        if not single:
            self.tmp.mkdir(exist_ok=True)
        paths = [self.tmp] if single else [self.tmp / f"{name}.npy" for name in writer.layers]
        self.streams = [NpyStream(p, d, writer.dtype) for p, d in zip(paths, dims)]
        self.rel = self.final.relative_to(writer.out).as_posix()

    def append(self, arrays):
        for s, a in zip(self.streams, arrays):
            s.append(a)

    def commit(self):
        for s in self.streams:
            s.close()
        if self.final.is_dir():
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        return self.rel

    def abort(self):
        for s in self.streams:
            s.f.close()
        if self.tmp.is_dir():
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            self.tmp.unlink(missing_ok=True)


class NpyWriter(FeatureWriter):
    def recover(self, done):
        if len(self.layers) == 1:
            return super().recover(done)
        return {u for u, loc in done.items() if all((self.out / loc / f"{n}.npy").is_file() for n in self.layers)}

    def begin(self, utt_id, dims):
        return _NpySink(self, utt_id, dims)


class _MemorySink(UtteranceSink):
    def __init__(self, on_commit):
        self.parts: list[list[np.ndarray]] = []
        self.on_commit = on_commit

    def append(self, arrays):
        self.parts.append([np.asarray(a) for a in arrays])

    def arrays(self) -> list[np.ndarray]:
        return [np.concatenate([p[i] for p in self.parts], axis=0) for i in range(len(self.parts[0]))]

    def commit(self):
        return self.on_commit(self.arrays())

    def abort(self):
        self.parts = []


class PtWriter(FeatureWriter):
    def begin(self, utt_id, dims):
        rel = safe_id_path(utt_id) + ".pt"

        def save(arrays):
            tensors = {name: torch.from_numpy(a.astype(self.dtype, copy=False)) for name, a in zip(self.layers, arrays)}
            with atomic_path(self.out / rel) as tmp:
                torch.save(tensors, tmp)
            return rel

        return _MemorySink(save)


class KaldiWriter(FeatureWriter):
    """Kaldi binary matrices (``kaldiio``); the ``.scp`` files are written when the run finishes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import kaldiio  # noqa: F401  (fail early with a clear message if the `io` extra is missing)

        names = ["feats"] if len(self.layers) == 1 else self.layers
        self.arks = [self.out / f"{n}{self.suffix}.ark" for n in names]

    def _size_file(self, ark: Path) -> Path:
        return ark.with_name(ark.name + ".size")

    def recover(self, done):
        for ark in self.arks:  # drop a half-written tail
            size_file = self._size_file(ark)
            size = int(size_file.read_text()) if size_file.is_file() else 0
            if ark.is_file() and ark.stat().st_size != size:
                log.info("truncating %s from %d to its last committed %d bytes", ark, ark.stat().st_size, size)
                with open(ark, "r+b") as f:
                    f.truncate(size)
        ok = set()
        for utt, loc in done.items():
            entries = loc.split(",")
            if all((self.out / e.rsplit(":", 1)[0]).is_file() and int(e.rsplit(":", 1)[1]) <
                   (self.out / e.rsplit(":", 1)[0]).stat().st_size for e in entries):
                ok.add(utt)
        return ok

    def begin(self, utt_id, dims):
        import kaldiio

        if any(c.isspace() for c in utt_id):
            raise ValueError(f"Kaldi keys cannot contain whitespace: {utt_id!r}")

        def save(arrays):
            locs = []
            for ark, a in zip(self.arks, arrays):
                with open(ark, "ab") as f:
                    start = f.tell()
                    kaldiio.save_ark(f, {utt_id: a.astype(self.dtype, copy=False)})
                    f.flush()
                    os.fsync(f.fileno())
                    end = f.tell()
                atomic_write_text(self._size_file(ark), str(end))
                locs.append(f"{ark.name}:{start + len(utt_id.encode()) + 1}")
            return ",".join(locs)

        return _MemorySink(save)

    @staticmethod
    def write_scps(out: Path, rows: list[dict], layers: list[str]) -> None:
        names = ["feats"] if len(layers) == 1 else layers
        for i, name in enumerate(names):
            lines = [f"{r['id']} {out.resolve() / r['path'].split(',')[i]}\n" for r in rows]
            atomic_write_text(out / f"{name}.scp", "".join(lines))


class _H5Sink(UtteranceSink):
    def __init__(self, writer: Hdf5Writer, utt_id: str, dims: list[int]):
        self.w, self.key = writer, safe_id_path(utt_id)
        if self.key in writer.h5:
            del writer.h5[self.key]
        group = writer.h5.create_group(self.key)
        self.sets = [
            group.create_dataset(name, shape=(0, d), maxshape=(None, d), dtype=writer.dtype,
                                 chunks=(min(1024, 65536 // max(d, 1) or 1), d))
            for name, d in zip(writer.layers, dims)
        ]

    def append(self, arrays):
        for ds, a in zip(self.sets, arrays):
            n = ds.shape[0]
            ds.resize(n + a.shape[0], axis=0)
            ds[n:] = a.astype(self.w.dtype, copy=False)

    def commit(self):
        self.w.h5.flush()
        return f"{self.w.path.name}:{self.key}"

    def abort(self):
        if self.key in self.w.h5:
            del self.w.h5[self.key]


class Hdf5Writer(FeatureWriter):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import h5py

        self.path = self.out / f"feats{self.suffix}.h5"
        try:
            self.h5 = h5py.File(self.path, "a")
        except OSError as exc:  # a crash mid-write can leave an unreadable file: keep it aside
            aside = self.path.with_name(self.path.name + ".corrupt")
            log.warning("%s cannot be opened (%s); moved to %s, starting it afresh", self.path, exc, aside)
            os.replace(self.path, aside)
            self.h5 = h5py.File(self.path, "a")

    def recover(self, done):
        ok = {u for u, loc in done.items() if loc.rsplit(":", 1)[-1] in self.h5}
        keep = {safe_id_path(u) for u in ok}

        def visit_leaves(group, prefix=""):
            for name, obj in list(group.items()):
                key = f"{prefix}{name}"
                if key in keep:
                    continue
                if any(k.startswith(key + "/") for k in keep):
                    visit_leaves(obj, key + "/")
                else:
                    del group[name]

        visit_leaves(self.h5)
        return ok

    def begin(self, utt_id, dims):
        return _H5Sink(self, utt_id, dims)

    def close(self):
        self.h5.close()


WRITERS = {"npy": NpyWriter, "pt": PtWriter, "kaldi": KaldiWriter, "hdf5": Hdf5Writer}


def check_format(fmt: str, dtype: str) -> None:
    if fmt not in WRITERS:
        raise ValueError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"unknown dtype {dtype!r}; choices: float32, float16")
    if fmt == "kaldi" and dtype != "float32":
        raise ValueError("Kaldi matrices are float32 or float64 only; use --dtype float32 with --format kaldi")


def make_writer(fmt: str, out: Path, layers: list[str], dtype: str, rank: int = 0, world_size: int = 1) -> FeatureWriter:
    check_format(fmt, dtype)
    return WRITERS[fmt](out, layers, np.dtype(dtype), rank=rank, world_size=world_size)
