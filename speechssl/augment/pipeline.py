"""The composable pipelines: :class:`WaveformAugment` and :class:`SpectrogramAugment`.

Each is an ``nn.Module`` without parameters that a model holds (so the mixup memory travels in its
checkpoints) or that a user calls directly::

    from speechssl.augment import WaveformAugment, augment_config
    cfg = augment_config({"waveform": {"noise": {"p": 1.0, "min_snr_db": 5, "max_snr_db": 10}}})
    aug = WaveformAugment(cfg.waveform)
    g = torch.Generator().manual_seed(0)
    wavs2, lengths2 = aug(wavs, lengths, generator=g)          # wavs [B, L], lengths [B]

For every augmentation in order, each utterance of the batch flips its own coin (``p``) and draws its
own parameters from the configured range; the augmentation then runs once on the selected rows.
The draws are made for every row whatever the coins say, so the random stream, and with it every
later draw, does not depend on which rows were selected. ``return_params=True`` also returns what
was drawn (NaN for rows left alone), which ``speechssl augment`` prints.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from speechssl.augment import spectrogram as S
from speechssl.augment import waveform as W
from speechssl.augment.config import SpectrogramAugmentConfig, WaveformAugmentConfig


class WaveformAugment(nn.Module):
    """Waveform augmentations of ``cfg`` in ``cfg.order``; see the module docstring."""

    def __init__(self, cfg: WaveformAugmentConfig):
        super().__init__()
        self.cfg = cfg
        self.noise_bank = None
        if cfg.noise is not None and cfg.noise.manifest is not None:
            self.noise_bank = W.NoiseBank(cfg.noise.manifest, cfg.noise.max_noise_files)

    @property
    def enabled(self) -> list[str]:
        return self.cfg.enabled()

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None,
                return_params: bool = False):
        """wavs [B, L] zero-padded 16 kHz, lengths [B] -> (wavs' [B, L'], lengths' [B]) (+ params)."""
        if wavs.dim() != 2:
            raise ValueError(f"augment: expected wavs [batch, samples], got shape {tuple(wavs.shape)}")
        lengths = torch.as_tensor(lengths, device=wavs.device).long()
        params: dict[str, list[float]] = {}
        for name in self.enabled:
            op = getattr(self.cfg, name)
            rows = W.coin(wavs.shape[0], op.p, generator)
            wavs, lengths, drawn = getattr(self, f"_{name}")(wavs, lengths, rows, op, generator)
            params[name] = [float(v) if bool(r) else math.nan for v, r in zip(drawn, rows)]
        return (wavs, lengths, params) if return_params else (wavs, lengths)

    # Each _name(wavs, lengths, rows, cfg, generator) -> (wavs, lengths, drawn values [B]).
    @staticmethod
    def _select(wavs: torch.Tensor, rows: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return torch.where(rows.to(wavs.device)[:, None], new, wavs)

    @staticmethod
    def _on_rows(wavs: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor, fn) -> torch.Tensor:
        """``fn(x, lengths, idx)`` computed on the selected rows only (``idx``: their indices, to pick
        their drawn parameters); the other rows unchanged. Costly ops (FFT filters, codec) then cost
        in proportion to ``p`` rather than the whole batch."""
        if not bool(rows.any()):
            return wavs
        if bool(rows.all()):
            return fn(wavs, lengths, torch.arange(wavs.shape[0]))
        idx = rows.nonzero().flatten()
        out = wavs.clone()
        dev = idx.to(wavs.device)
        out[dev] = fn(wavs[dev], lengths[dev], idx)
        return out

    def _gain(self, wavs, lengths, rows, cfg, g):
        db = W.uniform(wavs.shape[0], cfg.min_db, cfg.max_db, g)
        return self._select(wavs, rows, W.apply_gain(wavs, db)), lengths, db

    def _polarity(self, wavs, lengths, rows, cfg, g):
        return W.apply_polarity(wavs, rows), lengths, torch.ones(wavs.shape[0])

    def _time_shift(self, wavs, lengths, rows, cfg, g):
        frac = W.uniform(wavs.shape[0], -cfg.max_fraction, cfg.max_fraction, g)
        shifts = (frac * lengths.cpu()).round().long()
        return self._select(wavs, rows, W.time_shift(wavs, lengths, shifts)), lengths, shifts

    def _noise(self, wavs, lengths, rows, cfg, g):
        b, width = wavs.shape
        snr = W.uniform(b, cfg.min_snr_db, cfg.max_snr_db, g)
        if self.noise_bank is not None:
            noise = self.noise_bank.sample(b, width, g)
            colour = None
        else:  # one seed drawn for every row (the random stream); noise generated only where it is added
            pick = torch.randint(len(cfg.colours), (b,), generator=g)
            beta = torch.tensor([W.NOISE_COLOURS[cfg.colours[int(k)]] for k in pick])
            seeds = torch.randint(2**62, (b,), generator=g)
            colour = beta

        def add(x, n, idx):
            if colour is None:
                sel = noise[idx]
            else:
                white = torch.stack([torch.randn(width, generator=torch.Generator().manual_seed(int(seeds[i])))
                                     for i in idx.tolist()])
                sel = W.colour_noise(white, colour[idx])
            return W.add_noise(x, n, sel.to(x.device), snr[idx])

        return self._on_rows(wavs, lengths, rows, add), lengths, snr

    def _reverb(self, wavs, lengths, rows, cfg, g):
        b = wavs.shape[0]
        rt60 = W.uniform(b, cfg.min_rt60, cfg.max_rt60, g)
        drr = W.uniform(b, cfg.min_drr_db, cfg.max_drr_db, g)
        rir = W.synthetic_rir(rt60, drr, g)
        return self._on_rows(wavs, lengths, rows, lambda x, n, i: W.reverberate(x, n, rir[i])), lengths, rt60

    def _band_limit(self, wavs, lengths, rows, cfg, g):
        b = wavs.shape[0]
        low = W.uniform(b, cfg.min_cutoff_hz, cfg.max_cutoff_hz, g)
        high = W.uniform(b, cfg.min_highpass_hz, cfg.max_highpass_hz, g) * W.coin(b, cfg.highpass_p, g)
        return self._on_rows(wavs, lengths, rows, lambda x, n, i: W.band_limit(x, n, low[i], high[i])), lengths, low

    def _eq(self, wavs, lengths, rows, cfg, g):
        b = wavs.shape[0]
        knots = torch.cat([torch.zeros(1), torch.logspace(2.0, math.log10(8000.0), cfg.num_knots)])
        gains = W.uniform(b * (cfg.num_knots + 1), -cfg.max_db, cfg.max_db, g).reshape(b, -1)
        out = self._on_rows(wavs, lengths, rows, lambda x, n, i: W.random_eq(x, n, gains[i], knots))
        return out, lengths, gains.abs().max(1).values

    def _codec(self, wavs, lengths, rows, cfg, g):
        bits = torch.randint(cfg.min_bits, cfg.max_bits + 1, (wavs.shape[0],), generator=g)
        return self._on_rows(wavs, lengths, rows, lambda x, n, i: W.mu_law_codec(x, bits[i])), lengths, bits

    def _resize_rows(self, wavs, lengths, rows, fn):
        """Apply a duration-changing ``fn(x, lengths) -> (x', lengths')`` to the selected rows only."""
        if not bool(rows.any()):
            return wavs, lengths
        idx = rows.nonzero().flatten().tolist()
        new, new_lens = fn(wavs[idx], lengths[idx])
        lengths = lengths.clone()
        lengths[idx] = new_lens.to(lengths)
        out = wavs.new_zeros(wavs.shape[0], max(1, int(lengths.max())))
        keep = min(out.shape[1], wavs.shape[1])
        out[:, :keep] = wavs[:, :keep]
        out[idx] = 0.0
        out[idx, : new.shape[1]] = new
        return out * W.valid_mask(lengths, out.shape[1]), lengths

    def _speed(self, wavs, lengths, rows, cfg, g):
        factors = W.uniform(wavs.shape[0], cfg.min_factor, cfg.max_factor, g)
        factors = torch.round(factors / cfg.step) * cfg.step
        sel = factors[rows]
        wavs, lengths = self._resize_rows(wavs, lengths, rows, lambda x, n: W.speed(x, n, sel, cfg.step))
        return wavs, lengths, factors

    def _tempo(self, wavs, lengths, rows, cfg, g):
        factors = W.uniform(wavs.shape[0], cfg.min_factor, cfg.max_factor, g)
        sel = factors[rows]
        wavs, lengths = self._resize_rows(wavs, lengths, rows, lambda x, n: W.tempo(x, n, sel))
        return wavs, lengths, factors

    def _pitch(self, wavs, lengths, rows, cfg, g):
        semis = W.uniform(wavs.shape[0], cfg.min_semitones, cfg.max_semitones, g)
        if not bool(rows.any()):
            return wavs, lengths, semis
        idx = rows.nonzero().flatten().tolist()
        out = wavs.clone()
        out[idx] = W.pitch_shift(wavs[idx], lengths[idx], semis[rows])
        return out, lengths, semis


class SpectrogramAugment(nn.Module):
    """Log-Mel augmentations of ``cfg`` (mixup, resize crop, frequency then time masks).

    Args:
        cfg: which augmentations, with their ``p`` and ranges.
        num_bins: feature bins F (sizes the mixup memory).
    """

    def __init__(self, cfg: SpectrogramAugmentConfig, num_bins: int):
        super().__init__()
        self.cfg = cfg
        self.mixup = S.MixupMemory(cfg.mixup, num_bins) if cfg.mixup is not None else None

    @property
    def enabled(self) -> list[str]:
        return self.cfg.enabled()

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None,
                return_params: bool = False):
        """feats [B, T, F], lengths [B] valid frames -> feats' [B, T, F] (+ params: per augmentation,
        the mixup ratio / 1.0 for applied rows, NaN for rows left alone)."""
        if feats.dim() != 3:
            raise ValueError(f"augment: expected feats [batch, frames, bins], got shape {tuple(feats.shape)}")
        b = feats.shape[0]
        params: dict[str, list[float]] = {}
        for name in self.enabled:
            op = getattr(self.cfg, name)
            rows = W.coin(b, op.p, generator)
            if name == "mixup":
                feats, drawn = self.mixup(feats, lengths, rows, generator)
            elif name == "resize_crop":
                feats, drawn = S.random_resize_crop(feats, lengths, op, rows, generator), torch.ones(b)
            else:
                feats, mask = S.mask_along_axis(feats, lengths, "time" if name == "time_mask" else "freq",
                                                op.num_masks, op.max_fraction, op.fill, rows, generator)
                drawn = mask.flatten(1).float().mean(1).cpu()
            params[name] = [float(v) if bool(r) else math.nan for v, r in zip(drawn, rows)]
        return (feats, params) if return_params else feats
