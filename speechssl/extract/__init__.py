"""Feature extraction with frozen encoders: batched, chunked, resumable, sharded.

See :mod:`speechssl.extract.encode` (``encode_records``: how an encoder runs over audio, for
extraction and for the downstream feature cache), :mod:`speechssl.extract.runner`
(``extract_features``), :mod:`speechssl.extract.writers` (output formats and layouts) and
:mod:`speechssl.extract.chunking` (long files, exact where the model allows).

The names below are imported from their submodule on first use (:mod:`speechssl.lazy`; the
``TYPE_CHECKING`` imports show them to IDEs and type checkers), so
importing :mod:`speechssl.extract.config` (what ``speechssl extract --help`` reads) loads no torch.
"""

from typing import TYPE_CHECKING

from speechssl.lazy import lazy_exports

if TYPE_CHECKING:  # seen by IDEs and type checkers only (`X as X`: a re-export); at run time __getattr__ imports
    from speechssl.extract.config import FORMATS as FORMATS
    from speechssl.extract.config import ExtractConfig as ExtractConfig
    from speechssl.extract.encode import EncodePolicy as EncodePolicy
    from speechssl.extract.encode import encode_records as encode_records
    from speechssl.extract.runner import INDEX_COLUMNS as INDEX_COLUMNS
    from speechssl.extract.runner import ExtractSummary as ExtractSummary
    from speechssl.extract.runner import extract_features as extract_features

# submodule -> the public names it defines
_EXPORTS = {
    "config": ["FORMATS", "ExtractConfig"],
    "encode": ["EncodePolicy", "encode_records"],
    "runner": ["INDEX_COLUMNS", "ExtractSummary", "extract_features"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
