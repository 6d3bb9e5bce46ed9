"""Seeded, batched augmentations on waveforms and log-Mel, shared by pretraining (SimCLR/COLA,
Barlow Twins, triplet, BYOL-A), downstream training and users' own code.

=====================  =====================================================================
waveform (``[B, L]``)  random crop / two crops with a minimum gap, gain, additive noise at a
                       sampled SNR (noise manifest or coloured noise), speed, tempo, pitch shift,
                       reverberation (synthetic RIRs), random EQ, band-limiting, mu-law codec,
                       polarity, time shift                         (:mod:`.waveform`)
log-Mel (``[B, T, F]``) SpecAugment time / frequency masks, BYOL-A mixup against a memory of
                       past examples, BYOL-A random resize crop     (:mod:`.spectrogram`)
=====================  =====================================================================

:class:`WaveformAugment` / :class:`SpectrogramAugment` (:mod:`.pipeline`) compose them from an
:class:`AugmentConfig` (:mod:`.config`: each augmentation's probability and range, from YAML);
``speechssl augment`` writes examples to listen to and look at (:mod:`.render`).

Why not a library. audiomentations (0.43, numpy) works on one example at a time on the CPU and draws
from Python's/numpy's global RNGs, so it neither batches nor resumes bit-exactly from a torch
checkpoint. torch-audiomentations (0.12, torch) batches, but draws from the global torch RNG inside
``torch.distributions`` without a generator argument, is not in this environment's package list
and pulls julius and torch-pitch-shift (whose pitch shift resamples by arbitrary ratios, slow on a
CPU); its SNR is over the padded tensor, not the valid samples; neither has SpecAugment with
lengths or BYOL-A's mixup / resize crop. Each augmentation here is a few lines on top of
torchaudio's functional ops (``resample``, ``phase_vocoder``, ``fftconvolve``), which are batched,
maintained with torch and already a dependency; every draw takes an optional ``torch.Generator``
and falls back to the global torch RNG that the Trainer checkpoints.

Why a statistical RIR and not pyroomacoustics. Pyroomacoustics' image-source simulation needs a
compiled extension and room geometry per draw (milliseconds to seconds per RIR on a CPU), while what
matters for robustness to rooms is the reverberation time and the direct-to-reverberant ratio; an
exponentially decaying Gaussian tail (Polack's model, as in Kaldi's and torchaudio's simulated
RIR recipes for late reverberation) controls exactly those two, batched, in microseconds. Measured
RIR sets can be added the same way as the noise manifest.
"""

from speechssl.augment.config import (
    AugmentConfig,
    SpectrogramAugmentConfig,
    WaveformAugmentConfig,
    augment_config,
    default_augment,
)
from speechssl.augment.pipeline import SpectrogramAugment, WaveformAugment
from speechssl.augment.spectrogram import MixupMemory, mask_along_axis, random_resize_crop
from speechssl.augment.waveform import random_crop, two_crops

__all__ = [
    "AugmentConfig", "MixupMemory", "SpectrogramAugment", "SpectrogramAugmentConfig", "WaveformAugment",
    "WaveformAugmentConfig", "augment_config", "default_augment", "mask_along_axis", "random_crop",
    "random_resize_crop", "two_crops",
]
