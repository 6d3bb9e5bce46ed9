"""How layers are chosen, in one grammar for every caller.

``load_encoder(..., layers=...)``, ``speechssl extract --layers``, the downstream Featurizer
(``featurizer.layers``) and the layers recorded in ``results.json`` all go through
:class:`LayerSelection`::

    LayerSelection.parse("all")               # every layer
    LayerSelection.parse("context,latent")    # names, in the order given
    LayerSelection.parse([-1, 1])             # indices into the encoder's layer names (-1 = last)
    LayerSelection.parse("last")              # the last layer, whatever it is called

Items are layer names (``latent``, ``layer_3``, ``context``, ``features``), integers (negative
count from the end) or aliases: ``context`` and ``last`` mean the last layer and ``latent`` the
first one when the encoder has no layer of that exact name (a log-Mel baseline has one layer,
``features``). Ranges are not part of the grammar.

An encoder may also say that one of its layers is the very same tensor as another one (APC's and
CPC's ``context`` is their last ``layer_N``): :meth:`LayerSelection.for_weighted_sum` leaves such
an alias out of ``all`` so that it does not get a double share of a learned weighted sum.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

ALL = "all"
# alias -> which end of the layer list it means when no layer has that exact name
ALIASES = {"context": -1, "last": -1, "latent": 0}


class UnknownLayerError(ValueError, KeyError):
    """A selection names a layer the encoder does not have (a ValueError and a KeyError)."""

    __str__ = Exception.__str__  # KeyError would print the message with quotes


@dataclasses.dataclass(frozen=True)
class ResolvedLayers:
    """A selection applied to one encoder's layers.

    Attributes:
        indices: positions in the encoder's ``layer_names``, in selection order.
        names: the name of each selected layer as requested (``context`` stays ``context`` on a
            baseline whose only layer is ``features``).
        canonical: the encoder's own name of each selected layer.
    """

    indices: list[int]
    names: list[str]
    canonical: list[str]


@dataclasses.dataclass(frozen=True)
class LayerSelection:
    """A parsed layer selection: ``items`` is None for ``all``, else names/aliases and ints."""

    items: tuple[str | int, ...] | None = None

    @classmethod
    def parse(cls, spec: Any, where: str = "layers") -> LayerSelection:
        """``None`` / ``"all"`` / ``"a,b"`` / ``["a", 2]`` / a LayerSelection -> LayerSelection.

        Raises ValueError (naming ``where``) for an empty selection, a repeated item or an item
        that is neither a name nor an integer."""
        if isinstance(spec, LayerSelection):
            return spec
        if spec is None or (isinstance(spec, str) and spec.strip() == ALL):
            return cls(None)
        if isinstance(spec, int) and not isinstance(spec, bool):
            raw: list[Any] = [spec]
        elif isinstance(spec, str):
            raw = [part for part in spec.split(",")]
        elif isinstance(spec, Sequence):
            raw = list(spec)
        else:
            raise ValueError(f"{where}: expected 'all', a comma-separated string or a list, got {spec!r}")
        items: list[str | int] = []
        for item in raw:
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise ValueError(f"{where}: a layer is a name or an integer index, got {item!r}")
            key: str | int = item.strip() if isinstance(item, str) else item
            if isinstance(key, str) and key.lstrip("-").isdigit():
                key = int(key)
            if key == "":
                raise ValueError(f"{where}: empty layer name in {spec!r}")
            if key == ALL:
                raise ValueError(f"{where}: 'all' cannot be combined with other layers in {spec!r}")
            if key in items:
                raise ValueError(f"{where}: {key!r} is selected twice")
            items.append(key)
        if not items:
            raise ValueError(f"{where}: empty selection (give 'all' or layer names)")
        return cls(tuple(items))

    @property
    def is_all(self) -> bool:
        return self.items is None

    def to_spec(self) -> str | list[str | int]:
        """The plain form stored in configs and JSON: ``"all"`` or the list of items."""
        return ALL if self.items is None else list(self.items)

    def __str__(self) -> str:
        return ALL if self.items is None else ",".join(map(str, self.items))

    def resolve(self, available: Sequence[str], where: str = "layers") -> ResolvedLayers:
        """Apply the selection to an encoder with layers ``available`` (in output order).

        Raises:
            UnknownLayerError: a name that is neither a layer nor an alias, or an index out of
                range; the message lists the available layers.
            ValueError: two items that mean the same layer (``-1`` and ``context``).
        """
        available = list(available)
        listed = ", ".join(available)
        if self.items is None:
            return ResolvedLayers(list(range(len(available))), available, available)
        indices: list[int] = []
        names: list[str] = []
        for key in self.items:
            if isinstance(key, int):
                if not -len(available) <= key < len(available):
                    raise UnknownLayerError(
                        f"{where}: index {key} is out of range for {len(available)} layers ({listed})")
                idx, name = key % len(available), available[key]
            elif key in available:
                idx, name = available.index(key), key
            elif key in ALIASES:
                idx, name = ALIASES[key] % len(available), key
            else:
                raise UnknownLayerError(f"{where}: unknown layer {key!r}; layers: {listed} (or 'all')")
            if idx in indices:
                raise ValueError(f"{where}: {available[idx]!r} is selected twice ({names[indices.index(idx)]!r} "
                                 f"and {key!r})")
            indices.append(idx)
            names.append(name)
        return ResolvedLayers(indices, names, [available[i] for i in indices])

    def for_weighted_sum(self, available: Sequence[str], sizes: Sequence[int],
                         aliases: Mapping[str, str] | None = None,
                         where: str = "featurizer.layers") -> tuple[list[str], dict[str, list[str]]]:
        """The layers a weighted sum over ``available`` (hidden sizes ``sizes``) uses.

        An explicit selection is taken as given (canonical names) and must have one size. ``all``
        means every layer of the last layer's size that is not an alias of an earlier one
        (``aliases``: ``{layer: the layer it repeats}``). Returns (layer names, left out:
        ``{"size": [...], "alias": [...]}``) so that the caller can say what was left out.
        """
        resolved = self.resolve(available, where)
        chosen = list(resolved.canonical)
        dropped: dict[str, list[str]] = {"size": [], "alias": []}
        by_name = dict(zip(available, sizes))
        if self.is_all:
            # e.g. APC's 80-dim "latent" (log-Mel) beside 256-dim GRU layers: mix the layers of the
            # last layer's size
            keep = by_name[chosen[-1]]
            dropped["size"] = [n for n in chosen if by_name[n] != keep]
            chosen = [n for n in chosen if by_name[n] == keep]
            aliases = dict(aliases or {})
            dropped["alias"] = [n for i, n in enumerate(chosen) if aliases.get(n) in chosen[:i]]
            chosen = [n for n in chosen if n not in dropped["alias"]]
        picked = {n: by_name[n] for n in chosen}
        if len(set(picked.values())) != 1:
            raise ValueError(f"{where}: a weighted sum needs equal sizes, got {picked}; choose layers of one size")
        return chosen, dropped
