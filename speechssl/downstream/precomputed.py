"""Features written by ``speechssl extract`` (npy, pt, HDF5 or Kaldi ark, listed in ``index.tsv``)
as a :class:`~speechssl.downstream.features.FeatureSet`: loaded into memory, or, when they do not
fit, read from disk each time they are used (:class:`LazyFeatures`). Damaged or foreign files are
one-line errors naming the file and the utterance."""

from __future__ import annotations

import csv
import json
import logging
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechssl.downstream.features import FeatureSet
from speechssl.downstream.memory import available_memory_bytes, size_text

logger = logging.getLogger(__name__)


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
                folder / "index.tsv", len(records), size_text(need), size_text(available))
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
