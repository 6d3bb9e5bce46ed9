"""Write augmented examples to hear and see what a model is trained on (``speechssl augment``).

For each of the first ``max_utts`` utterances of a manifest: the original and ``n`` augmented
versions as 16 kHz WAV files, one PNG with their log-Mel spectrograms (the spectrogram
augmentations applied to the augmented rows), and ``params.jsonl`` with what was drawn::

    paths = render_examples(cfg, "data/dev.jsonl", "exp/aug_examples", n=3, seed=0)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from speechssl.augment.config import AugmentConfig
from speechssl.augment.pipeline import SpectrogramAugment, WaveformAugment


def _plot(specs: list[torch.Tensor], titles: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(specs), 1, figsize=(8, 1.8 * len(specs)), squeeze=False)
    lo = min(float(s.min()) for s in specs)
    hi = max(float(s.max()) for s in specs)
    for ax, spec, title in zip(axes[:, 0], specs, titles):
        ax.imshow(spec.T.numpy(), origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma")
        ax.set_title(title, fontsize=8, loc="left")
        ax.set_ylabel("mel bin", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[-1, 0].set_xlabel("frame (10 ms)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _describe(params: dict[str, list[float]], row: int) -> str:
    used = [f"{k}={v[row]:.3g}" for k, v in params.items() if not math.isnan(v[row])]
    return ", ".join(used) or "nothing applied"


def render_examples(cfg: AugmentConfig, manifest: str | Path, out_dir: str | Path, n: int = 3, seed: int = 0,
                    max_utts: int = 4, n_mels: int = 80) -> list[Path]:
    """Write WAV + PNG examples of ``cfg`` for the first ``max_utts`` utterances; returns the files.

    Raises:
        ValueError: n or max_utts < 1, or an unreadable manifest / audio file (named).
    """
    from speechssl.audio.io import load_audio, save_audio
    from speechssl.data.manifest import read_manifest
    from speechssl.features.base import build_frontend

    if n < 1 or max_utts < 1:
        raise ValueError(f"augment: -n and --max-utts must be >= 1, got {n} and {max_utts}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frontend = build_frontend({"name": "logmel", "n_mels": n_mels}).eval()
    wave_aug = WaveformAugment(cfg.waveform)
    spec_aug = SpectrogramAugment(cfg.spectrogram, n_mels)
    g = torch.Generator().manual_seed(seed)
    written: list[Path] = []
    lines: list[dict[str, Any]] = []
    for rec in read_manifest(manifest)[:max_utts]:
        wav = load_audio(rec["path"], rec.get("start"), rec.get("duration"))
        batch = wav[None].repeat(n, 1)
        lengths = torch.full((n,), wav.numel(), dtype=torch.long)
        with torch.no_grad():
            aug, aug_lens, wparams = wave_aug(batch, lengths, generator=g, return_params=True)
            feats, feat_lens = frontend(wav[None], lengths[:1])
            afeats, afeat_lens = frontend(aug, aug_lens)
            afeats, sparams = spec_aug(afeats, afeat_lens, generator=g, return_params=True)
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(rec["id"]))
        save_audio(out / f"{stem}_orig.wav", wav)
        written.append(out / f"{stem}_orig.wav")
        specs, titles = [feats[0, : int(feat_lens[0])]], [f"{rec['id']}: original"]
        for k in range(n):
            path = out / f"{stem}_aug{k + 1}.wav"
            save_audio(path, aug[k, : int(aug_lens[k])])
            written.append(path)
            desc = _describe({**wparams, **sparams}, k)
            specs.append(afeats[k, : int(afeat_lens[k])])
            titles.append(f"aug{k + 1}: {desc}")
            lines.append({"id": rec["id"], "file": path.name, **{key: v[k] for key, v in {**wparams, **sparams}.items()
                                                                 if not math.isnan(v[k])}})
        png = out / f"{stem}.png"
        _plot(specs, titles, png)
        written.append(png)
    (out / "params.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    written.append(out / "params.jsonl")
    return written
