"""Pretraining progress for people watching: a tqdm bar on a terminal, log lines otherwise.

A job whose stderr goes to a file or a pipe (SLURM, ``nohup``, the demo) gets one line every
``train.progress_every_seconds``::

    pretrain: step 120/1000 (12.0%), loss 1.234, lr 1.00e-04, 3.21 steps/s, elapsed 0:00:37, eta 0:04:35

``train.progress: false`` turns the bar off (clean logs), never the lines, so no run is silent
for longer than that interval.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from typing import Any, TextIO

log = logging.getLogger("speechssl.train.trainer")


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


class Progress:
    """Counts optimiser steps from ``initial`` to ``total``; only the main rank shows anything.

    Args:
        total: ``train.max_steps``.
        initial: the step training starts (or resumes) at.
        bar: ``train.progress``: a tqdm bar when ``stream`` is a terminal.
        every_seconds: ``train.progress_every_seconds``: log-line interval when there is no bar
            (None: no lines).
        main: whether this is the rank that reports.
        stream: where the bar goes (stderr).
    """

    def __init__(self, total: int, initial: int, bar: bool, every_seconds: float | None, main: bool,
                 stream: TextIO | None = None):
        stream = stream if stream is not None else sys.stderr
        self.total, self.step, self.start_step = total, initial, initial
        self.main = main
        self.bar = None
        if main and bar and stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, mininterval=0.5, desc="pretrain",
                            file=stream)
        self.every = every_seconds if main and self.bar is None else None
        self.t0 = self.last_line = time.monotonic()
        self.postfix: dict[str, str] = {}

    def update(self, step: int) -> None:
        """Training reached optimiser step ``step``."""
        if self.bar is not None:
            self.bar.update(step - self.step)
        self.step = step
        now = time.monotonic()
        if self.every is not None and now - self.last_line >= self.every:
            self.last_line = now
            log.info("pretrain: %s", self.line(now))

    def line(self, now: float) -> str:
        elapsed = now - self.t0
        done = self.step - self.start_step
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.step) / rate if rate > 0 else None
        parts = [f"step {self.step}/{self.total} ({100.0 * self.step / max(1, self.total):.1f}%)"]
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        parts += [f"{rate:.3g} steps/s", f"elapsed {_clock(elapsed)}", f"eta {_clock(eta) if eta is not None else '?'}"]
        return ", ".join(parts)

    def set_postfix(self, **values: Any) -> None:
        """Latest logged values (loss, lr), shown on the bar and in the lines."""
        self.postfix = {k: str(v) for k, v in values.items()}
        if self.bar is not None:
            self.bar.set_postfix(**self.postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
