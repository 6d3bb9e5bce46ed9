"""Feature extraction with frozen encoders: batched, chunked, resumable, sharded.

See :mod:`speechssl.extract.encode` (``encode_records``: how an encoder runs over audio, for
extraction and for the downstream feature cache), :mod:`speechssl.extract.runner`
(``extract_features``), :mod:`speechssl.extract.writers` (output formats and layouts) and
:mod:`speechssl.extract.chunking` (long files, exact where the model allows).

The names below are imported from their submodule on first use (:mod:`speechssl.lazy`), so
importing :mod:`speechssl.extract.config` (what ``speechssl extract --help`` reads) loads no torch.
"""

from speechssl.lazy import lazy_exports

# submodule -> the public names it defines
_EXPORTS = {
    "config": ["FORMATS", "ExtractConfig"],
    "encode": ["EncodePolicy", "encode_records"],
    "runner": ["INDEX_COLUMNS", "ExtractSummary", "extract_features"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
