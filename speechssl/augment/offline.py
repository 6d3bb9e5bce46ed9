"""Augmented copies of a labelled training set, for downstream training on frozen features.

A downstream head trains on features an encoder computed once (and cached); augmenting at that
point means adding augmented recordings to the training split, as Kaldi's x-vector recipes do
(reverberated, noisy copies of each utterance). :func:`augment_records` writes ``copies``
augmented versions of every record as 16 kHz WAV files (seeded per record and copy, so reruns write
the same audio and skip files already there) and returns their manifest records: the same labels,
ids ``<id>__aug<k>``::

    train = read_manifest("train.jsonl")
    train += augment_records(train, augment_config(load_yaml("recipes/augment/speech.yaml")), "exp/aug", 2)

``speechssl downstream train --augment C [--augment-copies K]`` does this for its training split;
dev and test stay clean.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import soundfile as sf
import torch

from speechssl.augment.config import AugmentConfig
from speechssl.augment.pipeline import WaveformAugment


def _seed(rec_id: str, copy: int, seed: int) -> int:
    digest = hashlib.sha256(f"{seed}/{rec_id}/{copy}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def augment_records(records: Sequence[dict], cfg: AugmentConfig, out_dir: str | Path, copies: int = 1,
                    seed: int = 0) -> list[dict]:
    """``copies`` waveform-augmented versions of every record (see the module docstring).

    Only the waveform augmentations apply (a frozen encoder computes its own features from the
    audio). Raises ValueError when ``copies`` < 1 or nothing is configured under ``waveform``.
    """
    from speechssl.audio.io import load_audio, save_audio

    if copies < 1:
        raise ValueError(f"augment copies must be >= 1, got {copies}")
    if not cfg.waveform.enabled():
        raise ValueError("augment: the config has no waveform augmentation (a frozen encoder sees audio only)")
    aug = WaveformAugment(cfg.waveform)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    new = []
    for rec in records:
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(rec["id"]))
        wav = None
        for k in range(1, copies + 1):
            path = out / f"{stem}__aug{k}.wav"
            if not path.is_file():
                if wav is None:
                    wav = load_audio(rec["path"], rec.get("start"), rec.get("duration"))
                g = torch.Generator().manual_seed(_seed(str(rec["id"]), k, seed))
                with torch.no_grad():
                    y, n = aug(wav[None], torch.tensor([wav.numel()]), generator=g)
                peak = float(y.abs().max())
                save_audio(path, y[0, : int(n[0])] / max(1.0, peak))  # no clipping in the 16-bit file
            num = int(sf.info(str(path)).frames)
            fields = {key: v for key, v in rec.items() if key not in ("id", "path", "num_samples", "start", "duration")}
            new.append({"id": f"{rec['id']}__aug{k}", "path": str(path.resolve()), "num_samples": num,
                        "sample_rate": 16000, **fields})
    return new
