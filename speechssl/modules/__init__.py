"""Shared neural-network blocks, used by several model families (``speechssl.models``).

wav2vec 2.0-style blocks:

* :mod:`~speechssl.modules.conv` -- strided conv feature encoder / subsampler, exact frame arithmetic.
* :mod:`~speechssl.modules.transformer` -- positional conv + post-LN / pre-LN transformer (SDPA, LayerDrop).
* :mod:`~speechssl.modules.masking` -- vectorised span masking (``span_mask``).
* :mod:`~speechssl.modules.quantizer` -- Gumbel-softmax product quantizer (``GumbelVectorQuantizer``).
* :mod:`~speechssl.modules.contrastive` -- masked-frame InfoNCE with same-utterance distractors.

Shared by every family:

* :mod:`~speechssl.modules.linear` -- ``Linear`` / ``linear``: fp32 CPU matmuls through oneDNN (about 2x
  MKL on AMD CPUs, same numbers), fused GELU, oneDNN backward; ``SPEECHSSL_ONEDNN=0`` switches it off.

Import blocks from their modules (``from speechssl.modules.quantizer import GumbelVectorQuantizer``).
"""
