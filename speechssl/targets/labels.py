"""Reading label folders into training batches, aligned to the model's frames, with every check.

The Trainer opens ``data.targets`` (folders written by ``speechssl targets assign``) against the
model's target sets (``model.target_specs()``: classes and label frame shift of each)::

    targets = FrameTargets.open(["exp/labels_it1"], model)          # checks k and the label rate
    targets.check(records, "data/train.jsonl")                     # every utterance, both lengths
    item_targets = targets.crop(utt_id, offset_samples, crop_samples)   # [frames, K] int64, -1 = none

Alignment (fairseq ``HubertDataset`` + ``HubertModel.forward_targets``): model frame ``t`` of a crop
starting at sample ``o`` (a multiple of the model's frame shift ``S``) gets label ``o / s + t * S / s``
of a target set written at shift ``s`` (100 Hz MFCC labels under a 50 Hz model: every other label).

Errors name the folder, the utterance, both counts and the fix:

* the folder has another number of clusters than ``model.num_classes`` (an empty or mismatched
  dictionary), or another label rate than ``model.label_frame_shifts`` (100 vs 50 Hz);
* an utterance has no labels (labels of another corpus), labels for another length of audio, or a
  label count that does not fit the model's frame count for its length.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

SAMPLE_RATE = 16000


def read_chunk(path: Path) -> dict[str, np.ndarray]:
    """One chunk file of a label folder (``speechssl targets assign`` writes them): utterance ids, their
    sample counts, label counts and the concatenated labels. A damaged one raises ValueError naming it
    (np.load raises zipfile.BadZipFile, EOFError, ... which are no ValueError)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {key: z[key] for key in ("ids", "num_samples", "counts", "labels")}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: unreadable label chunk ({type(exc).__name__}: {exc}); rerun `speechssl "
                         "targets assign` with the same arguments to write it again") from None


class LabelFolder:
    """The labels of one folder: ``labels[id]`` int32 array, ``num_samples[id]``, and its metadata."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index_path = self.folder / "index.json"
        if not index_path.is_file():
            raise FileNotFoundError(
                f"{self.folder}: no index.json; write labels with `speechssl targets assign --input MANIFEST "
                f"--out {self.folder}` (an interrupted run resumes when rerun)")
        self.meta = json.loads(index_path.read_text())
        self.k, self.hash, self.frame_shift = int(self.meta["k"]), str(self.meta["hash"]), int(self.meta["frame_shift"])
        self.labels: dict[str, np.ndarray] = {}
        self.num_samples: dict[str, int] = {}
        for entry in self.meta["manifests"].values():
            for name in entry["chunks"]:
                chunk = read_chunk(self.folder / name)
                ends = np.cumsum(chunk["counts"])
                for utt, n, end, count in zip(chunk["ids"].tolist(), chunk["num_samples"].tolist(), ends.tolist(),
                                              chunk["counts"].tolist()):
                    self.labels[utt] = chunk["labels"][end - count: end]
                    self.num_samples[utt] = int(n)

    def provenance(self) -> dict[str, Any]:
        return {"folder": str(self.folder.resolve()), "hash": self.hash, "k": self.k, "frame_shift": self.frame_shift,
                "features": self.meta["features"].get("features"), "layer": self.meta["features"].get("layer")}


class FrameTargets:
    """Target sets of a model, read from label folders (see the module docstring)."""

    def __init__(self, folders: list[LabelFolder], frame_shift: int, num_frames):
        self.folders, self.frame_shift, self.num_frames = folders, int(frame_shift), num_frames

    @classmethod
    def open(cls, paths: Sequence[str | Path], model) -> FrameTargets:
        specs = model.target_specs()
        if len(paths) != len(specs):
            raise ValueError(f"data.targets lists {len(paths)} label folder(s) but model.num_classes has "
                             f"{len(specs)} target set(s) {[k for k, _ in specs]}; give one folder per target set")
        folders = []
        for i, (path, (classes, shift)) in enumerate(zip(paths, specs)):
            folder = LabelFolder(path)
            if folder.k != classes:
                raise ValueError(
                    f"data.targets[{i}] {path}: labels from a k-means with k={folder.k} clusters but model.num_classes"
                    f"[{i}] = {classes}; the classifier's dictionary must have exactly the k-means' clusters")
            if folder.frame_shift != shift:
                raise ValueError(
                    f"data.targets[{i}] {path}: labels at {SAMPLE_RATE / folder.frame_shift:g} Hz (frame shift "
                    f"{folder.frame_shift}) but model.label_frame_shifts[{i}] = {shift} "
                    f"({SAMPLE_RATE / shift:g} Hz); set model.label_frame_shifts[{i}]={folder.frame_shift} "
                    "(iteration 1 MFCC labels: 160; iteration 2 labels from a 20 ms encoder: 320)")
            folders.append(folder)
        return cls(folders, model.frame_shift, model.num_frames)

    def provenance(self) -> list[dict[str, Any]]:
        return [f.provenance() for f in self.folders]

    def check(self, records: Sequence[Mapping[str, Any]], where: str) -> None:
        """Every record has labels in every folder, for the same audio, fitting the model's frames."""
        nums = torch.tensor([int(round(r["num_samples"] * SAMPLE_RATE / r["sample_rate"])) for r in records])
        frames = self.num_frames(nums).tolist() if len(records) else []
        for folder in self.folders:
            ratio = self.frame_shift // folder.frame_shift
            for rec, t in zip(records, frames):
                utt = rec["id"]
                if utt not in folder.labels:
                    raise ValueError(
                        f"{where}: utterance {utt!r} has no labels in {folder.folder} (labelled manifests: "
                        f"{[m['path'] for m in folder.meta['manifests'].values()]}); these labels were written for "
                        f"another corpus: run `speechssl targets assign --input {where} --out {folder.folder}`")
                if folder.num_samples[utt] != rec["num_samples"]:
                    raise ValueError(
                        f"{where}: utterance {utt!r} has {rec['num_samples']} samples but its labels in {folder.folder} "
                        f"were computed on {folder.num_samples[utt]} samples; re-run `speechssl targets assign`")
                count = len(folder.labels[utt])
                if t > 0 and not (t - 1) * ratio < count <= (t + 1) * ratio:
                    raise ValueError(
                        f"{where}: utterance {utt!r} has {count} labels at {SAMPLE_RATE / folder.frame_shift:g} Hz in "
                        f"{folder.folder} but the model makes {t} frames at {SAMPLE_RATE / self.frame_shift:g} Hz "
                        f"(expected {(t - 1) * ratio + 1}..{(t + 1) * ratio} labels); the labels were written at "
                        "another frame rate or for another model: check model.label_frame_shifts and re-run "
                        "`speechssl targets assign`")

    def crop(self, utt: str, offset: int, samples: int) -> np.ndarray:
        """Labels of model frames of ``samples`` samples from sample ``offset`` (a multiple of the model's
        frame shift): [frames, K] int64 (enough for every model frame of the crop; extra rows are cut)."""
        if offset % self.frame_shift:
            raise ValueError(f"crop offset {offset} of {utt!r} is not a multiple of the model frame shift "
                             f"{self.frame_shift}")
        frames = math.ceil(samples / self.frame_shift) + 1
        columns = []
        for folder in self.folders:
            ratio = self.frame_shift // folder.frame_shift
            columns.append(folder.labels[utt][offset // folder.frame_shift:: ratio][:frames])
        n = min(len(c) for c in columns)
        return np.stack([c[:n] for c in columns], axis=1).astype(np.int64)


def collate_targets(items: Sequence[np.ndarray]) -> torch.Tensor:
    """[frames_i, K] arrays -> [B, max frames, K] LongTensor padded with -1."""
    k = items[0].shape[1]
    out = torch.full((len(items), max(len(v) for v in items), k), -1, dtype=torch.long)
    for i, v in enumerate(items):
        out[i, : len(v)] = torch.from_numpy(v)
    return out


def open_training_targets(folders: Sequence[str], model: Any, model_name: str,
                          max_steps: int) -> FrameTargets | None:
    """The frame targets of a pretraining run's ``data.targets`` (HuBERT), checked against the model's
    target sets; None for a model without targets, or for a random-init control (``max_steps == 0``),
    which is released without ever reading one. A mismatch either way is a ConfigError saying what to do."""
    from speechssl.config import ConfigError

    takes = hasattr(model, "target_specs")
    if not folders and (not takes or max_steps == 0):
        return None
    if not takes:
        raise ConfigError(f"data.targets={list(folders)}: model {model_name!r} takes no frame targets; remove it")
    if not folders:
        raise ConfigError(
            f"model {model_name!r} learns from frame targets but data.targets is empty: fit and assign them "
            "with `speechssl targets kmeans ...` and `speechssl targets assign ... --out DIR`, then pass "
            "data.targets=[DIR]")
    return FrameTargets.open(folders, model)


def check_resume_targets(where: str, saved: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]]) -> None:
    """Refuse to resume a checkpoint trained on other k-means targets (provenance lists as saved)."""
    from speechssl.config import ConfigError

    old, new = [t.get("hash") for t in saved], [t["hash"] for t in current]
    if old != new:
        raise ConfigError(f"{where} was trained on targets of k-means {old}, data.targets now gives {new}: "
                          "resuming on other targets would mix two label sets; use a new --exp folder")
