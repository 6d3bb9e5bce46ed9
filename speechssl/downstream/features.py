"""Frozen-encoder features for downstream training: computed once, reused many times.

* :class:`EncoderFeatureCache` runs a frozen Encoder over manifest records (batched, in
  inference mode, with a tqdm bar) and keeps every utterance's hidden states in memory, so
  a sweep over heads, learning rates, seeds or shots encodes each utterance only once.
* :func:`load_precomputed` reads features written by ``speechssl extract`` (``index.tsv`` +
  npy/pt files), which is faster still when the same features serve many runs. Features larger
  than the available memory are not loaded but read from disk when used (:class:`LazyFeatures`).

Both give a :class:`FeatureSet`: per utterance a list of per-layer [frames, dim] tensors.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechssl.extract.encode import EncodePolicy, Item, encode_records

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FeatureSet:
    """Hidden states of some utterances.

    Attributes:
        ids: utterance ids, aligned with ``feats``.
        feats: per utterance, one [frames, dim] float tensor per layer in ``layer_names`` (a list,
            or a :class:`LazyFeatures` that reads each utterance from disk when indexed).
        layer_names: names of the layers.
        frame_shift: samples (16 kHz) between frames.
        failed: ``id -> reason`` of the utterances left out (``features(..., skip_failed=True)``
            only; otherwise a failure raises).
    """

    ids: list[str]
    feats: Sequence[list[torch.Tensor]]
    layer_names: list[str]
    frame_shift: int
    failed: dict[str, str] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def hidden_sizes(self) -> list[int]:
        return [int(t.shape[-1]) for t in self.feats[0]] if self.feats else []


def record_key(rec: dict) -> tuple:
    """Identity of an utterance's audio: id, path and segment."""
    return (rec["id"], str(rec.get("path")), rec.get("start"), rec.get("duration"))


def _encoder_name(encoder: Any) -> str:
    """An Encoder's source (``logmel``, a folder), else the module's class name."""
    from speechssl.upstream import Encoder

    return encoder.source if isinstance(encoder, Encoder) and encoder.source else type(encoder).__name__


class EncoderFeatureCache:
    """In-memory cache of a frozen encoder's outputs, keyed by (id, path, start, duration).

    The encoding itself is :func:`speechssl.extract.encode.encode_records` (the loop of
    ``speechssl extract``) with ``errors="raise"``: a file that cannot be read or gives no frame
    stops the run, since a missing utterance would change the task.

    Args:
        encoder: an :class:`~speechssl.upstream.Encoder`, or any module with ``forward(wavs[B, L],
            lengths[B]) -> EncoderOutput`` (files longer than ``chunk_seconds`` also need its
            ``frame_shift`` and ``layer_names``).
        batch_size: utterances per forward pass (sorted by length, so padding stays small).
        dtype: storage dtype of cached features (float16 halves memory).
        device: where the encoder runs.
        name: the encoder's name in messages (default: an Encoder's source, else the class name).
        chunk_seconds, overlap_seconds: files longer than ``chunk_seconds`` are encoded in
            overlapping chunks (bounded memory; see :mod:`speechssl.extract.chunking`).

    When the first batch shows that the features of all requested utterances cannot fit in the
    available memory, it raises MemoryError at once (pointing to ``speechssl extract``, whose
    output is read from disk when it is too big) instead of failing hours later.
    """

    def __init__(self, encoder: Any, batch_size: int = 8, dtype: torch.dtype = torch.float32, device="cpu",
                 name: str | None = None, chunk_seconds: float = 30.0, overlap_seconds: float = 2.0):
        self.encoder = encoder
        self.name = name or _encoder_name(encoder)  # for messages
        self.batch_size = max(1, int(batch_size))
        self.dtype = dtype
        self.device = torch.device(device)
        self._store: dict[tuple, list[torch.Tensor]] = {}
        self.layer_names: list[str] | None = None
        self.frame_shift: int | None = None
        self.encoded = 0  # utterances actually run through the encoder (for tests and logs)
        self.chunk_seconds, self.overlap_seconds = chunk_seconds, overlap_seconds
        self._fit_check: Sequence[dict] | None = None  # records to check the memory for, after the first batch
        self._bar = None  # tqdm bar of the running features() call
        self._failed: dict[tuple, str] | None = None  # key -> reason, while features(skip_failed=True) runs

    def __len__(self) -> int:
        return len(self._store)

    def begin(self, item: Item, layer_names: list[str], frame_shift: int) -> _CachedUtterance:
        """:class:`~speechssl.extract.encode.FeatureConsumer`: where an utterance's frames go."""
        if self.layer_names is None:
            self.layer_names = list(layer_names)
            self.frame_shift = int(frame_shift)
        elif list(layer_names) != self.layer_names:
            raise ValueError(f"encoder returned layers {layer_names}, earlier {self.layer_names}")
        return _CachedUtterance(self, item.key)

    def failed(self, item: Item, reason: str) -> None:
        # called under errors="skip" only (features(skip_failed=True)); errors="raise" raises instead
        if self._failed is None:
            raise ValueError(f"utterance {item.id!r} ({item.path}): {reason}")
        self._failed[item.key] = reason

    def finished(self, items: list[Item]) -> None:
        self.encoded += sum(i.key in self._store for i in items)  # not the failed ones (skip_failed)
        if self._bar is not None:
            self._bar.update(len(items))
        if self._fit_check is not None:  # after the first batch
            todo, self._fit_check = self._fit_check, None
            self._check_fits(items, todo)

    def _check_fits(self, first: Sequence[Item], todo: Sequence[dict]) -> None:
        """After the first batch: stop early with a clear message when keeping the features of all
        of ``todo`` (estimated from the first batch's bytes per second of audio) cannot fit."""
        first = [i for i in first if i.key in self._store]  # not the failed ones (skip_failed)
        seconds = sum(i.seconds for i in first)
        total = sum(_seconds(r) for r in todo)
        available = available_memory_bytes()
        if seconds <= 0 or available is None:
            return
        stored = sum(t.numel() * t.element_size() for i in first for t in self._store[i.key])
        need = stored / seconds * total
        if need > 0.9 * available:
            raise MemoryError(
                f"encoding {len(todo)} utterances ({total / 3600:.2f} h) with {self.name} would keep "
                f"about {_size(need)} of features in memory but {_size(available)} are available; "
                "write them once with `speechssl extract --encoder ... --layers ...` and pass --features DIR "
                "(read from disk when they do not fit), or keep them as float16 (encode.dtype: float16)"
            )

    def features(self, records: Sequence[dict], desc: str = "encoding", skip_failed: bool = False) -> FeatureSet:
        """Encode the records not cached yet, then return all of them as a FeatureSet.

        A file that cannot be read or gives no frame raises, naming it; with ``skip_failed`` it is
        left out of the FeatureSet instead and listed in its ``failed`` (``predict`` on new files).
        """
        from tqdm.auto import tqdm

        todo = [r for r in records if record_key(r) not in self._store]
        # unique, sorted by length so batches hold similar lengths
        seen: dict[tuple, dict] = {}
        for r in todo:
            seen.setdefault(record_key(r), r)
        todo = sorted(seen.values(), key=_seconds)
        failed: dict[tuple, str] = {}
        if todo:
            self.encoder.eval()
            items = [Item(r["id"], str(r["path"]), _seconds(r), r.get("start"), r.get("duration"), key=record_key(r))
                     for r in todo]
            policy = EncodePolicy(batch_size=self.batch_size, chunk_seconds=self.chunk_seconds,
                                  overlap_seconds=self.overlap_seconds, errors="skip" if skip_failed else "raise",
                                  device=str(self.device), name=self.name)
            self._fit_check = todo
            self._failed = {} if skip_failed else None
            with tqdm(total=len(todo), desc=desc, unit="utt", leave=False, disable=None) as bar:  # None: only on a terminal
                self._bar = bar
                try:
                    encode_records(self.encoder, items, policy, self)
                finally:
                    self._bar = None
                    self._fit_check = None
                    failed, self._failed = self._failed or {}, None
        kept = [r for r in records if record_key(r) in self._store]
        if self.layer_names is None or not kept:
            detail = f"; e.g. {next(iter(failed.values()))}" if failed else ""
            raise ValueError(f"no utterance to encode ({len(records)} given, {len(failed)} failed{detail})")
        return FeatureSet(
            ids=[r["id"] for r in kept],
            feats=[self._store[record_key(r)] for r in kept],
            layer_names=list(self.layer_names),
            frame_shift=int(self.frame_shift or 0),
            failed={r["id"]: failed[record_key(r)] for r in records if record_key(r) in failed},
        )


class _CachedUtterance:
    """One utterance's frames on their way into an :class:`EncoderFeatureCache`."""

    def __init__(self, cache: EncoderFeatureCache, key: tuple):
        self.cache, self.key = cache, key
        self.parts: list[list[np.ndarray]] = []

    def append(self, arrays: list[np.ndarray]) -> None:
        self.parts.append(arrays)

    def commit(self) -> None:
        layers = zip(*self.parts)
        # a copy in the storage dtype: a view would keep the whole padded batch alive
        self.cache._store[self.key] = [
            torch.from_numpy(p[0] if len(p) == 1 else np.concatenate(p)).to(self.cache.dtype, copy=True)
            for p in layers
        ]

    def abort(self) -> None:
        self.parts = []


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _seconds(rec: dict) -> float:
    """:func:`speechssl.data.record_duration`, or 0 for records without sizes (``predict`` on a folder)."""
    from speechssl.data import record_duration

    try:
        return record_duration(rec)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return 0.0


def _read_index(folder: Path) -> list[dict]:
    index = folder / "index.tsv"
    if not index.is_file():
        raise FileNotFoundError(f"{folder}: no index.tsv (expected the output folder of `speechssl extract`)")
    with open(index, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise ValueError(f"{index}: no rows")
    for col in ("id", "path"):
        if col not in rows[0]:
            raise ValueError(f"{index}: missing column {col!r}; columns: {list(rows[0])}")
    return rows


def _extract_errors(folder: Path) -> dict[str, str]:
    """``id -> reason`` of the utterances ``speechssl extract`` listed in ``errors.tsv``."""
    if not (folder / "errors.tsv").is_file():
        return {}
    with open(folder / "errors.tsv", newline="", encoding="utf-8") as f:
        return {row["id"]: row.get("reason") or "" for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)}


def _read_meta(folder: Path) -> dict:
    path = folder / "extract.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON: {exc}") from None


def _tensor(x: Any) -> torch.Tensor:
    x = np.asarray(x)
    return torch.from_numpy(x if x.flags.writeable else x.copy()).float()


def _where(index: Path, uid: str) -> str:
    """How messages name an utterance of a feature folder: ``id 'u1' in /x/feats/index.tsv``."""
    return f"id {uid!r} in {index}"


def _load_pt(path: Path, where: str) -> Any:
    """``torch.load(weights_only=True)`` of a ``.pt`` feature file; a file holding pickled objects
    beyond tensors, or one that is not a torch file at all (truncated, overwritten), is a one-line
    ValueError naming the file and the utterance, whichever utterance it is and whenever it is read
    (a lazily read folder reads it only during training)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise ValueError(f"{path} ({where}): not plain tensors; .pt features are read with "
                             "torch.load(weights_only=True), which refuses pickled objects that could run code; "
                             "write features with `speechssl extract --format pt` (or npy)") from None
        raise ValueError(f"{path} ({where}): not a readable .pt file ({_first_line(exc)}); "
                         "extract it again (delete it and rerun `speechssl extract`)") from None
    except (RuntimeError, EOFError) as exc:  # torch's zip reader on a truncated or foreign file
        raise ValueError(f"{path} ({where}): not a readable .pt file ({_first_line(exc)}); "
                         "extract it again (delete it and rerun `speechssl extract`)") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_entry(folder: Path, loc: str, layers: list[str], where: str) -> list[torch.Tensor]:
    """One utterance's per-layer [T, D] tensors from an index ``path`` entry (any extract format).
    ``where`` names the utterance in errors (:func:`_where`); a damaged file is a ValueError naming it."""
    try:
        return _read_entry(folder, loc, layers, where)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError) as exc:
        if str(exc).startswith(where):  # already says which utterance
            raise
        raise ValueError(f"{where}: cannot read its features {folder / loc} ({type(exc).__name__}: {exc}); "
                         "rerun `speechssl extract` into a new folder") from None


def _read_entry(folder: Path, loc: str, layers: list[str], where: str) -> list[torch.Tensor]:
    path = folder / loc
    if path.is_dir():  # npy, several layers: <id>/<layer>.npy
        return [_tensor(np.load(path / f"{name}.npy", allow_pickle=False)) for name in layers]
    if path.suffix == ".npy" and path.is_file():
        data = np.load(path, allow_pickle=False)
        return [_tensor(data)] if data.ndim == 2 else [_tensor(a) for a in data]
    if path.suffix == ".pt" and path.is_file():
        data = _load_pt(path, where)
        if isinstance(data, dict):
            missing = [n for n in layers if n not in data]
            if missing:
                raise ValueError(f"{where}: {path.name} lacks layers {missing}; it has {list(data)}")
            return [data[n].float() for n in layers]
        data = torch.as_tensor(data).float()
        return [data] if data.dim() == 2 else list(data.unbind(0))
    if ".h5:" in loc:  # hdf5: feats.h5:<key> with one dataset per layer
        import h5py

        file_name, key = loc.split(":", 1)
        with h5py.File(folder / file_name, "r") as h5:
            return [_tensor(h5[key][name][()]) for name in layers]
    if ".ark:" in loc:  # kaldi: ark:offset per layer, comma-separated
        import kaldiio

        return [_tensor(kaldiio.load_mat(str(folder / part))) for part in loc.split(",")]
    raise FileNotFoundError(f"{where}: feature entry {loc!r} not found under {folder}")


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


def _bytes_needed(rows: dict[str, dict], records: Sequence[dict]) -> int | None:
    """float32 bytes of the records' features (every layer) from the index's frames/dim columns;
    None for an index without sizes."""
    need = 0
    for rec in records:
        row = rows[rec["id"]]
        try:
            frames = int(row.get("frames") or 0)
            dims = [int(d) for d in str(row.get("dim") or "").split(",") if d]
        except ValueError:
            return None
        if not frames or not dims:
            return None
        need += frames * sum(dims) * 4
    return need


class LazyFeatures(Sequence):
    """Utterances' per-layer tensors read from a ``speechssl extract`` folder each time they are
    indexed, so features larger than the memory can still train and score a head (at the cost of
    reading from disk; the operating system's page cache keeps what fits).

    Behaves like the list of a :class:`FeatureSet`: ``len``, indexing, iteration."""

    def __init__(self, folder: Path, entries: Sequence[tuple[str, str, list[str], int | None]], num_layers: int):
        self.folder = Path(folder)
        self._entries = list(entries)  # (where, index path entry, layer names in the index, frames from the index)
        self.num_layers = int(num_layers)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        where, loc, names, _ = self._entries[i]
        tensors = _load_entry(self.folder, loc, names, where)
        if len(tensors) != self.num_layers:
            raise ValueError(f"{where}: {len(tensors)} layer(s) in {loc!r}, other utterances have {self.num_layers}")
        return tensors

    def num_frames(self, i: int) -> int:
        """Frames of utterance ``i`` (from the index when it says, else by reading it)."""
        frames = self._entries[i][3]
        return int(frames) if frames else int(self[i][0].shape[0])


def num_frames(feats: Sequence[list[torch.Tensor]], i: int) -> int:
    """Frames of utterance ``i`` of a FeatureSet's ``feats`` without reading it when it is lazy."""
    return feats.num_frames(i) if isinstance(feats, LazyFeatures) else int(feats[i][0].shape[0])


def _row_layers(row: dict, meta: dict) -> list[str]:
    return [n for n in (row.get("layers") or "").split(",") if n] or list(meta.get("layers") or [])


def _unnamed_layers(count: int) -> list[str]:
    """Names for the layers of a folder whose index and extract.json do not name them."""
    return ["features"] if count == 1 else [f"layer_{i}" for i in range(count)]


def load_precomputed(folder: str | Path, records: Sequence[dict], lazy: bool | None = None) -> FeatureSet:
    """Features of ``records`` from a ``speechssl extract`` folder (npy, pt, HDF5 or Kaldi ark).

    ``index.tsv`` has columns ``id path frames frame_rate layers dim``; ``extract.json`` gives the
    layer names and frame shift. Records are matched by ``id``; any missing id is an error.

    Args:
        lazy: False loads every utterance into memory (fast reuse); True keeps only the index and
            reads an utterance each time it is used (:class:`LazyFeatures`); None (default) loads
            into memory when the features (float32) fit in 90 % of the available memory, else
            reads lazily and says so.
    """
    folder = Path(folder)
    rows = {row["id"]: row for row in _read_index(folder)}
    meta = _read_meta(folder)
    missing = [r["id"] for r in records if r["id"] not in rows]
    if missing:
        failed = _extract_errors(folder)
        why = "; ".join(f"{uid}: {failed[uid]}" for uid in missing[:3] if uid in failed)
        raise KeyError(f"{folder / 'index.tsv'}: {len(missing)} utterance(s) have no features, e.g. {missing[:5]}; "
                       + (f"extract could not encode some (errors.tsv: {why}): leave them out of the manifest "
                          "(`speechssl prepare --check-audio`, --min-seconds)" if why
                          else "extract them from the same manifest"))
    frame_shift = int(meta.get("frame_shift") or 0)
    if not frame_shift and rows and list(rows.values())[0].get("frame_rate"):
        frame_shift = int(round(16000 / float(list(rows.values())[0]["frame_rate"])))
    if lazy is None:
        need, available = _bytes_needed(rows, records), available_memory_bytes()
        lazy = need is not None and available is not None and need > 0.9 * available
        if lazy:
            logger.warning(
                "%s: the features of %d utterances need %s in memory (float32, every layer in the folder) "
                "but %s are available: reading them from disk when used (slower; extracting only the "
                "layers you need with `speechssl extract --layers ...` makes them smaller)",
                folder / "index.tsv", len(records), _size(need), _size(available))
    if lazy:
        return _lazy_set(folder, rows, meta, records, frame_shift)
    feats: list[list[torch.Tensor]] = []
    layer_names: list[str] = []
    for rec in records:
        row = rows[rec["id"]]
        names = _row_layers(row, meta)
        where = _where(folder / "index.tsv", rec["id"])
        tensors = _load_entry(folder, row["path"], names, where)
        if len(names) != len(tensors):
            names = _unnamed_layers(len(tensors))
        if not layer_names:
            layer_names = names
        elif names != layer_names:
            raise ValueError(f"{where}: layers {names} differ from other utterances' {layer_names}")
        feats.append(tensors)
    return FeatureSet(ids=[r["id"] for r in records], feats=feats, layer_names=layer_names, frame_shift=frame_shift)


def _lazy_set(folder: Path, rows: dict[str, dict], meta: dict, records: Sequence[dict], frame_shift: int) -> FeatureSet:
    """A FeatureSet over :class:`LazyFeatures`; the layer names come from the index (checked for
    every row now) and the first utterance (read once)."""
    index = folder / "index.tsv"
    entries = []
    first: list[str] | None = None
    layer_names: list[str] = []
    for rec in records:
        row = rows[rec["id"]]
        where = _where(index, rec["id"])
        names = _row_layers(row, meta)
        if first is None:
            first = names
            tensors = _load_entry(folder, row["path"], names, where)
            layer_names = names
            if len(names) != len(tensors):
                layer_names = _unnamed_layers(len(tensors))
        elif names != first:
            raise ValueError(f"{where}: layers {names} differ from other utterances' {first}")
        try:
            frames = int(row.get("frames") or 0) or None
        except ValueError:
            frames = None
        entries.append((where, row["path"], names, frames))
    if first is None:
        raise ValueError("no utterance to load")
    return FeatureSet(ids=[r["id"] for r in records], feats=LazyFeatures(folder, entries, len(layer_names)),
                      layer_names=layer_names, frame_shift=frame_shift)


class LabelMap:
    """Class names <-> indices, fixed from the training set (sorted names)."""

    def __init__(self, labels: Sequence[str]):
        self.labels = [str(x) for x in labels]
        self.index = {name: i for i, name in enumerate(self.labels)}

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_records(cls, records: Sequence[dict], field: str, where: str = "train") -> LabelMap:
        values: set[str] = set()
        for rec in records:
            values.update(_label_values(rec, field, where))
        if len(values) < 2:
            raise ValueError(f"{where}: label {field!r} needs at least 2 classes, found {sorted(values)}")
        return cls(sorted(values))

    def check(self, records: Sequence[dict], field: str, where: str) -> None:
        """Raise naming every label of ``records`` that the training set did not have."""
        unseen: dict[str, list[str]] = {}
        for rec in records:
            for value in _label_values(rec, field, where):
                if value not in self.index:
                    unseen.setdefault(value, []).append(rec["id"])
        if unseen:
            detail = "; ".join(f"{k!r} ({len(v)} utt., e.g. {v[0]})" for k, v in sorted(unseen.items()))
            raise ValueError(
                f"{where}: label(s) of {field!r} unseen in train: {detail}. Train labels: {self.labels}"
            )

    def encode(self, rec: dict, field: str, where: str) -> int | list[int]:
        value = rec.get(field)
        if isinstance(value, (list, tuple)):
            return [self.index[str(v)] for v in value]
        return self.index[str(value)]


def _label_values(rec: dict, field: str, where: str) -> list[str]:
    if field not in rec or rec[field] is None:
        raise KeyError(f"{where}: utterance {rec.get('id')!r} has no label field {field!r}; fields: {sorted(rec)}")
    value = rec[field]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def frame_targets(labels: Sequence[int], num_frames: int, frame_shift: int, label_shift: int) -> torch.Tensor:
    """Map a frame-label sequence (one label every ``label_shift`` samples) to ``num_frames``
    encoder frames (one every ``frame_shift`` samples); frames past the labels get -100 (ignored)."""
    label_shift = label_shift or frame_shift
    idx = (torch.arange(num_frames) * frame_shift) // label_shift
    lab = torch.as_tensor(list(labels), dtype=torch.long)
    out = torch.full((num_frames,), -100, dtype=torch.long)
    ok = idx < lab.numel()
    out[ok] = lab[idx[ok]]
    return out
