"""Helpers shared by several test modules (test modules import from here, never from each other).

* ``built_in_families()`` / ``tiny_model(name)``: the registered families; one's ``<name>_tiny()``
  preset, randomly initialised.
* ``toy_linear``: a tiny SSL model for the pretraining-engine tests. It predicts the next 16-sample
  waveform frame from the current one through an 8-unit tanh layer (squared error over valid frames
  only), adds a little Gaussian noise to its input in training (so exact resume also checks the
  torch RNG), and gives a NaN loss for utterances whose id is in ``nan_ids`` (the NaN guard).
  Importing this module registers it in ``MODELS``; ``CRASH`` injects an in-process crash.
* ``speech_batch(lengths)``: a padded batch of noisy sines for ``model.loss``.
* ``make_corpus`` / ``recipe``: a tiny noisy-sine corpus and recipe YAML.
* ``check_resume_after_crash``: pretrain uninterrupted, then crash mid-run, resume, and compare weights.
* ``check_encoder_against(enc, x, lengths, out, out_len, grads, reference)``: a conv encoder's output over
  valid frames and its parameter gradients equal the run of ``enc`` under the ``reference`` context.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch import nn

from speechssl.config import to_dict
from speechssl.models.base import MODELS, EncoderOutput, LossOutput, ModelSpec, SSLModel, build_model
from speechssl.train.trainer import SELF_SIGTERM_ENV

#: In-process crash injection: raise after this many training ``loss`` calls (None: never).
CRASH = {"after": None, "calls": 0}


@dataclasses.dataclass
class ToyConfig:
    frame: int = 16  # samples per frame (= frame_shift)
    hidden: int = 8  # tanh units
    noise: float = 0.01  # std of the input noise in training
    nan_ids: list[str] = dataclasses.field(default_factory=list)  # utterances that give a NaN loss
    frontend: dict[str, Any] = dataclasses.field(default_factory=lambda: {"name": "waveform"})


class FramesFrontend(nn.Module):
    def __init__(self, frame: int):
        super().__init__()
        self.frame = frame

    def to_dict(self) -> dict:
        return {"name": "waveform"}


class ToyLinear(SSLModel):
    name = "toy_linear"

    def __init__(self, cfg: ToyConfig):
        super().__init__(cfg)
        self.frontend = FramesFrontend(cfg.frame)
        self.enc = nn.Linear(cfg.frame, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.frame)
        self.register_buffer("last_step", torch.zeros((), dtype=torch.long))

    @property
    def min_samples(self) -> int:
        return 2 * self.config.frame

    @property
    def frame_shift(self) -> int:
        return self.config.frame

    @property
    def layer_names(self) -> list[str]:
        return ["latent", "context"]

    def _frames(self, wavs, lengths):
        f = self.config.frame
        t = wavs.shape[1] // f
        x = wavs[:, : t * f].reshape(wavs.shape[0], t, f)
        return x, lengths // f

    def loss(self, batch) -> LossOutput:
        if CRASH["after"] is not None and self.training:
            CRASH["calls"] += 1
            if CRASH["calls"] > CRASH["after"]:
                raise RuntimeError("injected crash")
        wavs = batch["wavs"]
        if self.training and self.config.noise:
            wavs = wavs + self.config.noise * torch.randn_like(wavs)
        x, n = self._frames(wavs, batch["lengths"])
        pred = self.out(torch.tanh(self.enc(x[:, :-1])))
        mask = torch.arange(x.shape[1] - 1, device=x.device)[None, :] < (n - 1)[:, None]
        err = ((pred - x[:, 1:]) ** 2).mean(-1)
        loss = (err * mask).sum() / mask.sum().clamp(min=1)
        if any(i in self.config.nan_ids for i in batch["ids"]):
            loss = loss * float("nan")
        return LossOutput(loss=loss.float(), metrics={"mse": float(loss.detach()), "frames": float(mask.sum())})

    def encode(self, wavs, lengths) -> EncoderOutput:
        x, n = self._frames(wavs, lengths)
        h = torch.tanh(self.enc(x))
        return EncoderOutput([h, h], n, self.layer_names, self.frame_shift)

    def step_update(self, step: int) -> None:
        self.last_step.fill_(step)


if "toy_linear" not in MODELS:
    MODELS["toy_linear"] = ModelSpec(ToyConfig, ToyLinear)


def make_corpus(folder: Path, n: int = 12, seconds: tuple[float, float] = (0.3, 0.6), short: int = 0,
                seed: int = 0, equal: bool = False, name: str = "train") -> Path:
    """Write ``n`` noisy-sine wavs (+ ``short`` 1-ms ones) and a manifest; returns the manifest path."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n + short):
        dur = 0.001 if i >= n else (seconds[0] if equal else rng.uniform(*seconds))
        num = int(dur * 16000)
        t = np.arange(num) / 16000
        wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.01 * rng.standard_normal(num)
        path = folder / f"{name}_{i:03d}.wav"
        sf.write(path, wav.astype(np.float32), 16000, subtype="PCM_16")
        lines.append({"id": f"{name}_{i:03d}", "path": path.name, "num_samples": num, "sample_rate": 16000,
                      "speaker": f"spk{i % 3}"})
    manifest = folder / f"{name}.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return manifest


def recipe(tmp: Path, **sections: dict) -> Path:
    """A tiny recipe YAML (toy model, 1-s batches, 0.25-s crops), sections merged over the defaults."""
    import yaml

    base = {
        "model": {"name": "toy_linear"},
        "data": {"max_batch_seconds": 1.0, "crop_seconds": 0.25, "min_seconds": 0.1},
        "optim": {"name": "adam", "lr": 1e-2, "schedule": "cosine", "warmup_steps": 2},
        "train": {"max_steps": 6, "log_every": 1, "valid_every": 3, "ckpt_every_steps": 3,
                  "progress": False, "seed": 1},
    }
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def check_resume_after_crash(monkeypatch, model_cls: type, sections: dict, train: Path, tmp: Path,
                             crash_at: int = 4) -> None:
    """A family's exact resume through the Trainer, the way a crash really happens.

    Pretrains the recipe ``sections`` (checkpoints every 2 steps) once without interruption, once with
    ``model_cls.loss`` raising at its ``crash_at``-th training call, then resumes the crashed run from its
    last checkpoint; both runs must end at the same step with bit-identical weights.
    """
    import pytest

    from speechssl.train import checkpoint as ckpt_io
    from speechssl.train.config import load_pretrain_config
    from speechssl.train.trainer import pretrain

    def run(name: str):
        return pretrain(load_pretrain_config(recipe(tmp, **sections)), train, None, tmp / name)

    ref = run("ref")
    calls = {"n": 0}
    real = model_cls.loss

    def crashing(self, batch):
        if self.training:
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise RuntimeError("injected crash")
        return real(self, batch)

    monkeypatch.setattr(model_cls, "loss", crashing)
    with pytest.raises(RuntimeError, match="injected crash"):
        run("crashed")
    monkeypatch.setattr(model_cls, "loss", real)
    every = sections["train"]["ckpt_every_steps"]
    last = ckpt_io.latest_checkpoint(tmp / "crashed" / "checkpoints")
    assert last.name == f"step_{(crash_at - 1) // every * every:08d}.pt", last
    resumed = run("crashed")
    assert ref.step == resumed.step == sections["train"]["max_steps"]
    a = ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(tmp / "ref" / "checkpoints"))
    b = ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(tmp / "crashed" / "checkpoints"))
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def built_in_families() -> list[str]:
    """Every family registered in ``MODELS`` by ``speechssl.models`` (test-only models excluded)."""
    return sorted(n for n, spec in MODELS.items() if spec.build.__module__.startswith("speechssl.models."))


def tiny_model(name: str, seed: int = 0) -> SSLModel:
    """The family's ``<name>_tiny()`` preset, randomly initialised from ``seed``, in eval mode."""
    module = importlib.import_module(f"speechssl.models.{name}")
    preset = getattr(module, f"{name}_tiny")
    torch.manual_seed(seed)
    return build_model({"name": name, **to_dict(preset())}).eval()


def speech_batch(lengths: list[int], seed: int = 0, speakers: list[str] | None = None) -> dict:
    """A pretraining batch of noisy sines: ``wavs`` [B, max(lengths)] zero-padded, ``lengths``, ``ids``
    and, when given, ``speaker``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(max(lengths)) / 16000
    f0 = 100 + 300 * torch.rand(len(lengths), 1, generator=g)
    wavs = torch.sin(2 * torch.pi * f0 * t[None]) + 0.1 * torch.randn(len(lengths), max(lengths), generator=g)
    lengths = torch.tensor(lengths)
    wavs = wavs * (torch.arange(wavs.shape[1])[None] < lengths[:, None])
    batch = {"wavs": wavs, "lengths": lengths, "ids": [str(i) for i in range(len(lengths))]}
    if speakers is not None:
        batch["speaker"] = speakers
    return batch


def check_mlp_input_block(build, embed, check_mlp) -> None:
    """The ``input_block: linear | mlp`` contract of the reconstruction families (TERA, MAE): mean-pooled
    over an utterance, a linear embedding of utterance-CMVN frames is its bias whatever the audio; the
    MLP block's GELU keeps a per-utterance (per-voice) part. ``build(block)`` makes the model,
    ``embed(model, batch)`` its per-frame input embedding [B, T, D], ``check_mlp(model, batch)`` asserts
    family-specific things of the MLP model; an unknown block is refused, naming the key."""
    import pytest

    b = speech_batch([16000, 16000], seed=3)  # two sines of different pitch
    pooled = {}
    for block in ("linear", "mlp"):
        torch.manual_seed(0)
        model = build(block).eval()
        with torch.no_grad():
            pooled[block] = embed(model, b).mean(1)
        if block == "mlp":
            check_mlp(model, b)
    torch.testing.assert_close(pooled["linear"][0], pooled["linear"][1], atol=1e-5, rtol=0)
    assert float((pooled["mlp"][0] - pooled["mlp"][1]).abs().max()) > 1e-3
    with pytest.raises(ValueError, match=r"model.input_block: 'conv' is not one of \['linear', 'mlp'\]"):
        build("conv")


def check_rotary_transformer() -> None:
    """RoPE in :class:`~speechssl.modules.transformer.TransformerEncoder`: shifting every position leaves
    the output unchanged (attention sees relative positions only), the positions travel with their
    frames (a permutation of frames and positions permutes the output), and a different relative layout
    changes it; without positions the encoder is permutation-equivariant."""
    from speechssl.modules.transformer import TransformerEncoder

    torch.manual_seed(0)
    enc = TransformerEncoder(32, 2, 4, 64, layer_norm_first=True, pos_conv_kernel=0, dropout=0.0,
                             attention_dropout=0.0).eval()
    x = torch.randn(2, 12, 32)
    pos = torch.arange(12)[None]
    with torch.no_grad():
        out, _ = enc(x, positions=pos)
        torch.testing.assert_close(enc(x, positions=pos + 7)[0], out, atol=1e-4, rtol=0)
        perm = torch.randperm(12)
        torch.testing.assert_close(enc(x[:, perm], positions=pos[:, perm])[0], out[:, perm], atol=1e-4, rtol=0)
        assert float((enc(x, positions=2 * pos)[0] - out).abs().max()) > 1e-3
        plain, _ = enc(x)
        torch.testing.assert_close(enc(x[:, perm])[0], plain[:, perm], atol=1e-4, rtol=0)
        assert float((plain - out).abs().max()) > 1e-3


def script_env(**extra: str) -> dict[str, str]:
    """The environment for the recipes' shell scripts: this interpreter's bin folder first on PATH, so
    ``speechssl`` is found when the suite runs as ``.venv/bin/python -m pytest`` without an activated venv."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra)


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (SELF_SIGTERM_ENV, "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def run_group(cmd: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    """For multi-process tests: run ``cmd`` in its own process group; on timeout kill the whole group (torchrun's workers too)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s: {' '.join(cmd)}\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ConstructedSource:
    """Base of hand-made downstream feature sources in tests: the ``FeatureSource`` methods other
    than ``features`` (which each test defines), answering like a source that cannot tell its
    layer aliases (``run_experiment`` then compares values)."""

    spec = "test"

    def describe(self) -> dict:
        return {"spec": self.spec}

    def layer_aliases(self) -> None:
        return None

    def fingerprint(self) -> dict:
        return {"spec": "test"}

    def release(self) -> None:
        pass


def make_glide_corpus(folder: Path, n: int = 8, seconds: float = 1.2, seed: int = 0) -> Path:
    """``n`` clips of a harmonic tone whose pitch glides and that pauses for 0.1-0.2 s mid-clip, plus a
    manifest; returns its path. Unlike :func:`make_corpus`'s stationary sines (white noise after
    utterance CMVN), neighbouring frames predict a hidden one: what masked-reconstruction models learn."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    num = int(seconds * 16000)
    t = np.arange(num) / 16000
    lines = []
    for i in range(n):
        f0 = np.linspace(rng.uniform(100, 200), rng.uniform(150, 300), num)
        phase = 2 * np.pi * np.cumsum(f0) / 16000
        wav = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.4 * np.sin(2 * np.pi * 3 * t))
        gap = int(rng.uniform(0.3, 0.7) * num)
        wav[gap: gap + int(rng.uniform(0.1, 0.2) * 16000)] = 0.0
        wav = 0.2 * wav + 0.003 * rng.standard_normal(num)
        path = folder / f"glide_{i:03d}.wav"
        sf.write(path, wav.astype(np.float32), 16000, subtype="PCM_16")
        lines.append({"id": f"glide_{i:03d}", "path": path.name, "num_samples": num, "sample_rate": 16000,
                      "speaker": f"spk{i % 2}"})
    manifest = folder / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return manifest


def check_encoder_against(enc: nn.Module, x: torch.Tensor, lengths: torch.Tensor, out: torch.Tensor,
                          out_len: torch.Tensor, grads: list[torch.Tensor], reference) -> None:
    """``out`` [B, T, C] over valid frames and ``grads`` (of the mean-square loss over valid frames, per
    parameter of ``enc``) equal ``enc(x, lengths)`` run under the context manager ``reference``."""
    with reference:
        ref, ref_len = enc(x, lengths)
    assert torch.equal(out_len, ref_len)
    for i, n in enumerate(ref_len.tolist()):
        torch.testing.assert_close(out[i, :n], ref[i, :n], atol=1e-4, rtol=1e-4)
    ref_loss = sum(ref[i, :n].square().mean() for i, n in enumerate(ref_len.tolist()))
    for (name, _), a, r in zip(enc.named_parameters(), grads, torch.autograd.grad(ref_loss, list(enc.parameters()))):
        scale = float(r.abs().max())
        torch.testing.assert_close(a, r, atol=1e-4 * scale, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")
