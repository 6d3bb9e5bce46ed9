"""Where downstream features come from: a frozen encoder, or a ``speechssl extract`` folder.

Usage::

    from speechssl.downstream import open_source
    source = open_source("logmel")            # an encoder name or folder -> EncoderSource
    source = open_source("exp/feats")         # a folder with index.tsv  -> PrecomputedSource
    fs = source.features(records)             # FeatureSet: per utterance, per layer [frames, dim]

Every source satisfies :class:`FeatureSource`; protocols, ``run_experiment`` and ``predict`` use
only that interface, so a new kind of source (say, features streamed from a server) is one class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from speechssl.downstream.feature_cache import EncoderFeatureCache
from speechssl.downstream.features import FeatureSet
from speechssl.downstream.model import DownstreamConfig
from speechssl.downstream.precomputed import LazyFeatures, load_precomputed
from speechssl.downstream.source_info import (
    encoder_layer_aliases,
    encoder_role_info,
    features_layer_aliases,
    features_role_info,
)
from speechssl.utils import checked_device

CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FEATURES_IN_MEMORY = {"auto": None, "always": False, "never": True}  # -> load_precomputed's ``lazy``


@runtime_checkable
class FeatureSource(Protocol):
    """Per-utterance hidden states for downstream training and scoring.

    Attributes:
        spec: the encoder as the user named it (a name or an absolute path), or None when a feature
            folder does not say which encoder wrote it.
    """

    spec: str | None

    def features(self, records: Sequence[dict], desc: str = "encoding", skip_failed: bool = False) -> FeatureSet:
        """Hidden states of ``records`` (manifest records; matched by ``id`` and audio path).

        An utterance without features (unreadable audio, too short, missing from a feature folder)
        raises, naming it; with ``skip_failed`` it is left out and listed in ``FeatureSet.failed``."""

    def describe(self) -> dict:
        """``spec``, ``options``, ``layer_names``, ``frame_shift``, ``features`` (the feature
        folder, or None) and the encoder's ``role``/``control_of``/``architecture`` for
        results.json and saved models."""

    def layer_aliases(self) -> dict[str, str] | None:
        """Layers that are the very same tensor as another (``context`` is ``layer_N`` in APC),
        so the weighted sum does not count them twice; None when the source cannot say."""

    def fingerprint(self) -> dict:
        """What identifies these features (weights or files), for reusing finished runs."""

    def release(self) -> None:
        """Drop features kept in memory (a protocol is done with this source)."""


class EncoderSource:
    """Features from a frozen encoder, computed once per utterance and cached in memory.

    Args:
        encoder: an :class:`~speechssl.upstream.Encoder` or any module with ``forward(wavs [B, L],
            lengths [B]) -> EncoderOutput``.
        spec: its name for results and saved models.
        options: the ``load_encoder`` options it was loaded with (recorded, for ``predict``).
        batch_size, dtype, device: see ``DownstreamConfig.encode``.
        progress: a bar while encoding on a terminal (``--quiet``: off; log lines every 30 s either way).
    """

    def __init__(self, encoder: nn.Module, spec: str, options: Mapping[str, Any] | None = None, batch_size: int = 8,
                 dtype: str = "float32", device: str = "cpu", progress: bool = True):
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"encode.dtype: expected one of {', '.join(CACHE_DTYPES)}, got {dtype!r}")
        self.spec: str | None = spec
        self.options = dict(options or {})
        self.cache = EncoderFeatureCache(encoder.to(checked_device(device, "encode.device")), batch_size,
                                         CACHE_DTYPES[dtype], device, name=spec)
        self._weights: str | list | None = None  # see fingerprint()
        self.progress = progress

    def features(self, records: Sequence[dict], desc: str = "encoding", skip_failed: bool = False) -> FeatureSet:
        return self.cache.features(records, desc, skip_failed=skip_failed, bar=self.progress)

    def describe(self) -> dict:
        weights = self.fingerprint()["weights"]
        return {"spec": self.spec, "options": self.options, "layer_names": self.cache.layer_names,
                "frame_shift": self.cache.frame_shift, "features": None,
                "weights_sha256": weights if isinstance(weights, str) else None,
                **encoder_role_info(self.cache.encoder)}

    def layer_aliases(self) -> dict[str, str] | None:
        return encoder_layer_aliases(self.cache.encoder)

    def fingerprint(self) -> dict:
        """What identifies this encoder's features (see ``run_key``): its weights' SHA-256 when
        it is a speechssl Encoder (content, computed once), else the sizes and times of its files."""
        from speechssl.upstream import Encoder

        if self._weights is None:
            encoder = self.cache.encoder
            self._weights = encoder.weights_sha256() if isinstance(encoder, Encoder) else file_stamps(self.spec)
        return {"spec": self.spec, "options": self.options, "weights": self._weights, "dtype": str(self.cache.dtype)}

    def release(self) -> None:
        old = self.cache
        self.cache = EncoderFeatureCache(old.encoder, old.batch_size, old.dtype, old.device, name=old.name,
                                         chunk_seconds=old.chunk_seconds, overlap_seconds=old.overlap_seconds)
        self.cache.layer_names, self.cache.frame_shift = old.layer_names, old.frame_shift  # for describe()


class PrecomputedSource:
    """Features written by ``speechssl extract`` (a folder with ``index.tsv``).

    Args:
        folder: the extract output folder.
        encoder_spec: the encoder's name for results (default: the one in ``extract.json``).
        lazy: see :func:`~speechssl.downstream.precomputed.load_precomputed` (None: in memory when they fit).
    """

    def __init__(self, folder: str | Path, encoder_spec: str | None = None, lazy: bool | None = None):
        from speechssl.downstream.precomputed import _read_meta

        self.folder = Path(folder).resolve()
        self.lazy = lazy
        self.meta = _read_meta(self.folder)
        recorded = self.meta.get("encoder")
        self.spec = encoder_spec or (str(recorded) if recorded else None)
        self._cache: dict[str, list[torch.Tensor]] = {}
        self._meta: FeatureSet | None = None

    def features(self, records: Sequence[dict], desc: str = "loading", skip_failed: bool = False) -> FeatureSet:
        failed: dict[str, str] = {}
        if skip_failed:  # utterances `extract` listed in errors.tsv; any other missing id still raises
            failed = {r["id"]: f"{self.folder / 'errors.tsv'}: {self.extract_errors[r['id']]}"
                      for r in records if r["id"] in self.extract_errors}
            records = [r for r in records if r["id"] not in failed]
            if not records:
                raise ValueError(f"{self.folder}: none of the {len(failed)} utterance(s) has features "
                                 f"(all are in errors.tsv; e.g. {next(iter(failed.values()))})")
        todo = [r for r in records if r["id"] not in self._cache]
        if todo:
            fs = load_precomputed(self.folder, todo, self.lazy)
            self._meta = fs
            if isinstance(fs.feats, LazyFeatures):  # too big for memory: nothing is kept, all read on use
                fs = fs if len(todo) == len(records) else load_precomputed(self.folder, records, lazy=True)
                fs.failed = failed
                return fs
            self._cache.update(zip(fs.ids, fs.feats))
        if self._meta is None:
            raise ValueError("no utterance to load")
        return FeatureSet([r["id"] for r in records], [self._cache[r["id"]] for r in records],
                          self._meta.layer_names, self._meta.frame_shift, failed)

    @property
    def extract_errors(self) -> dict[str, str]:
        """``id -> reason`` of the utterances ``speechssl extract`` could not encode (its errors.tsv)."""
        from speechssl.downstream.precomputed import _extract_errors

        return _extract_errors(self.folder)

    def describe(self) -> dict:
        return {"spec": self.spec, "options": {}, "layer_names": self._meta.layer_names if self._meta else None,
                "frame_shift": self._meta.frame_shift if self._meta else None, "features": str(self.folder),
                "weights_sha256": self.meta.get("weights_sha256"),  # of the encoder extract ran
                **features_role_info(self.meta, self.spec)}

    def layer_aliases(self) -> dict[str, str] | None:
        return features_layer_aliases(self.meta)

    def fingerprint(self) -> dict:
        return {"spec": self.spec, "features": str(self.folder),
                "files": file_stamps(self.folder / "index.tsv") + file_stamps(self.folder / "extract.json")}

    def release(self) -> None:
        self._cache.clear()


def file_stamps(path: str | Path | None) -> list:
    """(name, size, mtime in ns) of a file, or of every file below a folder: a re-trained encoder
    or re-extracted features at the same path get another stamp. [] for names (``logmel``)."""
    if path is None:
        return []
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        return []
    out = []
    for f in files:
        st = f.stat()
        out.append([str(f.relative_to(path)) if f != path else f.name, st.st_size, st.st_mtime_ns])
    return out


def resolve_encoder_spec(spec: str) -> str:
    """An existing path becomes absolute (so a saved model finds it from anywhere); names stay."""
    path = Path(spec)
    return str(path.resolve()) if path.exists() else spec


def is_feature_folder(path: str | Path) -> bool:
    """Whether ``path`` is a ``speechssl extract`` output folder (it has ``index.tsv``)."""
    return (Path(path) / "index.tsv").is_file()


def open_source(path_or_name: str | Path | None = None, features: str | Path | None = None, *,
                batch_size: int = 8, dtype: str = "float32", device: str = "cpu",
                encoder_options: Mapping[str, Any] | None = None, features_in_memory: str = "auto",
                progress: bool = True) -> FeatureSource:
    """The :class:`FeatureSource` for an encoder or a feature folder.

    Args:
        path_or_name: a ``speechssl extract`` folder (has ``index.tsv``) -> :class:`PrecomputedSource`;
            else anything :func:`speechssl.load_encoder` takes (``logmel``, a released encoder or
            experiment folder, a checkpoint) -> :class:`EncoderSource`.
        features: a feature folder given explicitly (``--features DIR``); ``path_or_name`` then only
            names the encoder that wrote it.
        batch_size, dtype, device: encoders only (``DownstreamConfig.encode``).
        encoder_options: ``load_encoder`` options (``layers``, ``precision``...); encoders only.
        features_in_memory: feature folders only: ``auto`` (in memory when they fit), ``always`` or
            ``never`` (read from disk when used).
        progress: encoders only: a bar while encoding on a terminal (log lines every 30 s either way).
    """
    if features_in_memory not in FEATURES_IN_MEMORY:
        raise ValueError(f"features_in_memory: expected auto, always or never, got {features_in_memory!r}")
    lazy = FEATURES_IN_MEMORY[features_in_memory]
    if features:
        name = resolve_encoder_spec(str(path_or_name)) if path_or_name else None
        return PrecomputedSource(features, name, lazy)
    if path_or_name is None or not str(path_or_name):
        raise ValueError("give an encoder (--encoder NAME|DIR) or precomputed features (--features DIR)")
    path = Path(path_or_name)
    if is_feature_folder(path):
        return PrecomputedSource(path, None, lazy)
    if (path / "extract.json").is_file():
        raise ValueError(f"{path}: a `speechssl extract` folder without index.tsv (an unfinished extraction?); "
                         "rerun the extraction to finish it")
    import speechssl

    spec = resolve_encoder_spec(str(path_or_name))
    enc = speechssl.load_encoder(spec, **dict(encoder_options or {}))
    return EncoderSource(enc, spec, encoder_options, batch_size, dtype, device, progress)


def source_from_config(cfg: DownstreamConfig, encoder: str | None, features: str | Path | None = None,
                       progress: bool = True) -> FeatureSource:
    """:func:`open_source` with the ``encode`` section of a downstream config."""
    return open_source(encoder, features, batch_size=cfg.encode.batch_size, dtype=cfg.encode.dtype,
                       device=cfg.encode.device, features_in_memory=cfg.encode.features_in_memory, progress=progress)
