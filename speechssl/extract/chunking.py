"""Encode arbitrarily long audio in overlapping chunks, in bounded memory.

The signal is cut into cores of ``chunk`` samples (multiples of the frame shift ``s``). Each core
``[a, b)`` is encoded with ``overlap`` samples of real audio on both sides, and only the frames
whose first sample lies in ``[a, b)`` are kept::

    window   [a - overlap ...... a ====== core ====== b ...... b + overlap)
    kept frames:                  a/s ............... b/s - 1

With frame ``t`` covering samples ``[t*s, t*s + receptive_field)`` (the frame-count formula of
:mod:`speechssl.features.base`) the kept frames tile ``0 .. frames(L) - 1`` exactly, so the
stitched output has the same length as an unchunked pass. Convolution-only encoders and
frontends without utterance-level statistics give identical frames as long as ``overlap`` covers
the receptive field; recurrent and attention context networks see ``overlap`` samples of context
instead of the whole file, so their frames differ slightly (the tests state the tolerance).
Per-utterance CMVN becomes per-window CMVN.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


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
        encoder: an :class:`~speechssl.upstream.Encoder`.
        read_window: ``(start, end) -> Tensor[end - start]`` 16 kHz samples.
        emit: receives one list of [frames, dim] float32 arrays (one per layer) per chunk.
    Returns:
        int: frames emitted in total.
    """
    s = encoder.frame_shift
    written = 0
    for ws, we, _core_start, b in plan_chunks(total, chunk, overlap, s):
        wav = read_window(ws, we)
        if wav.numel() != we - ws:
            raise ValueError(f"read {wav.numel()} samples for the window [{ws}, {we}), expected {we - ws}")
        with torch.inference_mode():
            out = encoder(wav.unsqueeze(0), torch.tensor([we - ws]))
        n = int(out.lengths[0])
        first = written - ws // s
        last = n if b == total else b // s - ws // s
        if last > n or first < 0:
            raise ValueError(
                f"chunk [{ws}, {we}) gave {n} frames but frames up to {last} were needed: "
                f"the overlap ({overlap} samples) is shorter than the encoder's receptive field"
            )
        if last > first:
            emit([h[0, first:last].float().cpu().numpy() for h in out.hidden_states])
            written += last - first
    return written
