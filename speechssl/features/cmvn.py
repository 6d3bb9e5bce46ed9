"""Cepstral mean and variance normalisation (CMVN) for frame-level frontends.

Three modes, chosen by the ``cmvn`` field of the logmel / fbank / mfcc configs:

- ``"none"``: features as computed.
- ``"utterance"``: each utterance is normalised by the mean (and std, if ``cmvn_norm_vars``) of
  its own *valid* frames; padding frames never enter the statistics, so batched == single.
- ``"global"``: one mean/std per dimension, estimated on a corpus with :func:`compute_global_cmvn`
  and stored in the frontend's buffers ``cmvn_mean`` / ``cmvn_std`` / ``cmvn_frames``, so a saved
  model or released encoder carries them::

      fe = build_frontend({"name": "fbank", "cmvn": "global"})
      mean, std = compute_global_cmvn("data/train.jsonl", fe, max_utts=2000)
      fe.set_global_cmvn(mean, std)

``speechssl pretrain`` does this itself on a fresh start (:func:`fill_global_cmvn`: every ``cmvn: global``
frontend of the model without statistics gets those of its training manifest), so a recipe only sets
``cmvn: global``; a resumed run or ``--init-from`` keeps the statistics of its checkpoint.

Standard deviations are floored at ``STD_FLOOR`` so constant dimensions map to 0, not inf.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from speechssl.features.base import Frontend, check_batch, frame_mask, valid_sum

CMVN_MODES = ("none", "utterance", "global")
STD_FLOOR = 1e-5


def utterance_cmvn(feats: torch.Tensor, feat_lengths: torch.Tensor, norm_vars: bool = True) -> torch.Tensor:
    """Normalise each utterance by the statistics of its valid frames.

    Args:
        feats: [batch, frames, dim].
        feat_lengths: [batch] valid frames.
        norm_vars: also divide by the (population) standard deviation.
    Returns:
        Tensor: [batch, frames, dim]; frames beyond ``feat_lengths`` are 0.
    """
    mask = frame_mask(feat_lengths, feats.shape[1]).unsqueeze(-1)  # [B, T, 1]
    count = feat_lengths.clamp(min=1).double()[:, None, None]
    mean = (valid_sum(feats, feat_lengths) / count).to(feats.dtype)
    out = (feats - mean).masked_fill(~mask, 0.0)
    if norm_vars:
        var = (valid_sum(out.pow(2), feat_lengths) / count).to(feats.dtype)
        out = out / var.sqrt().clamp(min=STD_FLOOR)
    return out


def vector_standardize(x: torch.Tensor, eps: float = 1.0e-6) -> torch.Tensor:
    """Each vector along the last axis to zero mean and unit (population) variance: MAE's
    ``norm_pix_loss`` target (He et al. 2022), used by MAE's tokens and TERA's ``norm_targets`` frames."""
    mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
    return (x - mean) / (var + eps).sqrt()


class CMVNFrontend(Frontend):
    """A frame frontend with optional CMVN and zeroed padding.

    Subclasses implement :meth:`compute` (raw features of every frame of the padded batch) and set
    ``out_dim``, ``frame_length``, ``frame_shift``; their config has ``cmvn`` and ``cmvn_norm_vars``.
    """

    def __init__(self, config: Any, out_dim: int):
        super().__init__(config)
        if config.cmvn not in CMVN_MODES:
            raise ValueError(f"{self.name}: cmvn must be one of {list(CMVN_MODES)}, got {config.cmvn!r}")
        self.out_dim = out_dim
        if config.cmvn == "global":
            self.register_buffer("cmvn_mean", torch.zeros(out_dim))
            self.register_buffer("cmvn_std", torch.ones(out_dim))
            self.register_buffer("cmvn_frames", torch.zeros((), dtype=torch.long))  # 0 = not estimated

    @abc.abstractmethod
    def compute(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Raw features of every frame of a padded batch.

        Args:
            wavs: [batch, samples] float32.
            lengths: [batch] valid samples (int64); valid frames must depend only on valid samples.
        Returns:
            Tensor: [batch, num_frames(samples), out_dim].
        """

    def set_global_cmvn(self, mean: torch.Tensor, std: torch.Tensor, frames: int = 1) -> None:
        """Install global statistics ([out_dim] each); requires ``cmvn: global``."""
        if self.config.cmvn != "global":
            raise ValueError(f"{self.name}: set_global_cmvn needs cmvn='global', this frontend has {self.config.cmvn!r}")
        mean, std = torch.as_tensor(mean).flatten(), torch.as_tensor(std).flatten()
        if mean.numel() != self.out_dim or std.numel() != self.out_dim:
            raise ValueError(
                f"{self.name}: global CMVN stats must have {self.out_dim} values, got {mean.numel()} / {std.numel()}"
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()) or (std <= 0).any():
            raise ValueError(f"{self.name}: global CMVN stats must be finite with std > 0")
        self.cmvn_mean.copy_(mean)
        self.cmvn_std.copy_(std.clamp(min=STD_FLOOR))
        self.cmvn_frames.fill_(max(int(frames), 1))

    def raw_features(self, wavs: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features before CMVN: ([batch, frames, out_dim] with zeroed padding, [batch] valid frames)."""
        wavs, lengths = check_batch(wavs, lengths, self.name)
        device_type = wavs.device.type if wavs.device.type in ("cpu", "cuda") else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):  # features always in fp32
            feats = self.compute(wavs, lengths)
        feat_lengths = self.num_frames(lengths)
        mask = frame_mask(feat_lengths, feats.shape[1]).unsqueeze(-1)
        return feats.masked_fill(~mask, 0.0), feat_lengths

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            wavs: [batch, samples] float at 16 kHz, zero-padded.
            lengths: [batch] valid samples (None: all full length).
        Returns:
            (Tensor, Tensor): feats [batch, frames, out_dim] (padding frames 0), feat_lengths [batch].
        """
        feats, feat_lengths = self.raw_features(wavs, lengths)
        return self.normalise(feats, feat_lengths), feat_lengths

    def normalise(self, feats: torch.Tensor, feat_lengths: torch.Tensor) -> torch.Tensor:
        """This frontend's CMVN of :meth:`raw_features`' output ([batch, frames, out_dim], padding frames 0)."""
        if self.config.cmvn == "utterance":
            feats = utterance_cmvn(feats, feat_lengths, self.config.cmvn_norm_vars)
        elif self.config.cmvn == "global":
            if int(self.cmvn_frames) == 0:
                raise ValueError(
                    f"{self.name}: cmvn='global' but no statistics are set; run "
                    "speechssl.features.compute_global_cmvn(manifest, frontend) and frontend.set_global_cmvn(mean, std)"
                )
            mask = frame_mask(feat_lengths, feats.shape[1]).unsqueeze(-1)
            std = self.cmvn_std if self.config.cmvn_norm_vars else torch.ones_like(self.cmvn_std)
            feats = ((feats - self.cmvn_mean) / std).masked_fill(~mask, 0.0)
        return feats


def _records(records_or_manifest: str | os.PathLike | Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(records_or_manifest, (str, os.PathLike)):
        from speechssl.data.manifest import read_manifest

        return read_manifest(records_or_manifest)
    return list(records_or_manifest)


@torch.no_grad()
def compute_global_cmvn(
    records_or_manifest_path: str | os.PathLike | Iterable[Mapping[str, Any]],
    frontend: Frontend,
    max_utts: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of ``frontend``'s raw (pre-CMVN) features over a corpus.

    Reads each record's ``path`` (and ``start``/``duration`` if present) with ``load_audio``, in
    eval mode (no dither), accumulating in float64 over valid frames only. Utterances shorter than
    one frame contribute nothing.

    Args:
        records_or_manifest_path: a manifest JSONL path or a list of manifest records.
        frontend: a logmel / fbank / mfcc frontend (any ``cmvn`` mode).
        max_utts: use only the first ``max_utts`` records (None: all).
    Returns:
        (Tensor, Tensor): mean [out_dim], std [out_dim] (float32, std floored at STD_FLOOR).
    Raises:
        ValueError: no frames at all; AudioError for a file that cannot be read (names the file).
    """
    records = _records(records_or_manifest_path)
    if max_utts is not None:
        records = records[: max(int(max_utts), 0)]
    mean, std, _ = _global_stats(records, frontend)
    return mean, std


def _global_stats(records: list[Mapping[str, Any]], frontend: Frontend) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, std, frames) of ``frontend``'s raw features over ``records``: see :func:`compute_global_cmvn`."""
    from speechssl.audio import load_audio

    if not isinstance(frontend, CMVNFrontend):
        raise ValueError(f"compute_global_cmvn needs a logmel/fbank/mfcc frontend, got {type(frontend).__name__}")
    total = torch.zeros(frontend.out_dim, dtype=torch.float64)
    total_sq = torch.zeros(frontend.out_dim, dtype=torch.float64)
    frames = 0
    was_training = frontend.training
    frontend.eval()
    try:
        for i, rec in enumerate(records):
            if "path" not in rec:
                raise ValueError(f"compute_global_cmvn: record {i} has no 'path' key: {dict(rec)}")
            wav = load_audio(rec["path"], start=rec.get("start"), duration=rec.get("duration"))
            device = next((b.device for b in frontend.buffers()), torch.device("cpu"))
            feats, n = frontend.raw_features(wav[None].to(device), None)
            valid = feats[0, : int(n[0])].double().cpu()
            total += valid.sum(0)
            total_sq += valid.pow(2).sum(0)
            frames += valid.shape[0]
    finally:
        frontend.train(was_training)
    if frames == 0:
        raise ValueError(
            f"compute_global_cmvn: no frames from {len(records)} record(s) "
            f"(all shorter than {frontend.frame_length} samples?)"
        )
    mean = total / frames
    var = (total_sq / frames - mean.pow(2)).clamp(min=0.0)
    return mean.float(), var.sqrt().clamp(min=STD_FLOOR).float(), frames


@torch.no_grad()
def fill_global_cmvn(model: torch.nn.Module, manifest: str | os.PathLike, max_utts: int = 400) -> list[str]:
    """Install global statistics in every ``cmvn: global`` frontend of ``model`` that has none yet.

    They are estimated (:func:`compute_global_cmvn`) on at most ``max_utts`` records of ``manifest``, evenly
    spaced over it (a manifest sorted by speaker or length is still covered). Frontends with statistics
    (``cmvn_frames > 0``: a loaded checkpoint or released encoder) are left as they are.

    Returns:
        One line per frontend filled (its module name, utterances and frames used), for the log.
    """
    todo = [(name, m) for name, m in model.named_modules()
            if isinstance(m, CMVNFrontend) and m.config.cmvn == "global" and int(m.cmvn_frames) == 0]
    if not todo:
        return []
    records = _records(manifest)
    if max_utts is not None and len(records) > max_utts > 0:
        step = len(records) / max_utts
        records = [records[int(i * step)] for i in range(max_utts)]
    done = []
    for name, frontend in todo:
        mean, std, frames = _global_stats(records, frontend)
        frontend.set_global_cmvn(mean, std, frames)
        done.append(f"global CMVN of {name or 'the model'}: estimated on {len(records)} utterances "
                    f"({frames} frames) of {manifest}")
    return done
