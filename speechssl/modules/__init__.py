"""Shared neural-network blocks, used by several model families (``speechssl.models``).

wav2vec 2.0-style blocks:

* :mod:`~speechssl.modules.conv` -- strided conv feature encoder / subsampler, exact frame arithmetic.
* :mod:`~speechssl.modules.transformer` -- positional conv + post-LN / pre-LN transformer (SDPA, LayerDrop).
* :mod:`~speechssl.modules.masking` -- vectorised span masking (``span_mask``).
* :mod:`~speechssl.modules.quantizer` -- Gumbel-softmax product quantizer (``GumbelVectorQuantizer``).
* :mod:`~speechssl.modules.contrastive` -- masked-frame InfoNCE with same-utterance distractors.

Import blocks from their modules (``from speechssl.modules.quantizer import GumbelVectorQuantizer``).
"""
