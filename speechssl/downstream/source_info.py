"""What a feature source says about its encoder besides the features, for either kind of source.

* the encoder's **role** (``ssl`` | ``control`` | ``baseline``, with ``control_of`` and an
  ``architecture`` hash), which ``describe()`` puts into results.json for the summary;
* its **layer aliases** (``{"context": "layer_3"}``: a layer that is the very same tensor as an
  earlier one), which a weighted sum over ``all`` leaves out;
* a one-line error naming the file when a ``.pt`` feature file holds pickled objects.

An encoder source asks the :class:`~speechssl.upstream.Encoder`; a ``speechssl extract`` folder
reads ``extract.json`` (``role`` / ``layer_aliases`` when recorded), else the released encoder the
features came from; when neither can tell, the role is None (the summary falls back to names) and
the aliases None (``run_experiment`` compares the first utterance's layers).
"""

from __future__ import annotations

import csv
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from speechssl.downstream.features import FeatureSet, load_precomputed

UNKNOWN_ROLE = {"role": None, "control_of": None, "architecture": None}


def encoder_role_info(encoder: Any) -> dict:
    """``{"role", "control_of", "architecture"}`` of a speechssl Encoder; all None for other modules."""
    from speechssl.upstream import Encoder

    return encoder.role_info() if isinstance(encoder, Encoder) else dict(UNKNOWN_ROLE)


def encoder_layer_aliases(encoder: Any) -> dict[str, str] | None:
    """A speechssl Encoder's structural aliases among its selected layers; None for other modules."""
    from speechssl.upstream import Encoder

    return encoder.layer_aliases if isinstance(encoder, Encoder) else None


def features_role_info(meta: Mapping[str, Any], spec: str | None) -> dict:
    """The role of the encoder a feature folder came from: ``extract.json``'s ``role`` when recorded,
    ``baseline`` for a baseline's features, else the ``config.json`` of the released encoder
    ``spec`` (the ``--encoder`` given with the features, else extract.json's ``encoder``)."""
    if meta.get("role"):
        return {**UNKNOWN_ROLE, **{k: meta[k] for k in UNKNOWN_ROLE if k in meta}}
    if meta.get("kind") == "baseline":
        return {**UNKNOWN_ROLE, "role": "baseline"}
    if spec and (Path(spec) / "config.json").is_file():
        from speechssl.upstream.release import ReleaseError, encoder_role, read_release_config

        try:
            return encoder_role(read_release_config(spec))
        except ReleaseError:
            return dict(UNKNOWN_ROLE)
    return dict(UNKNOWN_ROLE)


def features_layer_aliases(meta: Mapping[str, Any]) -> dict[str, str] | None:
    """``extract.json``'s ``layer_aliases`` when recorded; None for folders that do not say."""
    aliases = meta.get("layer_aliases")
    return dict(aliases) if isinstance(aliases, dict) else None


def load_precomputed_checked(folder: Path, records: Sequence[dict], lazy: bool | None) -> FeatureSet:
    """:func:`~speechssl.downstream.features.load_precomputed`, with a ``.pt`` file that holds
    pickled objects beyond tensors (refused by ``weights_only=True``) named in a one-line ValueError."""
    try:
        return load_precomputed(folder, records, lazy)
    except pickle.UnpicklingError:
        raise ValueError(_unsafe_pt_message(Path(folder), records)) from None


def _unsafe_pt_message(folder: Path, records: Sequence[dict]) -> str:
    """Which ``.pt`` feature file of ``records`` holds pickled objects beyond tensors (found by
    loading each with ``weights_only=True`` again; only on this error path)."""
    with open(folder / "index.tsv", newline="", encoding="utf-8") as f:
        rows = {row["id"]: row for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)}
    wanted = {r["id"] for r in records}
    for uid, row in rows.items():
        path = folder / str(row.get("path") or "")
        if uid not in wanted or path.suffix != ".pt" or not path.is_file():
            continue
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            return (f"{path} (id {uid!r} in {folder / 'index.tsv'}): not plain tensors; .pt features are read "
                    "with torch.load(weights_only=True), which refuses pickled objects that could run code; "
                    "write features with `speechssl extract --format pt` (or npy)")
    return f"{folder}: a .pt feature file holds pickled objects beyond tensors (refused by weights_only=True)"
