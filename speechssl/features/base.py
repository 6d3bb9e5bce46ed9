"""The frontend contract shared by every model, encoder and baseline.

A frontend turns 16 kHz waveforms into frames::

    feats, feat_lengths = frontend(wavs, lengths)
    # wavs: [batch, samples] float32 at 16 kHz, zero-padded
    # lengths: [batch] valid samples
    # feats: [batch, frames, out_dim]; feat_lengths: [batch] valid frames

Frame-count formula (no centring, Kaldi ``snip_edges=True``)::

    frames(L) = 0                               if L < frame_length
              = 1 + (L - frame_length) // frame_shift   otherwise

Frame ``t`` covers samples ``[t * frame_shift, t * frame_shift + frame_length)``, so the valid
frames of an utterance never see padding and batched output equals one-at-a-time output (bit for
bit in the built-in frontends, which the tests check). A signal shorter than one window gives 0
frames, ``feats`` of shape ``[batch, 0, out_dim]``, not an error.

================  ============  ===========  ===========================================
frontend          frame_length  frame_shift  frames for 1 s (16000 samples)
================  ============  ===========  ===========================================
logmel            400 (25 ms)   160 (10 ms)  98
fbank, mfcc       400 (25 ms)   160 (10 ms)  98  (Kaldi ``snip_edges=true``)
waveform          1             1            16000
================  ============  ===========  ===========================================

(librosa/torchaudio with ``center=True`` would give 101 frames: they pad n_fft // 2 on each side.)
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from speechssl.config import from_dict, to_dict
from speechssl.modules.padding import lengths_to_mask
from speechssl.registry import Registry

SAMPLE_RATE = 16000


def num_frames(num_samples: int | torch.Tensor, frame_length: int, frame_shift: int):
    """Frames a signal of ``num_samples`` samples gives (see the module docstring)."""
    if isinstance(num_samples, torch.Tensor):
        n = torch.div(num_samples - frame_length, frame_shift, rounding_mode="floor") + 1
        return torch.clamp(n, min=0)
    if num_samples < frame_length:
        return 0
    return 1 + (num_samples - frame_length) // frame_shift


def check_batch(
    wavs: torch.Tensor, lengths: torch.Tensor | None, who: str = "frontend"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a padded batch; returns (wavs as float32, lengths as int64 on the same device).

    Args:
        wavs: [batch, samples] float.
        lengths: [batch] valid samples per row, or None (every row is full length).
    Raises:
        ValueError: wrong rank, non-float samples, or lengths outside ``[0, samples]``.
    """
    if not isinstance(wavs, torch.Tensor) or wavs.dim() != 2:
        shape = tuple(wavs.shape) if isinstance(wavs, torch.Tensor) else type(wavs).__name__
        raise ValueError(f"{who}: expected wavs of shape [batch, samples], got {shape}")
    if not wavs.is_floating_point():
        raise ValueError(f"{who}: expected floating-point wavs, got {wavs.dtype}")
    if lengths is None:
        lengths = torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long, device=wavs.device)
    lengths = torch.as_tensor(lengths, device=wavs.device).long()
    if lengths.shape != (wavs.shape[0],):
        raise ValueError(f"{who}: expected lengths of shape [{wavs.shape[0]}], got {tuple(lengths.shape)}")
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > wavs.shape[1]):
        raise ValueError(
            f"{who}: lengths must lie in [0, {wavs.shape[1]}] (the padded width), got {lengths.tolist()}"
        )
    return wavs.float(), lengths


#: [batch] valid frames -> [batch, max_frames] bool, True on valid frames (the shared helper).
frame_mask = lengths_to_mask


def frame_signal(wavs: torch.Tensor, frame_length: int, frame_shift: int) -> torch.Tensor:
    """Cut ``[batch, samples]`` into ``[batch, num_frames(samples), frame_length]`` (a view, no copy)."""
    if wavs.shape[-1] < frame_length:
        return wavs.new_zeros(*wavs.shape[:-1], 0, frame_length)
    return wavs.unfold(-1, frame_length, frame_shift)


class Frontend(nn.Module, abc.ABC):
    """Base class: subclasses set ``name``, ``config``, ``out_dim``, ``frame_length``, ``frame_shift``."""

    name: str = ""
    out_dim: int
    frame_length: int  # samples per analysis window (the frontend's receptive field)
    frame_shift: int  # samples between frames

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    def num_frames(self, num_samples: int | torch.Tensor):
        return num_frames(num_samples, self.frame_length, self.frame_shift)

    def to_dict(self) -> dict:
        """``{"name": ..., **config}``: what ``build_frontend`` reads back."""
        return {"name": self.name, **to_dict(self.config)}

    @abc.abstractmethod
    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ...


@dataclasses.dataclass(frozen=True)
class FrontendSpec:
    config_cls: type
    frontend_cls: type[Frontend]


FRONTENDS: Registry[FrontendSpec] = Registry("frontend")


def build_frontend(cfg: Mapping[str, Any] | str) -> Frontend:
    """Build a frontend from ``{"name": "logmel", "n_mels": 80, ...}`` or just a name."""
    import speechssl.features  # noqa: F401  (registers the built-in frontends)

    if isinstance(cfg, str):
        cfg = {"name": cfg}
    cfg = dict(cfg)
    if "name" not in cfg:
        raise ValueError(f"frontend config needs a 'name'; choices: {', '.join(sorted(FRONTENDS))}")
    name = cfg.pop("name")
    spec = FRONTENDS[name]
    config = from_dict(spec.config_cls, cfg, where=f"frontend({name})")
    return spec.frontend_cls(config)


_MIN_GEMM_ROWS = 16


def rowwise_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight`` for ``x [..., K]``, ``weight [K, N]``, each row's result independent of the row count.

    CPU BLAS picks other kernels (other rounding) for products with very few rows, which would make
    a 1-frame utterance differ in the last bit from the same frame inside a batch. Padding the
    rows to at least 16 keeps batched == single-utterance output bit-exact at negligible cost.
    """
    rows = x.reshape(-1, x.shape[-1])
    n = rows.shape[0]
    if 0 < n < _MIN_GEMM_ROWS:
        rows = torch.cat([rows, rows.new_zeros(_MIN_GEMM_ROWS - n, rows.shape[1])])
    out = torch.matmul(rows, weight)[:n]
    return out.reshape(*x.shape[:-1], weight.shape[-1])


def valid_sum(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Sum of ``x [batch, time, dim]`` over the first ``lengths[b]`` steps -> ``[batch, 1, dim]`` float64.

    A sequential float64 cumulative sum read at ``length - 1``: the result does not depend on how
    much padding follows (a plain ``sum`` may reorder additions with the padded size), so
    batched == single-utterance statistics bit for bit.
    """
    if x.shape[1] == 0:
        return x.new_zeros(x.shape[0], 1, x.shape[2], dtype=torch.float64)
    csum = x.double().cumsum(1)
    last = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, x.shape[2])
    return csum.gather(1, last) * (lengths > 0).view(-1, 1, 1)


def block_frames_for(device: torch.device, per_thread: int = 512) -> int:
    """Frames per block: ``per_thread`` per intra-op CPU thread (~1 MB of 512-point frames, an L2
    cache), or everything at once on accelerators, where blocking only adds kernel launches."""
    if device.type != "cpu":
        return 1 << 62
    return per_thread * max(1, torch.get_num_threads())


def frame_blocks(batch: int, frames: int, block_frames: int = 1024):
    """Yield ``(batch slice, frame slice)`` blocks of about ``block_frames`` frames covering ``[batch, frames]``.

    Frontends process a batch block by block so each block's intermediates stay in the CPU cache
    (2x faster than one pass over the whole batch on CPU); every frame is still computed by the
    same vectorised code, whatever its block, so results do not depend on the blocking.
    """
    if frames == 0 or batch == 0:
        return
    if frames <= block_frames:
        rows = max(1, block_frames // frames)
        for b in range(0, batch, rows):
            yield slice(b, min(b + rows, batch)), slice(0, frames)
    else:
        for b in range(batch):
            for t in range(0, frames, block_frames):
                yield slice(b, b + 1), slice(t, min(t + block_frames, frames))
