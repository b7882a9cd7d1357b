"""SIGTERM stops a training or a search the way Ctrl-C does: the checkpoint is saved, then the process exits with
128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as shells and schedulers (Slurm, Kubernetes) expect.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_step = {"depth": 0, "pending": None}  # inside step_in_progress(): the signal that waits for the step's end


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived. A KeyboardInterrupt, so everything that handles Ctrl-C handles both."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum, frame) -> None:
    if _step["depth"]:
        _step["pending"] = _step["pending"] or signum
        return
    raise Stopped(signum)


@contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM raise Stopped inside the block; the previous handlers come back after it.

    SIGINT is handled even where the process inherited it ignored (a run started with `&` or nohup from a script):
    otherwise such a run could only be killed, losing the steps since its last checkpoint. Python delivers signals
    to the main thread only, so elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)  # None: set outside Python


@contextmanager
def step_in_progress():
    """A stop signal inside the block takes effect at its end: an optimizer step -- forward and backward passes,
    update, log line, evaluation, checkpoint -- is done whole or not at all, so the checkpoint saved on stopping
    continues exactly like a run never stopped. The forward pass is inside too: dropout draws from the random
    state the checkpoint keeps, and a checkpoint taken mid-forward would resume with some draws spent.
    """
    _step["depth"] += 1
    try:
        yield
    finally:
        _step["depth"] -= 1
        if not _step["depth"] and _step["pending"]:
            signum, _step["pending"] = _step["pending"], None
            raise Stopped(signum)
