"""Shared neural-network blocks, used by several model families (``speechssl.models``).

wav2vec 2.0-style blocks:

* :mod:`~speechssl.modules.conv` -- strided conv feature encoder / subsampler, exact frame arithmetic.
* :mod:`~speechssl.modules.transformer` -- positional conv + post-LN / pre-LN transformer (SDPA, LayerDrop).
* :mod:`~speechssl.modules.masking` -- vectorised span masking (``span_mask``).
* :mod:`~speechssl.modules.quantizer` -- Gumbel-softmax product quantizer (``GumbelVectorQuantizer``).
* :mod:`~speechssl.modules.contrastive` -- masked-frame InfoNCE with same-utterance distractors.

Shared by every family:

* :mod:`~speechssl.modules.linear` -- ``Linear`` / ``linear``: fp32 CPU matmuls through oneDNN (about 2x
  MKL on AMD CPUs, same numbers), fused GELU, oneDNN backward; :mod:`speechssl.accel` decides whether it runs
  (``SPEECHSSL_ONEDNN=0`` switches it off).
* :mod:`~speechssl.modules.padding` -- ``lengths_to_mask`` and ``pad_to_batch`` (used by every package).
* :mod:`~speechssl.modules.negatives` -- ``sample_in_groups``: the negative sampler of every contrastive loss.

Masked prediction of discrete targets (BEST-RQ, HuBERT):

* :mod:`~speechssl.modules.random_projection` -- ``RandomProjectionQuantizer``: frozen random projection +
  random codebook, nearest code by cosine (BEST-RQ's targets, saved with the model).
* :mod:`~speechssl.modules.masked_prediction` -- ``DiscreteTargetHead`` / ``LinearHead`` and
  ``masked_prediction_loss``: cross-entropy on masked frames, accuracy and target perplexity per codebook.
  HuBERT's cosine head (``CosineHead``) lives with the model in :mod:`speechssl.models.hubert`; its
  offline targets in :mod:`speechssl.targets`.

Teacher-student families (data2vec 2.0, BYOL-A, MoCo's momentum encoder):

* :mod:`~speechssl.modules.ema` -- ``EMATeacher``: a frozen EMA copy of part of a student, decay annealed per
  step, idempotent per step (exact resume), identical on every DDP rank; ``released_state`` keeps it out of
  released encoders (or puts it in the student's place with ``release: teacher``).

Recurrent and contrastive blocks of APC and CPC:

* :mod:`~speechssl.modules.recurrent` -- ``RNNStack``: GRU/LSTM layers with residuals over padded batches.
* :mod:`~speechssl.modules.gru` -- ``GRU``: an ``nn.GRU`` whose fp32 CPU path trains ~2.4x faster (custom
  backward, same numbers); :mod:`speechssl.accel` decides (``SPEECHSSL_FAST_GRU=0`` switches it off).
* :mod:`~speechssl.modules.causal` -- causal Transformer context network.
* :mod:`~speechssl.modules.infonce` -- CPC's InfoNCE over future latents and negative sampling.

Import blocks from their modules (``from speechssl.modules.quantizer import GumbelVectorQuantizer``).
"""
