"""Frozen-encoder features for downstream training: computed once, reused many times.

* :class:`~speechssl.downstream.feature_cache.EncoderFeatureCache` runs a frozen Encoder over
  manifest records (batched, in inference mode, with progress) and keeps every utterance's hidden
  states in memory, so a sweep over heads, learning rates, seeds or shots encodes each utterance
  only once.
* :func:`~speechssl.downstream.precomputed.load_precomputed` reads features written by
  ``speechssl extract`` (``index.tsv`` + npy/pt files), which is faster still when the same features
  serve many runs. Features larger than the available memory are not loaded but read from disk
  when used (:class:`~speechssl.downstream.precomputed.LazyFeatures`).

Both give a :class:`FeatureSet`: per utterance a list of per-layer [frames, dim] tensors. Class
labels and frame targets are :mod:`speechssl.downstream.labels`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch


@dataclasses.dataclass
class FeatureSet:
    """Hidden states of some utterances.

    Attributes:
        ids: utterance ids, aligned with ``feats``.
        feats: per utterance, one [frames, dim] float tensor per layer in ``layer_names`` (a list,
            or a :class:`~speechssl.downstream.precomputed.LazyFeatures` that reads each utterance from
            disk when indexed).
        layer_names: names of the layers.
        frame_shift: samples (16 kHz) between frames.
        failed: ``id -> reason`` of the utterances left out (``EncoderFeatureCache.features(..., skip_failed=True)``
            only; otherwise a failure raises).
    """

    ids: list[str]
    feats: Sequence[list[torch.Tensor]]
    layer_names: list[str]
    frame_shift: int
    failed: dict[str, str] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def hidden_sizes(self) -> list[int]:
        return [int(t.shape[-1]) for t in self.feats[0]] if self.feats else []


def num_frames(feats: Sequence[list[torch.Tensor]], i: int) -> int:
    """Frames of utterance ``i`` of a FeatureSet's ``feats`` without reading it when it is lazy
    (:class:`~speechssl.downstream.precomputed.LazyFeatures` knows them from the index)."""
    counted = getattr(feats, "num_frames", None)
    return int(counted(i)) if counted is not None else int(feats[i][0].shape[0])
