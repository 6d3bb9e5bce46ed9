"""Defaults of :func:`speechssl.data.prepare.prepare_folder`, without its audio imports.

``speechssl prepare --help`` shows them; :mod:`speechssl.data.prepare` (soundfile, torch) uses them.
"""

from __future__ import annotations

#: Extensions scanned by default (``sph`` works when libsndfile can decode it, i.e. not shorten).
DEFAULT_EXTENSIONS: tuple[str, ...] = ("wav", "flac", "ogg", "mp3", "sph")
#: ``check_audio``: a file whose absolute peak stays below this is ``silent``. 1e-4 (-80 dBFS) is
#: about 3 steps of 16-bit PCM, so dither or a faint hum is kept while digital zeros are not.
DEFAULT_SILENCE_PEAK = 1e-4
