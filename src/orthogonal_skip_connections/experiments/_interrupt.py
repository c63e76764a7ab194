"""Ctrl-C and SIGTERM on the command line: one line and an exit code, not a traceback.

SIGTERM (``kill``, Slurm's time limit) is raised as :class:`Terminated`, a KeyboardInterrupt,
so that a call unwinds as after Ctrl-C: run dirs released, a joblib launcher's workers shut
down, what was saved kept for ``resume=true``. Under torchrun the signal keeps its default:
torchrun sends it to every rank when one fails.

The line names the command that continues the call (:func:`resume_command`) once its run dir
(a sweep's: its sweep dir) is known: a default dir (``outputs/<app>/<time>_...``) is known to
the user only by that line.
"""

from __future__ import annotations

import re
import shlex
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

__all__ = ["Terminated", "sigterm_as_interrupt", "stopped", "resume_command", "hydra_quoted"]


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


def hydra_quoted(value: str) -> str:
    """``value`` as the string value of one Hydra override: as it is where it is a path with a
    ``/`` of ASCII ``[\\w/.+-]`` alone (unquoted, ``0``, ``1e3`` or ``true`` would be a number or a bool),
    else quoted as Hydra's grammar reads a quoted string: in double quotes where it holds no
    ``"`` or ``\\`` (``'dir="/a b"'`` after the shell's quoting), else in single quotes with
    ``'`` escaped and the backslashes before a quote doubled (the only ones Hydra unescapes).
    A ``${`` is escaped as OmegaConf reads it, ``\\${`` (a backslash before it doubled), so that
    the dir is not interpolated again."""
    value = re.sub(r"(\\*)\$\{", lambda m: m[1] * 2 + "\\${", value)
    if "/" in value and re.fullmatch(r"[\w/.+-]+", value, re.ASCII):  # (unquoted: ASCII letters only)
        return value
    if '"' not in value and "\\" not in value:
        return f'"{value}"'
    escaped = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value)
    return f"'{escaped}'"


def resume_command(app_name: str, argv: list[str] | None, key: str, where: Path) -> str:
    """The shell command that continues a stopped call of ``osc <app_name> *argv``: the same
    arguments, with ``resume=true`` and ``key=where`` (``hydra.run.dir``, ``hydra.sweep.dir``)
    in place of any value they had. ``argv`` None: a torchrun call, whose command only the user
    knows (its own arguments, then the app's)."""
    again = ["resume=true", f"{key}={hydra_quoted(str(Path(where).absolute()))}"]  # (from any dir)
    if argv is None:
        return f"the same torchrun command with {shlex.join(again)}"
    own = [a for a in argv if a.split("=", 1)[0].lstrip("+~") not in ("resume", key)]
    return "osc " + shlex.join([app_name, *own, *again])


def stopped(stop: KeyboardInterrupt, supports_resume: bool, sweep: bool = False,
            resume: str | None = None, submitted: bool = False) -> tuple[str, int]:
    """The line to print and the exit code for a call stopped by Ctrl-C (130) or SIGTERM (143 = 128 + 15);
    ``resume``: the command that continues it (:func:`resume_command`), where its dir is known;
    ``submitted``: a sweep whose jobs submitit started, which a stop of this process leaves running."""
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    hint = "" if not supports_resume else f"; to continue what it saved: {resume}" if resume else \
        f"; what it saved continues with resume=true and the same {key}"
    if submitted:  # (their run dirs stay locked while they run: a resume now would be refused them)
        hint = "; the jobs it submitted go on running (on Slurm, scancel stops them)" + \
            hint.replace("; to continue what it saved", "; once they end, to continue what they saved")
    if isinstance(stop, Terminated):
        return f"terminated{hint}", 143
    return f"interrupted{hint}", 130
