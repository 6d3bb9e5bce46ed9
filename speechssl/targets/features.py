"""Frame features for k-means targets: 39-dim MFCC or one layer of any encoder, utterance by utterance.

``open_features("mfcc", "features")`` is HuBERT iteration 1 (13 MFCC + deltas + delta-deltas at
100 Hz, fairseq ``dump_mfcc_feature.py``); ``open_features("exp/hubert_it1/encoder", "layer_6")`` is
iteration 2 (fairseq ``dump_hubert_feature.py``). Anything :func:`speechssl.load_encoder` reads works
(baseline names, released / experiment folders, torchaudio / Hugging Face folders).

The provenance of the features (source, layer, frame shift, and the weights' SHA-256 for a trained
encoder) goes into the k-means model and every label file, so labels can always be traced to the
exact encoder and layer they came from.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechssl.audio import AudioError, load_audio

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000


@dataclasses.dataclass
class FeatureSource:
    """An opened encoder and the one layer k-means reads."""

    encoder: Any  # speechssl.upstream.Encoder
    layer: str
    provenance: dict  # {"features", "layer", "frame_shift", "kind", "weights_sha256"}

    @property
    def frame_shift(self) -> int:
        return int(self.provenance["frame_shift"])

    @property
    def min_samples(self) -> int:
        return int(getattr(self.encoder.backbone, "min_samples", 1))


def open_features(features: str, layer: str | None = None, device: str = "cpu") -> FeatureSource:
    """Open ``features`` (``mfcc`` or an encoder path) at ``layer`` (default: the baseline's only
    layer, or ``context``)."""
    from speechssl.upstream import load_encoder

    layer = layer or ("features" if features in ("mfcc", "logmel", "fbank") else "context")
    encoder = load_encoder(features, layers=[layer], device=device)
    kind = encoder.kind
    source = features if kind == "baseline" else str(Path(features).resolve())
    provenance = {
        "features": source,
        "layer": encoder.layer_names[0],
        "frame_shift": int(encoder.frame_shift),
        "kind": kind,
        "weights_sha256": None if kind == "baseline" else encoder.weights_sha256(),
    }
    if kind == "baseline":
        provenance["frontend"] = encoder.frontend.to_dict()
    return FeatureSource(encoder, encoder.layer_names[0], provenance)


def check_same_features(recorded: Mapping[str, Any], source: FeatureSource, where: str) -> None:
    """Refuse an encoder other than the one the k-means model was fitted on (another weight file,
    layer or frame rate)."""
    for key in ("layer", "frame_shift", "weights_sha256", "frontend"):
        if recorded.get(key) != source.provenance.get(key):
            raise ValueError(
                f"{where}: the k-means model was fitted on {recorded.get('features')} {key}={recorded.get(key)!r}, "
                f"but these features have {key}={source.provenance.get(key)!r}; labels must come from the encoder "
                "and layer the k-means was fitted on (re-fit with `speechssl targets kmeans`)")


def _batches(records: Sequence[Mapping[str, Any]], batch_seconds: float) -> list[list[int]]:
    """Indices of ``records`` grouped by length (padded seconds per batch <= ``batch_seconds``)."""
    order = sorted(range(len(records)), key=lambda i: records[i]["num_samples"] / records[i]["sample_rate"])
    out: list[list[int]] = []
    for i in order:
        seconds = records[i]["num_samples"] / records[i]["sample_rate"]
        if out and seconds * (len(out[-1]) + 1) <= batch_seconds:
            out[-1].append(i)
        else:
            out.append([i])
    return out


@torch.inference_mode()
def utterance_features(source: FeatureSource, records: Sequence[Mapping[str, Any]], batch_seconds: float = 60.0,
                       unreadable: list[tuple[str, str]] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index into records, features [frames, dim] float32)`` for every record, in length
    order (shortest first). Utterances shorter than the encoder's receptive field give 0 frames.

    A file that fails to load raises :class:`~speechssl.audio.AudioError`; when ``unreadable`` is
    a list, it gives 0 frames instead and ``(id, reason)`` is appended there (k-means on a sample)."""
    for batch in _batches(records, batch_seconds):
        wavs = []
        for i in batch:
            rec = records[i]
            try:
                wavs.append(load_audio(rec["path"], start=rec.get("start"), duration=rec.get("duration"),
                                       target_sr=SAMPLE_RATE))
            except AudioError as exc:
                if unreadable is None:
                    raise
                unreadable.append((str(rec["id"]), str(exc)))
                wavs.append(torch.zeros(0))
        ok = [j for j, w in enumerate(wavs) if w.shape[0] >= source.min_samples]
        for j, i in enumerate(batch):
            if j not in ok:
                yield i, np.zeros((0, source.encoder.hidden_sizes[0]), dtype=np.float32)
        if not ok:
            continue
        lengths = torch.tensor([wavs[j].shape[0] for j in ok])
        padded = torch.zeros(len(ok), int(lengths.max()))
        for row, j in enumerate(ok):
            padded[row, : wavs[j].shape[0]] = torch.as_tensor(wavs[j])
        out = source.encoder(padded.to(source.encoder.device), lengths.to(source.encoder.device))
        feats, frames = out.hidden_states[0].float().cpu(), out.lengths.cpu()
        for row, j in enumerate(ok):
            yield batch[j], feats[row, : int(frames[row])].numpy()
