"""Frozen encoders as upstreams: :func:`load_encoder`, :class:`Encoder`, baselines, releases.

See :mod:`speechssl.upstream.loading` for what ``load_encoder`` accepts and
:mod:`speechssl.upstream.encoder` for the ``Encoder`` interface.
"""

from speechssl.upstream.encoder import Encoder, EncoderOptions
from speechssl.upstream.loading import EncoderLoadError, load_checkpoint_model, load_encoder

__all__ = ["Encoder", "EncoderLoadError", "EncoderOptions", "load_checkpoint_model", "load_encoder"]
