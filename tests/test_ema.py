"""The EMA teacher (speechssl.modules.ema): the update rule and its schedule, frozen and eval-only,
bf16, exact resume through the Trainer, identical on two DDP ranks, and never in a released encoder.

``toy_ema`` (registered here) is a BYOL-like toy: a student Linear+tanh sees noisy 16-sample
frames and regresses an EMA teacher's output on the clean frames.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import free_port, make_corpus, recipe
from torch import nn

from speechssl.models.base import MODELS, EncoderOutput, LossOutput, ModelSpec, SSLModel
from speechssl.modules.ema import EMATeacher, annealed_decay, released_state
from speechssl.train import checkpoint as ckpt_io
from speechssl.train.config import load_pretrain_config
from speechssl.train.trainer import pretrain
from speechssl.upstream.release import load_released_model, save_released_encoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@dataclasses.dataclass
class ToyEMAConfig:
    frame: int = 16
    hidden: int = 8
    noise: float = 0.05
    ema_start: float = 0.9
    ema_end: float = 0.99
    ema_anneal_steps: int = 4
    release: str = "student"
    frontend: dict[str, Any] = dataclasses.field(default_factory=lambda: {"name": "waveform"})


class _Frontend(nn.Module):
    def to_dict(self) -> dict:
        return {"name": "waveform"}


class ToyEMA(SSLModel):
    name = "toy_ema"

    def __init__(self, cfg: ToyEMAConfig):
        super().__init__(cfg)
        self.frontend = _Frontend()
        self.student = nn.Sequential(nn.Linear(cfg.frame, cfg.hidden), nn.Tanh(), nn.Dropout(0.1))
        self.predictor = nn.Linear(cfg.hidden, cfg.hidden)
        self.teacher = EMATeacher(self.student, cfg.ema_start, cfg.ema_end, cfg.ema_anneal_steps)

    min_samples = property(lambda self: 2 * self.config.frame)
    frame_shift = property(lambda self: self.config.frame)
    layer_names = property(lambda self: ["latent", "context"])

    def _frames(self, wavs):
        t = wavs.shape[1] // self.config.frame
        return wavs[:, : t * self.config.frame].reshape(wavs.shape[0], t, self.config.frame)

    def loss(self, batch) -> LossOutput:
        x = self._frames(batch["wavs"])
        pred = self.predictor(self.student(x + self.config.noise * torch.randn_like(x)))
        with torch.no_grad():
            target = self.teacher(x).float()
        loss = (pred.float() - target).pow(2).mean()
        return LossOutput(loss=loss, metrics={"mse": float(loss.detach())})

    def encode(self, wavs, lengths) -> EncoderOutput:
        h = self.student(self._frames(wavs))
        return EncoderOutput([h, h], lengths // self.config.frame, self.layer_names, self.frame_shift)

    def step_update(self, step: int) -> None:
        self.teacher.update(self.student, step)

    def released_state_dict(self):
        return released_state(self, "teacher.", "student.", self.config.release)

    def complete_state(self, missing):
        return self.teacher.reset_if_missing(self.student, missing, "teacher.")


if "toy_ema" not in MODELS:
    MODELS["toy_ema"] = ModelSpec(ToyEMAConfig, ToyEMA)


# ---------------------------------------------------------------- the update rule
def test_decay_schedule_anneals_linearly_then_holds():
    assert annealed_decay(0, 0.999, 0.99999, 75000) == 0.999
    assert annealed_decay(37500, 0.999, 0.99999, 75000) == pytest.approx(0.999 + 0.5 * (0.99999 - 0.999))
    assert annealed_decay(75000, 0.999, 0.99999, 75000) == annealed_decay(10**6, 0.999, 0.99999, 75000) == 0.99999
    assert annealed_decay(3, 0.99, 0.99, 0) == 0.99  # constant (BYOL-A)
    with pytest.raises(ValueError, match=r"model.ema_end must be in \[0, 1\], got 1.5"):
        EMATeacher(nn.Linear(2, 2), 0.9, 1.5, 10)


def test_update_is_the_ema_of_the_student_and_idempotent_per_step():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    teacher = EMATeacher(student, 0.5, 0.9, 4, copy_keys=["1"])
    t0 = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(3.0)
    assert teacher.update(student, 2)
    d = 0.5 + (0.9 - 0.5) * 2 / 4
    assert float(teacher.decay) == pytest.approx(d) and int(teacher.last_step) == 2
    s = student.state_dict()
    got = teacher.module.state_dict()
    torch.testing.assert_close(got["0.weight"], d * t0["0.weight"] + (1 - d) * s["0.weight"])
    assert torch.equal(got["1.weight"], s["1.weight"])  # copy_keys: copied, not averaged
    assert torch.equal(got["1.running_mean"], s["1.running_mean"])  # buffers: copied
    before = {k: v.clone() for k, v in got.items()}
    assert not teacher.update(student, 2) and not teacher.update(student, 1)  # already applied
    assert all(torch.equal(before[k], v) for k, v in teacher.module.state_dict().items())
    assert teacher.update(student, 3)
    with pytest.raises(ValueError, match=r"copy_keys \['nope'\]"):
        EMATeacher(student, 0.5, 0.9, 4, copy_keys=["nope"])


def test_teacher_is_frozen_eval_only_and_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    model = ToyEMA(ToyEMAConfig()).train()
    assert not model.teacher.module.training and model.student.training
    assert all(not p.requires_grad for p in model.teacher.parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("teacher.") for n in trainable)
    batch = {"wavs": torch.randn(2, 160), "lengths": torch.tensor([160, 160])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.loss(batch)
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and all(p.grad is None for p in model.teacher.parameters())
    model.step_update(1)
    assert all(p.dtype == torch.float32 for p in model.teacher.parameters())
    # dropout: the teacher's output is deterministic in training mode
    x = torch.randn(3, 16)
    assert torch.equal(model.teacher(x), model.teacher(x))


# ---------------------------------------------------------------- release
def test_release_leaves_the_teacher_out_or_puts_it_in_the_students_place(tmp_path):
    torch.manual_seed(0)
    model = ToyEMA(ToyEMAConfig())
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(0.5)
    model.step_update(1)  # the teacher now differs from the student
    assert not torch.equal(model.teacher.module[0].weight, model.student[0].weight)
    save_released_encoder(model, tmp_path / "student")
    from safetensors.torch import load_file

    assert not any(k.startswith("teacher.") for k in load_file(str(tmp_path / "student" / "model.safetensors")))
    loaded = load_released_model(tmp_path / "student")
    assert torch.equal(loaded.student[0].weight, model.student[0].weight)
    assert torch.equal(loaded.teacher.module[0].weight, model.student[0].weight)  # rebuilt from the student
    assert int(loaded.teacher.last_step) == 0
    model.config.release = "teacher"
    save_released_encoder(model, tmp_path / "teacher")
    as_teacher = load_released_model(tmp_path / "teacher")
    assert torch.equal(as_teacher.student[0].weight, model.teacher.module[0].weight)
    assert torch.equal(as_teacher.predictor.weight, model.predictor.weight)  # not in the teacher: the student's


# ---------------------------------------------------------------- training: exact resume, DDP
def _teacher_state(exp: Path) -> dict[str, torch.Tensor]:
    state = ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(exp / "checkpoints"))["model"]
    return {k: v for k, v in state.items() if k.startswith(("teacher.", "student."))}


def test_resume_with_the_teacher_is_bit_exact(tmp_path):
    train = make_corpus(tmp_path / "data", n=10)
    sections = dict(model={"name": "toy_ema"}, optim={"schedule": "constant"},
                    train={"max_steps": 6, "valid_every": 0, "ckpt_every_steps": 100})
    ref = pretrain(load_pretrain_config(recipe(tmp_path, **sections)), train, None, tmp_path / "ref")
    first = pretrain(load_pretrain_config(recipe(tmp_path, **sections), ["train.max_steps=3"]), train, None,
                     tmp_path / "exp")
    assert first.step == 3 and int(_teacher_state(tmp_path / "exp")["teacher.last_step"]) == 3
    second = pretrain(load_pretrain_config(recipe(tmp_path, **sections)), train, None, tmp_path / "exp")
    assert ref.step == second.step == 6
    a, b = _teacher_state(tmp_path / "ref"), _teacher_state(tmp_path / "exp")
    assert int(a["teacher.last_step"]) == 6 and float(a["teacher.decay"]) == pytest.approx(0.99)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["teacher.module.0.weight"], a["student.0.weight"])


def _ddp_rank(rank: int, port: int, cfg: str, train: str, out: str) -> None:
    """One DDP rank (forked from the test process: no interpreter start-up, torch already imported)."""
    import os

    import torch.distributed as dist

    from speechssl.train.trainer import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    trainer = Trainer(load_pretrain_config(cfg), train, None, out)
    trainer.run()
    torch.save({k: v for k, v in trainer.model.state_dict().items() if k.startswith("teacher.")},
               f"{out}/teacher_rank{rank}.pt")
    trainer.close()
    dist.destroy_process_group()
    os._exit(0)  # skip pytest's atexit machinery in the child


def test_ddp_ranks_hold_the_same_teacher(tmp_path):
    import multiprocessing

    train = make_corpus(tmp_path / "data", n=8, seconds=(0.25, 0.25), equal=True)
    cfg = recipe(tmp_path, model={"name": "toy_ema"}, data={"device_batch_seconds": 0.5, "crop_seconds": 0.25},
                 train={"max_steps": 3, "valid_every": 0, "ckpt_every_steps": 100, "plot": False})
    out = tmp_path / "two"
    port = free_port()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_ddp_rank, args=(r, port, str(cfg), str(train), str(out))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert codes == [0, 0], codes
    r0 = torch.load(out / "teacher_rank0.pt", weights_only=True)
    r1 = torch.load(out / "teacher_rank1.pt", weights_only=True)
    assert int(r0["teacher.last_step"]) == 3
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
