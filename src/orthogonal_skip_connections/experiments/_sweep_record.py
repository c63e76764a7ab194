"""What a sweep's jobs tell the process that started the sweep: their run dirs, those whose
claim was refused (each put its dir back as it was) and the exit codes and lines of those that
failed, and the sweep's closing line made from them. No Hydra here.

Jobs may run in other processes, on other machines (Hydra's joblib or submitit launchers): each
process appends to a file of its own (``<host>-<pid>``: appends from several NFS clients to one
file can overwrite each other) in the record dir named by :data:`CODES_ENV`. That dir is in
the sweep dir where the sweep dir is known before Hydra runs (:func:`new_record`): a Slurm job
on a compute node writes where its run dir is, not into the login node's /tmp."""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path

__all__ = ["CODES_ENV", "new_record", "remove_record", "save_before", "load_before", "job_failed", "write_job_dir",
           "write_refused", "read_codes", "read_job_dirs", "read_refused", "read_errors", "sweep_line"]

CODES_ENV = "OSC_SWEEP_CODES"


def new_record(sweep_dir: Path | None = None) -> Path:
    """A record dir for one call: ``<sweep_dir>/.osc-sweep-<host>-<pid>-<random>`` (made by
    :func:`save_before` or by the first job that writes), or, for a call whose sweep dir is not
    known yet (or no sweep), a new temporary dir. The records that killed calls of this host
    left in the sweep dir (their process gone: SIGKILL gives it no time to remove its own)
    are removed."""
    if sweep_dir is None:
        return Path(tempfile.mkdtemp(prefix="osc-sweep-"))
    sweep_dir = Path(sweep_dir).absolute()  # (a job may chdir)
    host = socket.gethostname().replace("-", "_")
    for old in sweep_dir.glob(f".osc-sweep-{host}-*-*"):
        pid = old.name.removeprefix(f".osc-sweep-{host}-").split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return sweep_dir / f".osc-sweep-{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_record(record: Path | None) -> None:
    """Remove a record dir (None: a call that made none)."""
    if record is not None:
        shutil.rmtree(record, ignore_errors=True)


_BEFORE = "before.json"


def save_before(record: Path, before: tuple) -> None:
    """Keep a sweep's undo snapshot (:func:`._leftovers.sweep_before`) in ``record``, where a job
    refused its run dir reads it (:func:`load_before`), rather than in every job's pickled task:
    a re-sweep's snapshot holds every job's Hydra files (300 jobs: 4 MB, once per job)."""
    def entry(e):
        return e and [str(e[0]), e[1], {str(p): base64.b64encode(b).decode() for p, b in e[2].items()},
                      None if e[3] is None else str(e[3])]

    Path(record).mkdir(parents=True, exist_ok=True)
    (Path(record) / _BEFORE).write_text(json.dumps([entry(before[0]), [entry(e) for e in before[1]]]))


def load_before() -> tuple | None:
    """The snapshot :func:`save_before` kept in this sweep's record (None if there is none)."""
    path = os.environ.get(CODES_ENV)
    try:
        sweep, jobs = json.loads((Path(path) / _BEFORE).read_text()) if path else (None, None)
    except (OSError, ValueError):
        return None

    def entry(e):
        return e and (Path(e[0]), e[1], {Path(p): base64.b64decode(b) for p, b in e[2].items()},
                      None if e[3] is None else Path(e[3]))

    return None if sweep is None else (entry(sweep), [entry(e) for e in jobs])


def _append(line: str) -> None:
    path = os.environ.get(CODES_ENV)
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        with open(Path(path) / f"{socket.gethostname()}-{os.getpid()}", "a") as f:
            f.write(f"{line}\n")


def job_failed(code: int, line: str) -> None:
    """A failed sweep job: its one line on stderr, and its exit code and line in the record the
    sweep's parent reads (:func:`read_errors`: a Slurm job's stderr is a file under .submitit/)."""
    print(line, file=sys.stderr)
    _append(str(code))
    _append(f"error {line}")


def write_job_dir(run_dir: Path, what: str = "dir") -> None:
    """Append a sweep job's run dir to the same record, as ``dir <path>`` (``refused <path>``: its
    claim was refused, it ran nothing)."""
    _append(f"{what} {Path(run_dir).resolve()}")


def write_refused(run_dir: Path) -> None:
    write_job_dir(run_dir, "refused")


def _lines() -> list[str]:
    path = os.environ.get(CODES_ENV)
    try:
        files = sorted(Path(path).iterdir()) if path else []
    except OSError:  # no job wrote
        return []
    lines = []
    for file in (f for f in files if f.name != _BEFORE):
        try:
            lines += file.read_text().splitlines()
        except OSError:
            pass
    return lines


def read_codes() -> list[int]:
    return [int(line) for line in _lines() if line.strip().lstrip("-").isdigit()]


def read_job_dirs(what: str = "dir") -> list[str]:
    """The run dirs written as ``what``, each once (a job Slurm requeued writes its dir again)."""
    return list(dict.fromkeys(line[len(what) + 1:] for line in _lines() if line.startswith(f"{what} ")))


def read_refused() -> list[str]:
    return read_job_dirs("refused")


def read_errors() -> list[str]:
    """The failed jobs' lines (:func:`job_failed`), each once."""
    return read_job_dirs("error")


def sweep_line(dirs: list[str], codes: list[int]) -> str:
    """``sweep: 4 jobs, 2 failed, 1 diverged; run dirs under D (osc report D tables them)``, or ''
    for no job dirs (not a sweep). A job whose summary.json says ``diverged`` is counted as such,
    the other jobs with a non-zero code as failed."""
    if not dirs:
        return ""
    where = Path(os.path.commonpath(dirs)) if len(dirs) > 1 else Path(dirs[0]).parent
    diverged = sum(_status(d) == "diverged" for d in dirs)
    failed = (f", {len(codes) - diverged} failed" if len(codes) > diverged else "") + \
        (f", {diverged} diverged" if diverged else "")
    return (f"sweep: {len(dirs)} job{'s' if len(dirs) != 1 else ''}{failed}; run dirs under {where} "
            f"(osc report {shlex.quote(str(where))} tables them)")


def _status(run_dir: str) -> str | None:
    """The ``status`` of a job's summary.json (None if it has none, or cannot be read)."""
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None
