"""Identity frontend (``waveform``): samples as 1-dim frames, for models with a conv feature encoder.

``[batch, samples] -> [batch, samples, 1]`` with ``frame_length = frame_shift = 1``. With
``normalize: true`` each utterance is standardised over its *valid* samples,
``(x - mean) / sqrt(var + 1e-5)`` (population variance), which equals fairseq wav2vec 2.0's
``normalize: true`` (``F.layer_norm(wav, wav.shape)``) on the unpadded utterance.
"""

from __future__ import annotations

import dataclasses

import torch

from speechssl.features.base import FRONTENDS, Frontend, FrontendSpec, check_batch, valid_sum
from speechssl.modules.padding import lengths_to_mask

NORM_EPS = 1e-5  # as torch.nn.functional.layer_norm


@dataclasses.dataclass
class WaveformConfig:
    normalize: bool = False  # zero mean, unit variance per utterance over valid samples


class Waveform(Frontend):
    """Waveform passthrough: feats [batch, samples, 1] (padding 0), feat_lengths = lengths."""

    name = "waveform"
    out_dim = 1
    frame_length = 1
    frame_shift = 1

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            wavs: [batch, samples] float at 16 kHz, zero-padded.
            lengths: [batch] valid samples (None: all full length).
        Returns:
            (Tensor, Tensor): [batch, samples, 1] float32, [batch] lengths.
        """
        wavs, lengths = check_batch(wavs, lengths, self.name)
        mask = lengths_to_mask(lengths, wavs.shape[1])
        x = wavs.masked_fill(~mask, 0.0)
        if self.config.normalize:
            count = lengths.clamp(min=1).double()[:, None]
            mean = (valid_sum(x[..., None], lengths)[..., 0] / count).to(x.dtype)  # [B, 1]
            centred = (x - mean).masked_fill(~mask, 0.0)
            var = (valid_sum(centred.pow(2)[..., None], lengths)[..., 0] / count).to(x.dtype)
            x = centred / torch.sqrt(var + NORM_EPS)
        return x.unsqueeze(-1), lengths


FRONTENDS.register("waveform", FrontendSpec(WaveformConfig, Waveform))
