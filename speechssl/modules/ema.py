"""Exponential-moving-average (EMA) teacher: a frozen copy of (part of) a student network.

Used by the teacher-student families: data2vec / data2vec 2.0 (Baevski et al. 2022, 2023; fairseq
``fairseq/modules/ema_module.py`` ``EMAModule`` and ``data2vec2.py`` ``set_num_updates``), BYOL /
BYOL-A (Grill et al. 2020; Niizumi et al. 2021) and MoCo's momentum encoder (He et al. 2020).

After every optimiser step ``s`` (the Trainer calls ``model.step_update(s)``, the model calls
:meth:`EMATeacher.update`), every teacher parameter becomes::

    teacher = decay(s) * teacher + (1 - decay(s)) * student          (torch.lerp, in fp32)
    decay(s) = ema_end                                               if s >= ema_anneal_steps
             = ema_start + (ema_end - ema_start) * s / ema_anneal_steps   otherwise

(fairseq ``get_annealed_rate``; data2vec 2.0 audio: 0.999 -> 0.99999 over 75k steps; BYOL-A: a
constant 0.99). Buffers (e.g. batch-norm running statistics) and the parameters named in
``copy_keys`` are copied from the student instead of averaged (fairseq ``skip_keys``: data2vec
1.0 shares its positional convolution with the teacher this way).

Properties the families rely on:

* **Frozen**: teacher parameters have ``requires_grad=False``, so no optimiser updates them and
  DistributedDataParallel never all-reduces them; every rank applies the same update to the same
  (all-reduced) student weights, so the teacher stays identical on every rank without communication.
  The teacher stays in eval mode (no dropout) whatever ``model.train()`` says, unless ``train_mode``.
* **Exactly resumable**: the teacher's weights, the last decay and the step it was last updated at
  (``last_step``) are in the model's state dict, hence in every training checkpoint. :meth:`update`
  is idempotent per step (a step at or before ``last_step`` is ignored), so the Trainer's
  ``step_update`` call after loading a checkpoint does not update twice.
* **Mixed precision**: the teacher is held and averaged in fp32; under bf16 autocast its forward
  runs in bf16 like the student's, and families compute their targets from it in fp32.
* **Not released**: :func:`released_state` gives the weights a released encoder holds: the student
  (``release: student``, the default), or the teacher's weights in the student's place
  (``release: teacher``); the teacher's own keys are never written. A model loaded from such a
  release rebuilds its teacher as a copy of the student (:meth:`EMATeacher.reset_if_missing`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn


def annealed_decay(step: int, start: float, end: float, anneal_steps: int) -> float:
    """EMA decay after optimiser step ``step``: linear from ``start`` (step 0) to ``end`` (``anneal_steps``)."""
    if anneal_steps <= 0 or step >= anneal_steps:
        return float(end)
    return float(start + (end - start) * step / anneal_steps)


def check_ema_config(start: float, end: float, anneal_steps: int, where: str = "model") -> None:
    """Refuse decays outside [0, 1] and a negative anneal length, naming the key."""
    for key, value in (("ema_start", start), ("ema_end", end)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{where}.{key} must be in [0, 1], got {value}")
    if anneal_steps < 0:
        raise ValueError(f"{where}.ema_anneal_steps must be >= 0, got {anneal_steps}")


class EMATeacher(nn.Module):
    """A frozen EMA copy of ``student`` (see the module docstring).

    Args:
        student: the module to copy (deep-copied now; pass the same module to :meth:`update`).
        ema_start, ema_end, anneal_steps: the decay schedule.
        copy_keys: parameter names (or name prefixes) of ``student`` copied at every update
            instead of averaged.
        train_mode: keep the teacher in the parent's train/eval mode (default: always eval).

    Attributes:
        module: the teacher network (call it like the student).
        decay: [] float64 buffer, the decay of the last update (``ema_start`` before any).
        last_step: [] int64 buffer, the optimiser step of the last update (0: none yet).
    """

    def __init__(self, student: nn.Module, ema_start: float, ema_end: float, anneal_steps: int,
                 copy_keys: Sequence[str] = (), train_mode: bool = False):
        super().__init__()
        check_ema_config(ema_start, ema_end, anneal_steps)
        self.ema_start, self.ema_end, self.anneal_steps = float(ema_start), float(ema_end), int(anneal_steps)
        self.copy_keys = tuple(copy_keys)
        self.train_mode = train_mode
        self.module = copy.deepcopy(student).float()
        self.module.requires_grad_(False)
        names = [n for n, _ in student.named_parameters()]
        unknown = [k for k in self.copy_keys if not any(n == k or n.startswith(k + ".") for n in names)]
        if unknown:
            raise ValueError(f"EMATeacher: copy_keys {unknown} name no parameter of the student")
        self.register_buffer("decay", torch.tensor(float(ema_start), dtype=torch.float64))
        self.register_buffer("last_step", torch.zeros((), dtype=torch.long))
        self.train(False)

    def train(self, mode: bool = True) -> EMATeacher:
        super().train(mode)
        self.module.train(mode and self.train_mode)
        return self

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def _copied(self, name: str) -> bool:
        return any(name == k or name.startswith(k + ".") for k in self.copy_keys)

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> bool:
        """Move the teacher towards ``student`` after optimiser step ``step`` (1-based).

        Returns False (and changes nothing) when ``step`` is not after ``last_step``: the update
        of that step was already applied (e.g. the checkpoint resumed from holds it).
        """
        if step <= int(self.last_step):
            return False
        decay = annealed_decay(step, self.ema_start, self.ema_end, self.anneal_steps)
        mine = dict(self.module.named_parameters())
        theirs = dict(student.named_parameters())
        if mine.keys() != theirs.keys():
            raise RuntimeError(f"EMATeacher.update: the student's parameters {sorted(set(theirs) ^ set(mine))[:5]} "
                               "do not match the teacher's (pass the module the teacher was copied from)")
        averaged = [n for n in mine if not self._copied(n)]
        if averaged and decay < 1.0:
            targets = [mine[n] for n in averaged]
            sources = [theirs[n].detach().to(torch.float32) for n in averaged]
            torch._foreach_lerp_(targets, sources, 1.0 - decay)
        for n in mine:
            if self._copied(n):
                mine[n].copy_(theirs[n].detach())
        student_buffers = dict(student.named_buffers())
        for n, buf in self.module.named_buffers():
            if n in student_buffers:
                buf.copy_(student_buffers[n])
        self.decay.fill_(decay)
        self.last_step.fill_(step)
        return True

    @torch.no_grad()
    def reset(self, student: nn.Module) -> None:
        """Teacher := student (weights and buffers); decay and step back to the start."""
        self.module.load_state_dict(student.state_dict())
        self.decay.fill_(self.ema_start)
        self.last_step.zero_()

    def reset_if_missing(self, student: nn.Module, missing: Sequence[str], prefix: str) -> list[str]:
        """After a non-strict load that lacked the teacher (a released encoder, ``--init-from`` one):
        if every key under ``prefix`` (this teacher's name in the model + ".") is missing, rebuild
        the teacher from the (loaded) student. Returns the keys of ``missing`` still missing."""
        # judged on the parameters: a batch norm fills in a missing num_batches_tracked itself
        own = [f"{prefix}module.{n}" for n, _ in self.module.named_parameters()]
        gone = set(missing)
        if all(k in gone for k in own):
            self.reset(student)
            return [k for k in missing if not k.startswith(prefix)]
        return list(missing)


def released_state(model: nn.Module, teacher_prefix: str, student_prefix: str,
                   release: str = "student") -> dict[str, torch.Tensor]:
    """The state dict a released encoder of ``model`` holds (see the module docstring).

    Args:
        model: the whole model; ``model.state_dict()`` holds the student and the teacher.
        teacher_prefix: the teacher's key prefix in that dict (e.g. ``"teacher."``).
        student_prefix: where the student module the teacher copies sits (e.g. ``"encoder."``).
        release: ``"student"``: the teacher is left out; ``"teacher"``: its weights replace the
            student's (parts the teacher shares with the student stay the student's).
    """
    if release not in ("student", "teacher"):
        raise ValueError(f"model.release must be 'student' or 'teacher', got {release!r}")
    state = model.state_dict()
    inner = teacher_prefix + "module."
    out = {k: v for k, v in state.items() if not k.startswith(teacher_prefix)}
    if release == "teacher":
        for key, value in state.items():
            if key.startswith(inner):
                target = student_prefix + key[len(inner):]
                if target not in out:
                    raise KeyError(f"released_state: teacher key {key} has no student counterpart {target}")
                out[target] = value
    return out


def teacher_drift(teacher: nn.Module, student: Mapping[str, torch.Tensor] | nn.Module) -> float:
    """Relative distance ||teacher - student|| / ||student|| over the parameters (a health number:
    0 right after a reset, it grows while the student moves faster than the teacher follows)."""
    theirs = dict(student.named_parameters()) if isinstance(student, nn.Module) else dict(student)
    num = den = 0.0
    for name, p in teacher.named_parameters():
        s = theirs[name].detach().float()
        num += float((p.float() - s).pow(2).sum())
        den += float(s.pow(2).sum())
    return (num / max(den, 1e-30)) ** 0.5
