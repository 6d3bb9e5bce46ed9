"""Explicit registries: a dict from a config's ``name:`` to a builder.

An unknown name fails loudly with the list of choices (``MODELS``, ``FRONTENDS``,
``HEADS`` are all instances of :class:`Registry`). Every registration -- ``REG.register(name, obj)``,
the ``@REG.register(name)`` decorator, or ``REG[name] = obj`` -- goes through one check, so a name
registered twice (two families claiming ``"hubert"``) fails at import instead of silently replacing
the first builder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

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

    def __setitem__(self, name: str, obj: V) -> None:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        super().__setitem__(name, obj)

    def update(self, *args: Any, **kwargs: V) -> None:
        for name, obj in dict(*args, **kwargs).items():
            self[name] = obj

    def setdefault(self, name: str, default: V) -> V:  # type: ignore[override]
        if name not in self:
            self[name] = default
        return self[name]

    def register(self, name: str, obj: V | None = None) -> V | Callable[[V], V]:
        """Register ``obj`` under ``name`` (``MODELS.register("apc", spec)``), or decorate:
        ``@HEADS.register("mlp")``. A name already registered raises ``ValueError``."""
        if obj is not None:
            self[name] = obj
            return obj

        def deco(obj: V) -> V:
            self[name] = obj
            return obj

        return deco

    @contextlib.contextmanager
    def replaced(self, name: str, obj: V) -> Iterator[V]:
        """Put ``obj`` under ``name`` for the ``with`` block only, then restore what was there (or
        nothing): for tests and experiments that swap a builder without a second registration."""
        missing = object()
        old = dict.get(self, name, missing)
        dict.__setitem__(self, name, obj)
        try:
            yield obj
        finally:
            if old is missing:
                dict.pop(self, name, None)
            else:
                dict.__setitem__(self, name, old)
