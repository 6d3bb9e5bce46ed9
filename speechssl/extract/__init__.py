"""Feature extraction with frozen encoders: batched, chunked, resumable, sharded.

See :mod:`speechssl.extract.runner` (``extract_features``), :mod:`speechssl.extract.writers`
(output formats and layouts) and :mod:`speechssl.extract.chunking` (long files).
"""

from speechssl.extract.runner import INDEX_COLUMNS, ExtractConfig, ExtractSummary, extract_features
from speechssl.extract.writers import FORMATS

__all__ = ["FORMATS", "INDEX_COLUMNS", "ExtractConfig", "ExtractSummary", "extract_features"]
