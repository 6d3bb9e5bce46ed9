"""Feature extraction with frozen encoders: batched, chunked, resumable, sharded.

See :mod:`speechssl.extract.encode` (``encode_records``: how an encoder runs over audio, for
extraction and for the downstream feature cache), :mod:`speechssl.extract.runner`
(``extract_features``), :mod:`speechssl.extract.writers` (output formats and layouts) and
:mod:`speechssl.extract.chunking` (long files, exact where the model allows).
"""

from speechssl.extract.encode import EncodePolicy, encode_records
from speechssl.extract.runner import INDEX_COLUMNS, ExtractConfig, ExtractSummary, extract_features
from speechssl.extract.writers import FORMATS

__all__ = [
    "FORMATS",
    "INDEX_COLUMNS",
    "EncodePolicy",
    "ExtractConfig",
    "ExtractSummary",
    "encode_records",
    "extract_features",
]
