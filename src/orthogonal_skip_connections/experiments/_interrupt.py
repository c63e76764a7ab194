"""Ctrl-C and SIGTERM on the command line: one line and an exit code, not a traceback.

SIGTERM (``kill``, Slurm's time limit) is raised as :class:`Terminated`, a KeyboardInterrupt,
so that a call unwinds as after Ctrl-C: run dirs released, a joblib launcher's workers shut
down, what was saved kept for ``resume=true``. Under torchrun the signal keeps its default:
torchrun sends it to every rank when one fails.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

__all__ = ["Terminated", "sigterm_as_interrupt", "stopped"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it unwinds as after Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated


@contextmanager
def sigterm_as_interrupt(enabled: bool = True):
    """Within the block, SIGTERM raises :class:`Terminated` (only the main thread can set a
    handler; elsewhere, or with ``enabled`` false, the signal keeps its handler); the previous
    handler is put back after."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stopped(stop: KeyboardInterrupt, supports_resume: bool, sweep: bool = False) -> tuple[str, int]:
    """The line to print and the exit code for a call stopped by Ctrl-C (130) or SIGTERM (143 = 128 + 15)."""
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    hint = f"; what it saved continues with resume=true and the same {key}" if supports_resume else ""
    if isinstance(stop, Terminated):
        return f"terminated{hint}", 143
    return f"interrupted{hint}", 130
