"""Progress of long jobs for people watching: a tqdm bar on a terminal, log lines otherwise.

A job whose stderr goes to a file or a pipe (SLURM, ``nohup``, the demo) gets one line every
``every_seconds`` instead of a bar that would fill the log with carriage returns::

    pretrain: step 120/1000 (12.0%), loss 1.234, lr 1.00e-04, 3.21 steps/s, elapsed 0:00:37, eta 0:04:35
    extract[rank 0]: 12.5/63.5 s of audio (19.7%), 4.1 audio-s/s, elapsed 0:00:03, eta 0:00:12

Pretraining (``train.progress``, ``train.progress_every_seconds``), ``speechssl extract``
(``--no-progress``), ``speechssl targets``, ``speechssl corpus`` (reading headers) and the downstream commands (encoding their sets,
training a head) use it. Turning the bar off (clean logs) never turns the lines off, so no
run is silent for longer than that interval.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from typing import Any, TextIO

STEPS = ("step {n}/{total}", "steps/s")  # what the count is and its rate, as pretraining reports them
AUDIO_SECONDS = ("{n:.1f}/{total:.1f} s of audio", "audio-s/s")  # extraction
UTTERANCES = ("{n:.0f}/{total:.0f} utterances", "utt/s")  # files without a known duration
FILES = ("{n:.0f}/{total:.0f} files", "files/s")  # the corpus preparers reading headers
# Between progress lines when stderr is not a terminal (no bar then). The jobs import this name, so a
# test can shorten one module's interval (monkeypatch that module's PROGRESS_EVERY_SECONDS).
PROGRESS_EVERY_SECONDS = 30.0


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


class Progress:
    """Counts from ``initial`` to ``total``; only the main rank shows anything.

    Args:
        total: where the count ends (pretraining: ``train.max_steps``).
        initial: where it starts (or resumes).
        bar: a tqdm bar when ``stream`` is a terminal (``train.progress``; extract's ``progress``).
        every_seconds: log-line interval when there is no bar (None: no lines).
        main: whether this is the rank that reports.
        stream: where the bar goes (stderr).
        desc: the name in front of the bar and of every line.
        counts: ``(format of the count with n and total, unit of the rate)``: :data:`STEPS`,
            :data:`AUDIO_SECONDS` or :data:`UTTERANCES`.
        logger: where the lines go (default this module's logger).
        leave: keep the finished bar on the terminal (False for the many short jobs of a sweep).
    """

    def __init__(self, total: float, initial: float, bar: bool, every_seconds: float | None, main: bool,
                 stream: TextIO | None = None, desc: str = "pretrain", counts: tuple[str, str] = STEPS,
                 logger: logging.Logger | None = None, leave: bool = True):
        stream = stream if stream is not None else sys.stderr
        self.total, self.n, self.start = total, initial, initial
        self.main, self.desc, self.counts = main, desc, counts
        self.log = logger or logging.getLogger(__name__)
        self.bar = None
        if main and bar and stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, mininterval=0.5, desc=desc,
                            file=stream, unit=counts[1].split("/")[0], leave=leave)
        self.every = every_seconds if main and self.bar is None else None
        self.t0 = self.last_line = time.monotonic()
        self.postfix: dict[str, str] = {}

    def update(self, n: float) -> None:
        """The count reached ``n`` (pretraining: the optimiser step)."""
        if self.bar is not None:
            self.bar.update(n - self.n)
        self.n = n
        now = time.monotonic()
        if self.every is not None and now - self.last_line >= self.every:
            self.last_line = now
            self.log.info("%s: %s", self.desc, self.line(now))

    def advance(self, amount: float) -> None:
        """The count grew by ``amount`` (extraction: seconds of audio written)."""
        self.update(self.n + amount)

    def line(self, now: float) -> str:
        elapsed = now - self.t0
        rate = (self.n - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else None
        parts = [f"{self.counts[0].format(n=self.n, total=self.total)} ({100.0 * self.n / max(1, self.total):.1f}%)"]
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        parts += [f"{rate:.3g} {self.counts[1]}", f"elapsed {_clock(elapsed)}",
                  f"eta {_clock(eta) if eta is not None else '?'}"]
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
