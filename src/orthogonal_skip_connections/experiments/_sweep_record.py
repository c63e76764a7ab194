"""What a sweep's jobs tell the process that started the sweep: their run dirs, those whose
claim was refused (each put its dir back as it was) and the exit codes of those that failed,
appended to one file named by :data:`CODES_ENV` (jobs may run in other processes: Hydra's
joblib or submitit launchers), and the sweep's closing line made from them. No Hydra here."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

__all__ = ["CODES_ENV", "write_code", "write_job_dir", "write_refused", "read_codes", "read_job_dirs", "read_refused",
           "sweep_line"]

CODES_ENV = "OSC_SWEEP_CODES"


def write_code(code: int) -> None:
    """Append a failed sweep job's exit code to the file the sweep's parent reads."""
    path = os.environ.get(CODES_ENV)
    if path:
        with open(path, "a") as f:
            f.write(f"{code}\n")


def write_job_dir(run_dir: Path, what: str = "dir") -> None:
    """Append a sweep job's run dir to the same file, as ``dir <path>`` (``refused <path>``: its
    claim was refused, it ran nothing)."""
    path = os.environ.get(CODES_ENV)
    if path:
        with open(path, "a") as f:
            f.write(f"{what} {Path(run_dir).resolve()}\n")


def write_refused(run_dir: Path) -> None:
    write_job_dir(run_dir, "refused")


def _lines() -> list[str]:
    path = os.environ.get(CODES_ENV)
    try:
        return Path(path).read_text().splitlines() if path else []
    except OSError:
        return []


def read_codes() -> list[int]:
    return [int(line) for line in _lines() if line.strip().lstrip("-").isdigit()]


def read_job_dirs(what: str = "dir") -> list[str]:
    return [line[len(what) + 1:] for line in _lines() if line.startswith(f"{what} ")]


def read_refused() -> list[str]:
    return read_job_dirs("refused")


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
