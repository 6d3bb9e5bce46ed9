"""Encode arbitrarily long audio in overlapping chunks, in bounded memory, exact where the model allows.

The signal is cut into cores of ``chunk`` samples (multiples of the frame shift ``s``). Each core
``[a, b)`` is encoded with ``overlap`` samples of real audio on both sides, and only the frames
whose first sample lies in ``[a, b)`` are kept::

    window   [a - overlap ...... a ====== core ====== b ...... b + overlap)
    kept frames:                  a/s ............... b/s - 1

With frame ``t`` covering samples ``[t*s, t*s + receptive_field)`` (the frame-count formula of
:mod:`speechssl.features.base`) the kept frames tile ``0 .. frames(L) - 1`` exactly, so the
stitched output has the same length as an unchunked pass. Three things make the frames those of
one pass over the whole file:

1. **Local computation** (frontends, convolutions, per-frame layers) is exact as long as
   ``overlap`` covers the receptive field.
2. **Utterance statistics** (waveform ``normalize: true`` of wav2vec 2.0, ``cmvn: utterance`` of
   the log-Mel/fbank/MFCC frontends) are measured in a first streaming pass over the whole file
   (:func:`whole_file_frontend`); the second pass normalises every window with them.
3. **Recurrent context networks** (APC and CPC with GRU/LSTM contexts: backbones satisfying
   :class:`ContinuingBackbone`) carry their state from one chunk to the next and read each frame
   once, so chunked == one pass (to ~1e-5, float rounding).

What stays approximate (see :func:`long_file_method`, recorded in ``extract.json``): attention over
a window (bidirectional wav2vec 2.0 Transformers, APC's causal Transformer) sees ``chunk + 2 *
overlap`` seconds instead of the whole file, and wav2vec 2.0 Base's GroupNorm over time normalises
each window by its own statistics. ``MEASURED_WINDOW_ERRORS`` lists what that costs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from speechssl.features.base import check_batch, frame_mask
from speechssl.features.cmvn import STD_FLOOR, CMVNFrontend
from speechssl.features.waveform import NORM_EPS, Waveform
from speechssl.models.base import EncoderOutput, SSLModel

# |chunked - one pass| per family where chunking stays approximate, as the README states and
# extract.json records. Measured on random-init models of wav2vec2_tiny's size with a waveform
# frontend (normalize: true), a 25 s synthetic file, 8 s chunks and 2 s overlap (trained weights
# may differ); tests/test_extract_chunking.py::test_window_errors_stay_as_documented re-measures.
MEASURED_WINDOW_ERRORS = {
    "wav2vec2": "latent exact with layer-norm convs; the bidirectional Transformer layers see chunk + 2 x "
                "overlap seconds: context max 8.8e-3, mean 2.0e-3 (mean |x| 0.79). GroupNorm convs (Base) "
                "also normalise every window alone: latent max 7.8e-2, context max 3.1e-1, mean 1.4e-2",
    "apc": "causal Transformer/CNN contexts carry no state: frames differ where the context reaches "
           "further back than the overlap (not measured)",
    "cpc": "a causal Transformer context carries no state: frames differ where the context reaches "
           "further back than the overlap (not measured)",
}


def plan_chunks(total: int, chunk: int, overlap: int, frame_shift: int) -> list[tuple[int, int, int, int]]:
    """-> list of (window_start, window_end, core_start, core_end) in samples (last core_end = total)."""
    if chunk <= 0 or overlap < 0:
        raise ValueError(f"chunk ({chunk}) must be > 0 and overlap ({overlap}) >= 0 samples")
    chunk = max(frame_shift, chunk // frame_shift * frame_shift)
    overlap = -(-overlap // frame_shift) * frame_shift
    plan, a = [], 0
    while True:
        b = a + chunk
        ws, we = max(0, a - overlap), min(total, b + overlap)
        if we >= total:
            plan.append((ws, total, a, total))
            return plan
        plan.append((ws, we, a, b))
        a = b


@runtime_checkable
class ContinuingBackbone(Protocol):
    """A causal backbone that continues a file where the previous chunk stopped (APC, CPC)."""

    def streams_exactly(self) -> bool:
        """Whether :meth:`encode_continued` gives the frames of one pass (e.g. RNN contexts only)."""

    def encode_continued(self, wavs: torch.Tensor, first: int, last: int | None,
                         state: Any) -> tuple[EncoderOutput, Any]:
        """Frames ``first .. last - 1`` of window ``wavs`` [1, samples] from ``state`` -> (every layer's
        [1, last - first, D] frames, the state after them)."""


# ---------------------------------------------------------------- utterance statistics
class WholeFileNormalised(nn.Module):
    """A frontend that normalises with given whole-file statistics instead of those of the window
    it sees: ``(x - mean) / scale`` on the waveform (``normalize: true``) or on the raw frames
    (``cmvn: utterance``); padding stays 0."""

    def __init__(self, frontend: nn.Module, mean: torch.Tensor, scale: torch.Tensor | None):
        super().__init__()
        self.inner = frontend
        self.name, self.config, self.out_dim = frontend.name, frontend.config, frontend.out_dim
        self.frame_length, self.frame_shift = frontend.frame_length, frontend.frame_shift
        self.mean, self.scale = mean, scale

    def num_frames(self, num_samples):
        return self.inner.num_frames(num_samples)

    def to_dict(self) -> dict:
        return self.inner.to_dict()

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """wavs [batch, samples], lengths [batch] -> the inner frontend's (feats, feat_lengths)."""
        if isinstance(self.inner, Waveform):
            wavs, lengths = check_batch(wavs, lengths, self.name)
            mask = torch.arange(wavs.shape[1], device=wavs.device)[None, :] < lengths[:, None]
            x = (wavs - self.mean.to(wavs.device)).masked_fill(~mask, 0.0) / self.scale.to(wavs.device)
            return x.unsqueeze(-1), lengths
        feats, feat_lengths = self.inner.raw_features(wavs, lengths)
        out = feats - self.mean.to(feats.device)
        if self.scale is not None:
            out = out / self.scale.to(feats.device)
        return out.masked_fill(~frame_mask(feat_lengths, feats.shape[1]).unsqueeze(-1), 0.0), feat_lengths


def utterance_statistics(frontend: nn.Module | None) -> str | None:
    """Which whole-utterance statistics ``frontend`` computes: ``waveform`` (wav2vec 2.0's
    ``normalize: true``), ``cmvn`` (``cmvn: utterance``) or None."""
    if isinstance(frontend, Waveform) and frontend.config.normalize:
        return "waveform"
    if isinstance(frontend, CMVNFrontend) and frontend.config.cmvn == "utterance":
        return "cmvn"
    return None


def whole_file_frontend(frontend: nn.Module | None, read_window: Callable[[int, int], torch.Tensor], total: int,
                        chunk: int, device: torch.device | str = "cpu") -> WholeFileNormalised | None:
    """First pass over a long file: the statistics ``frontend`` would compute over all of it
    (float64 sums, chunk by chunk), as a :class:`WholeFileNormalised`; None when the frontend has
    no utterance statistics or the file gives no frame."""
    kind = utterance_statistics(frontend)
    if kind == "waveform":
        total_sum = total_sq = torch.zeros((), dtype=torch.float64)
        for a in range(0, total, chunk):
            x = read_window(a, min(total, a + chunk)).double()
            total_sum, total_sq = total_sum + x.sum(), total_sq + x.pow(2).sum()
        if total == 0:
            return None
        mean = (total_sum / total).float()
        m = mean.double()
        var = ((total_sq - 2 * m * total_sum + total * m * m) / total).float()  # E[(x - mean)^2]
        return WholeFileNormalised(frontend, mean, torch.sqrt(var + NORM_EPS))
    if kind != "cmvn":
        return None
    shift, length = int(frontend.frame_shift), int(frontend.frame_length)
    step = max(shift, chunk // shift * shift)
    sums = sq = None
    count = 0
    with torch.no_grad():
        for a in range(0, total, step):
            b = min(total, a + step)
            we = min(total, b - shift + length)  # the frames that start in [a, b) need samples up to here
            feats, n = frontend.raw_features(read_window(a, we)[None].to(device), None)
            keep = min(int(n[0]), -(-(b - a) // shift))
            rows = feats[0, :keep].double().cpu()
            sums = rows.sum(0) if sums is None else sums + rows.sum(0)
            sq = rows.pow(2).sum(0) if sq is None else sq + rows.pow(2).sum(0)
            count += keep
    if count == 0:
        return None
    mean = (sums / count).float()
    m = mean.double()
    var = ((sq - 2 * m * sums + count * m * m) / count).float()
    scale = var.sqrt().clamp(min=STD_FLOOR) if frontend.config.cmvn_norm_vars else None
    return WholeFileNormalised(frontend, mean, scale)


@contextlib.contextmanager
def _frontend_replaced(backbone: nn.Module, frontend: nn.Module | None) -> Iterator[None]:
    """Run ``backbone`` with ``frontend`` in place of its own for the duration (every family reads
    its frontend through ``self.frontend``); the original is put back whatever happens."""
    if frontend is None:
        yield
        return
    original = backbone.frontend
    backbone.frontend = frontend
    try:
        yield
    finally:
        backbone.frontend = original


# ---------------------------------------------------------------- recurrent state
class _Continuation(nn.Module):
    """A backbone view for :class:`~speechssl.upstream.Encoder` whose ``encode`` returns the frames
    ``first .. last - 1`` of a window and keeps the recurrent state for the next window."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.inner = backbone
        self.state: Any = None
        self.first, self.last = 0, None

    @property
    def layer_names(self) -> list[str]:
        return list(self.inner.layer_names)

    @property
    def frame_shift(self) -> int:
        return int(self.inner.frame_shift)

    def encode(self, wavs: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        out, self.state = self.inner.encode_continued(wavs, self.first, self.last, self.state)
        return out


def long_file_method(encoder) -> dict:
    """How :func:`encode_chunked` treats long files for ``encoder`` (recorded in ``extract.json``):
    ``chunking`` (``recurrent_state`` | ``windows``), ``utterance_statistics`` (``whole_file`` |
    None) and ``error`` (``exact`` or what :data:`MEASURED_WINDOW_ERRORS` says)."""
    from speechssl.upstream.baselines import FrontendBackbone

    backbone = encoder.backbone
    stats = "whole_file" if utterance_statistics(encoder.frontend) else None
    if isinstance(backbone, ContinuingBackbone) and backbone.streams_exactly():
        return {"chunking": "recurrent_state", "utterance_statistics": stats, "error": "exact"}
    if isinstance(backbone, FrontendBackbone):
        return {"chunking": "windows", "utterance_statistics": stats, "error": "exact"}
    family = backbone.name if isinstance(backbone, SSLModel) else type(backbone).__name__
    error = MEASURED_WINDOW_ERRORS.get(family, "not measured: context beyond the overlap is cut at chunk edges")
    return {"chunking": "windows", "utterance_statistics": stats, "error": error}


def encode_chunked(
    encoder,
    read_window: Callable[[int, int], torch.Tensor],
    total: int,
    chunk: int,
    overlap: int,
    emit: Callable[[list[np.ndarray]], None],
) -> int:
    """Encode ``total`` samples chunk by chunk and hand the kept frames to ``emit``.

    Args:
        encoder: an :class:`~speechssl.upstream.Encoder` (or a module with ``frame_shift`` and
            ``forward(wavs, lengths) -> EncoderOutput``: plain windows, no statistics pass or state).
        read_window: ``(start, end) -> Tensor[end - start]`` 16 kHz samples.
        emit: receives one list of [frames, dim] float32 arrays (one per layer) per chunk.
    Returns:
        int: frames emitted in total.
    """
    from speechssl.upstream import Encoder

    s = encoder.frame_shift
    plan = plan_chunks(total, chunk, overlap, s)
    run, continuation, frontend = encoder, None, None
    if isinstance(encoder, Encoder) and len(plan) > 1:  # one window is one pass: nothing to do
        frontend = whole_file_frontend(encoder.frontend, read_window, total, chunk, encoder.device)
        backbone = encoder.backbone
        if isinstance(backbone, ContinuingBackbone) and backbone.streams_exactly():
            continuation = _Continuation(backbone)
            run = Encoder(continuation, encoder.options, source=encoder.source, kind=encoder.kind)
    written = 0
    with _frontend_replaced(encoder.backbone if frontend is not None else None, frontend):
        for ws, we, _core_start, b in plan:
            wav = read_window(ws, we)
            if wav.numel() != we - ws:
                raise ValueError(f"read {wav.numel()} samples for the window [{ws}, {we}), expected {we - ws}")
            first = written - ws // s
            last = None if b == total else b // s - ws // s
            if continuation is not None:
                continuation.first, continuation.last = first, last
            try:
                with torch.inference_mode():
                    out = run(wav.unsqueeze(0), torch.tensor([we - ws]))
            except ValueError as exc:
                if continuation is None or first < 0:
                    raise
                raise ValueError(f"chunk [{ws}, {we}): {exc}: the overlap ({overlap} samples) is shorter than "
                                 "the encoder's receptive field") from None
            hidden = [h[0] for h in out.hidden_states]
            if continuation is None:  # the whole window came back: keep the core's frames
                n = int(out.lengths[0])
                last = n if last is None else last
                if last > n or first < 0:
                    raise ValueError(
                        f"chunk [{ws}, {we}) gave {n} frames but frames up to {last} were needed: "
                        f"the overlap ({overlap} samples) is shorter than the encoder's receptive field"
                    )
                hidden = [h[first:last] for h in hidden]
            if hidden[0].shape[0] > 0:
                emit([h.float().cpu().numpy() for h in hidden])
                written += hidden[0].shape[0]
    return written
