"""Frozen encoders as upstreams: :func:`load_encoder`, :class:`Encoder`, baselines, releases, importers.

See :mod:`speechssl.upstream.loading` for what ``load_encoder`` accepts and
:mod:`speechssl.upstream.encoder` for the ``Encoder`` interface. The importers
(:mod:`speechssl.upstream.importers`) turn torchaudio and Hugging Face wav2vec 2.0 / HuBERT models
or folders into speechssl models; :func:`save_encoder` writes one as a released encoder folder.
"""

from speechssl.upstream.encoder import Encoder, EncoderOptions
from speechssl.upstream.importers import ForeignCheckpointError, from_hf, from_torchaudio, load_foreign
from speechssl.upstream.loading import (
    EncoderLoadError,
    as_ssl_model,
    load_checkpoint_model,
    load_encoder,
    save_encoder,
)

__all__ = [
    "Encoder",
    "EncoderLoadError",
    "EncoderOptions",
    "ForeignCheckpointError",
    "as_ssl_model",
    "from_hf",
    "from_torchaudio",
    "load_checkpoint_model",
    "load_encoder",
    "load_foreign",
    "save_encoder",
]
