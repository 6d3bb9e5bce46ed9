"""Frontends: waveform -> frames. Importing this package registers the built-in frontends.

========  ==========================  ===========================================  =========
name      config                      output                                       shift
========  ==========================  ===========================================  =========
logmel    :class:`LogMelConfig`       [B, T, 80] log-Mel (slaney, n_fft 400)        160
fbank     :class:`FbankConfig`        [B, T, 80] Kaldi fbank (= torchaudio kaldi)   160
mfcc      :class:`MfccConfig`         [B, T, 39] Kaldi MFCC + deltas + delta-deltas 160
waveform  :class:`WaveformConfig`     [B, L, 1] samples (optionally normalised)    1
========  ==========================  ===========================================  =========

``build_frontend({"name": "fbank", "cmvn": "utterance"})``; frame counts follow
:func:`num_frames` (no centring). Global CMVN: :func:`compute_global_cmvn`.
"""

from speechssl.features.base import (
    FRONTENDS,
    SAMPLE_RATE,
    Frontend,
    FrontendSpec,
    build_frontend,
    check_batch,
    frame_mask,
    frame_signal,
    num_frames,
)
from speechssl.features.cmvn import CMVNFrontend, compute_global_cmvn, utterance_cmvn
from speechssl.features.kaldi import (
    FbankConfig,
    KaldiFbank,
    KaldiMfcc,
    MfccConfig,
    compute_deltas,
    kaldi_kwargs,
)
from speechssl.features.logmel import LogMel, LogMelConfig
from speechssl.features.waveform import Waveform, WaveformConfig

__all__ = [
    "FRONTENDS",
    "SAMPLE_RATE",
    "CMVNFrontend",
    "FbankConfig",
    "Frontend",
    "FrontendSpec",
    "KaldiFbank",
    "KaldiMfcc",
    "LogMel",
    "LogMelConfig",
    "MfccConfig",
    "Waveform",
    "WaveformConfig",
    "build_frontend",
    "check_batch",
    "compute_deltas",
    "compute_global_cmvn",
    "frame_mask",
    "frame_signal",
    "kaldi_kwargs",
    "num_frames",
    "utterance_cmvn",
]
