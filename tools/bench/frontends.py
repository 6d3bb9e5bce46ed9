"""Frontend benchmark: speechssl log-Mel / fbank vs torchaudio and librosa, same parameters.

Usage:
  .venv/bin/python tools/bench/run_all.py --only frontends --out bench

``run(spec)`` times, side by side in one process (interleaved repetitions, median after warm-up):

* log-Mel (80 bands, 400-sample Hann window, hop 160, no centring, Slaney scale and norm,
  ``log(max(x, 1e-6))``): ``speechssl.features.build_frontend({"name": "logmel"})`` on the batch,
  ``torchaudio.transforms.MelSpectrogram`` + log on the batch, ``librosa.feature.melspectrogram``
  on the batch (librosa accepts ``[..., samples]`` arrays) + log;
* Kaldi fbank (80 bins, torchaudio defaults otherwise, dither 0): speechssl on the batch vs
  ``torchaudio.compliance.kaldi.fbank`` one utterance at a time (its API takes one waveform).

Outputs are checked against each other: the max absolute difference of the log values is recorded.
"""

from __future__ import annotations

import numpy as np
import torch
from common import SAMPLE_RATE, compare, summarise, synth_signal


def _batch(num: int, seconds: float) -> torch.Tensor:
    return torch.from_numpy(np.stack([synth_signal(seconds, 100 + i) for i in range(num)]))


def run(spec: dict) -> dict:
    """spec: ``num_utts``, ``seconds``, ``repeats``, ``threads``. Returns timings, ratios and max |diff|."""
    import librosa
    import torchaudio
    from torchaudio.compliance import kaldi as ta_kaldi

    from speechssl.features import build_frontend
    from speechssl.features.kaldi import FbankConfig, kaldi_kwargs

    torch.set_num_threads(spec["threads"])
    wavs = _batch(spec["num_utts"], spec["seconds"])
    lengths = torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long)
    audio_seconds = wavs.numel() / SAMPLE_RATE
    floor = 1e-6

    ours_mel = build_frontend({"name": "logmel", "n_mels": 80}).eval()
    ta_mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=SAMPLE_RATE, n_fft=400, win_length=400, hop_length=160, f_min=0.0, f_max=None, n_mels=80,
        center=False, power=2.0, norm="slaney", mel_scale="slaney")
    wavs_np = wavs.numpy()

    def speechssl_logmel():
        return ours_mel(wavs, lengths)[0]

    def torchaudio_logmel():
        return ta_mel(wavs).clamp(min=floor).log().transpose(1, 2)

    def librosa_logmel():
        m = librosa.feature.melspectrogram(y=wavs_np, sr=SAMPLE_RATE, n_fft=400, hop_length=160, win_length=400,
                                           center=False, power=2.0, n_mels=80, htk=False, norm="slaney")
        return np.log(np.maximum(m, floor)).transpose(0, 2, 1)

    out: dict = {"audio_seconds": audio_seconds, "batch": list(wavs.shape)}
    with torch.inference_mode():
        ref = speechssl_logmel()
        diffs = {"torchaudio": float((ref - torchaudio_logmel()).abs().max()),
                 "librosa": float((ref - torch.from_numpy(librosa_logmel())).abs().max())}
        times = compare({"speechssl": speechssl_logmel, "torchaudio": torchaudio_logmel, "librosa": librosa_logmel},
                        repeats=spec["repeats"])
    mel = summarise(times, "torchaudio")
    fastest_other = min(mel["torchaudio"]["median_s"], mel["librosa"]["median_s"])
    out["logmel"] = {"times": mel, "max_abs_diff": diffs,
                     "speedup_vs_fastest_reference": round(fastest_other / mel["speechssl"]["median_s"], 3),
                     "rtf_speechssl": round(mel["speechssl"]["median_s"] / audio_seconds, 6)}

    fcfg = FbankConfig(num_mel_bins=80)
    ours_fb = build_frontend({"name": "fbank", "num_mel_bins": 80}).eval()
    kw = kaldi_kwargs(fcfg)

    def speechssl_fbank():
        return ours_fb(wavs, lengths)[0]

    def torchaudio_fbank():
        return torch.stack([ta_kaldi.fbank(w[None], **kw) for w in wavs])

    with torch.inference_mode():
        fb_diff = float((speechssl_fbank() - torchaudio_fbank()).abs().max())
        times = compare({"speechssl": speechssl_fbank, "torchaudio_kaldi": torchaudio_fbank}, repeats=spec["repeats"])
    fb = summarise(times, "torchaudio_kaldi")
    out["fbank"] = {"times": fb, "max_abs_diff": {"torchaudio_kaldi": fb_diff},
                    "speedup_vs_fastest_reference": fb["speechssl"]["speedup_vs_torchaudio_kaldi"],
                    "rtf_speechssl": round(fb["speechssl"]["median_s"] / audio_seconds, 6)}
    return out
