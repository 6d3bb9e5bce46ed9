"""What a feature source says about its encoder besides the features, for either kind of source.

* the encoder's **role** (``ssl`` | ``control`` | ``baseline``, with ``control_of`` and an
  ``architecture`` hash), which ``describe()`` puts into results.json for the summary;
* its **layer aliases** (``{"context": "layer_3"}``: a layer that is the very same tensor as an
  earlier one), which a weighted sum over ``all`` leaves out.

An encoder source asks the :class:`~speechssl.upstream.Encoder`; a ``speechssl extract`` folder
reads ``extract.json``, where extraction records both (``role``, ``control_of``, ``architecture``,
``layer_aliases``). Folders written before that are read as before: the role from the released
encoder the features came from, and no aliases (``run_experiment`` then compares the first
utterance's layers); when nothing tells, the role is None (the summary falls back to names).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
