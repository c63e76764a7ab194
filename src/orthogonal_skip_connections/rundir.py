"""Layer 5: one run directory, opened and closed the same way by every app.

    rd = RunDir.claim(path, resume=False, supports_resume=False)  # refuses a used dir; writes nothing
    rd.start(config_dict)              # creates the dir, writes config.yaml (plain YAML)
    ...                                # the app writes metrics, checkpoints, figures into rd.path
    summary = rd.finish(summary)       # summary.json, last, with a ``provenance`` block

summary.json is written last: its presence means a finished run, and a dir holding it (or
a checkpoint) is never reused unless the app can resume and ``resume=true`` asks for it.
Every summary carries a ``report`` section (see :func:`check_report`) that ``osc report``
renders as it is. No Hydra here: the apps hand over plain dicts.
"""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import yaml

from .runs import UserError, atomic_write_text, read_json, to_jsonable, write_json
from .train import distributed
from .train.classifier import CHECKPOINT, SUMMARY

__all__ = ["RunDir", "SUMMARY", "CHECKPOINT", "CONFIG", "RUN", "column", "provenance", "check_report", "git_commit"]

CONFIG = "config.yaml"
RUN = "run.json"  # written at start: which app, and the labels a report groups runs by
REPORT_KEYS = ("title", "question", "tables", "verdict", "figures")


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the package's source tree; None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _package_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("orthogonal-skip-connections")
    except PackageNotFoundError:
        return None


def provenance(device: Any = None, wall_time_s: float | None = None, command: str | None = None) -> dict:
    """Where a result came from: package version, git commit, torch and python versions,
    device, wall time and command line."""
    return {
        "package_version": _package_version(),
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": None if device is None else str(device),
        "wall_time_s": wall_time_s,
        "command": command if command is not None else shlex.join(sys.argv),
    }


def check_report(report: Any) -> dict:
    """A summary's ``report`` section: {title, question, tables: [{caption, columns:
    [{key, label, unit}], rows, note?}], verdict, figures} and optionally ``measures`` (what
    the section measures: definitions, formulas, thresholds) and ``notes`` (caveats), lists
    of sentences. The question and the verdict are non-empty sentences and every column has
    a label. Raises ValueError (a library bug, not a user's mistake) when it is malformed."""
    if not isinstance(report, dict) or set(REPORT_KEYS) - set(report):
        raise ValueError(f"a report section needs the keys {', '.join(REPORT_KEYS)}; got {report!r:.200}")
    if not isinstance(report["question"], str) or not report["question"].strip():
        raise ValueError(f"a report's question is a sentence; got {report['question']!r}")
    for key in ("measures", "notes"):
        if not all(isinstance(x, str) and x for x in report.get(key, [])):
            raise ValueError(f"a report's {key} are sentences; got {report[key]!r:.200}")
    for table in report["tables"]:
        if set(table) < {"caption", "columns", "rows"}:
            raise ValueError(f"a report table needs caption, columns and rows; got {sorted(table)}")
        for col in table["columns"]:
            if set(col) != {"key", "label", "unit"} or not col["label"]:
                raise ValueError(f"a report column needs exactly key, label and unit; got {col!r}")
    if not isinstance(report["verdict"], str) or not report["verdict"].strip():
        raise ValueError(f"a report's verdict is a sentence; got {report['verdict']!r}")
    return report


def column(key: str, label: str, unit: str = "") -> dict:
    """One column of a report table."""
    return {"key": key, "label": label, "unit": unit}


class RunDir:
    """A run directory claimed by one run (see the module docstring)."""

    def __init__(self, path: Path, resume: bool = False, app: str | None = None):
        self.path = Path(path)
        self.app = app
        self.resume = resume
        self.started = time.perf_counter()
        self.device: Any = None
        self.command: str | None = None

    @classmethod
    def claim(cls, path: Path, resume: bool = False, supports_resume: bool = False, app: str | None = None) -> "RunDir":
        """Refuse a dir that holds a finished run, or an unfinished one unless this app can
        resume it and ``resume`` is asked for. Writes nothing."""
        path = Path(path)
        if resume and not supports_resume:
            raise UserError("resume=true: this app cannot resume a run; start a fresh hydra.run.dir")
        summary, ckpt = path / SUMMARY, path / CHECKPOINT
        if not resume and (summary.exists() or ckpt.exists()):
            what = "a finished run (summary.json)" if summary.exists() else \
                "an unfinished run (checkpoint.pt; resume=true continues it)"
            raise UserError(f"{path} already holds {what}; choose another hydra.run.dir")
        return cls(path, resume=resume, app=app)

    @property
    def completed(self) -> dict | None:
        """The summary of a run already completed in this dir (when resuming), else None."""
        if (self.path / SUMMARY).exists():
            done = read_json(self.path / SUMMARY)
            if done.get("status", "completed") == "completed":
                return done
        return None

    def start(self, config: Any, labels: dict | None = None) -> None:
        """Create the dir, save the config (a dataclass or dict) as config.yaml and write
        run.json: the app's name and ``labels`` (what a report groups this run by).
        Under torchrun only rank 0 writes (here and in :meth:`finish`)."""
        self.started = time.perf_counter()
        self.is_started = True
        if not distributed.is_main():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / CONFIG, yaml.safe_dump(to_jsonable(config), sort_keys=False))
        write_json(self.path / RUN, {"app": self.app, "labels": labels or {}})

    is_started = False

    def finish(self, summary: dict, device: Any = None) -> dict:
        """Write summary.json (last: it marks a finished run) with a ``provenance`` block;
        ``summary["report"]`` must be a report section. Returns what was written."""
        check_report(summary.get("report"))
        out = {"app": self.app, **summary}
        out["provenance"] = provenance(device if device is not None else self.device,
                                       time.perf_counter() - self.started, self.command)
        out = to_jsonable(out)
        if distributed.is_main():
            write_json(self.path / SUMMARY, out)
        return out
