"""Explicit registries: a dict from a config's ``name:`` to a builder.

An unknown name fails loudly with the list of choices (``MODELS``, ``FRONTENDS``,
``HEADS`` are all instances of :class:`Registry`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; ``str()`` lists the choices."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


class Registry(dict, Generic[V]):
    """A named ``dict`` whose lookups of unknown names list the registered choices."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def __missing__(self, name: str) -> V:
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}; choices: {', '.join(sorted(self)) or '(none registered)'}"
        )

    def register(self, name: str) -> Callable[[V], V]:
        """Decorator: ``@MODELS.register("apc")``."""

        def deco(obj: V) -> V:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = obj
            return obj

        return deco
