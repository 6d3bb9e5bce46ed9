"""Package ``__init__`` files that export their submodules' names without importing them at load.

:mod:`speechssl.data` and :mod:`speechssl.extract` export functions whose modules import torch
(about 2.5 s). Importing a package runs its ``__init__`` first, so with eager re-exports even a
light submodule of theirs (``speechssl.extract.config``, which ``speechssl extract --help``
reads) would load torch. Their ``__init__`` instead defines a PEP 562 module ``__getattr__``
from a table of submodule -> the public names it defines, so ``from speechssl.data import read_manifest`` works
as before and imports ``speechssl.data.manifest`` at that moment.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, Iterable[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the module ``package``.

    Args:
        package: the package's ``__name__``.
        exports: submodule, relative to ``package`` -> the public names it defines
            (``{"manifest": ["read_manifest", "write_manifest"]}``).
    Returns:
        ``(__getattr__, __dir__)`` to assign at the package's top level. ``__getattr__`` imports
        the submodule on the first access of a name and stores the value in the package, so later
        accesses are plain attribute lookups; an unknown name raises ``AttributeError``.
    """

    where = {name: submodule for submodule, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        submodule = where.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{submodule}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
