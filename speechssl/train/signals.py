"""SIGTERM / SIGINT during pretraining or fine-tuning: note the signal and let the training loop stop
cleanly after the current step (checkpoint; pretraining also releases its encoder); a second Ctrl-C
interrupts at once."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

log = logging.getLogger("speechssl.train.trainer")
#: Preemption drill: after this optimiser step the process sends SIGTERM to itself (tests, SLURM rehearsals;
#: pretraining and fine-tuning).
SELF_SIGTERM_ENV = "SPEECHSSL_SELF_SIGTERM_AT_STEP"


def signal_self_at(step: int) -> None:
    """Send this process SIGTERM if ``step`` is ``$SPEECHSSL_SELF_SIGTERM_AT_STEP`` (tests of the
    graceful stop; unset: nothing)."""
    at = int(os.environ.get(SELF_SIGTERM_ENV, "0") or 0)
    if at and step == at:
        os.kill(os.getpid(), signal.SIGTERM)


class StopSignals:
    """``install()`` catches SIGTERM and SIGINT (main thread only; elsewhere the caller handles
    signals), ``received`` is the first signal caught (None: none), ``restore()`` puts the previous
    handlers back."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _on_signal(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        log.warning("received %s: stopping after this step with a checkpoint", signal.Signals(signum).name)

    def install(self) -> None:
        if not hasattr(signal, "SIGTERM"):
            return
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._on_signal)
        except ValueError:  # not the main thread: the caller handles signals
            self._old.clear()

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()
