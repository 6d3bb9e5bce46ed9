"""speechssl: speech self-supervised learning — pretrain, extract, evaluate."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_encoder"]


def load_encoder(path_or_name, **options):
    """Load a frozen encoder (see :func:`speechssl.upstream.load_encoder`)."""
    from speechssl.upstream import load_encoder as _load

    return _load(path_or_name, **options)
