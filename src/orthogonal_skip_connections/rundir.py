"""Layer 5: one run directory, opened and closed the same way by every app.

    rd = RunDir.claim(path, resume=False, supports_resume=False, config=cfg)  # refuses a used dir
    rd.start(config_dict)              # creates the dir, writes config.yaml (plain YAML); see its docstring
    ...                                # the app writes metrics, checkpoints, figures into rd.path
    summary = rd.finish(summary)       # summary.json, last, with a ``provenance`` block
    rd.release()                       # the run dir's lock

summary.json is written last: its presence means a finished run, and a dir holding it (or
what an unfinished run saved, :func:`saved_state`: a checkpoint.pt, a parts.json) is never
reused unless the app can resume and ``resume=true`` asks for it.
Every summary carries a ``report`` section (see :func:`check_report`) that ``osc report``
renders as it is. No Hydra here: the apps hand over plain dicts.

One writer at a time: :meth:`RunDir.claim` takes an exclusive ``flock`` on ``<dir>/.lock``
(held until :meth:`release` or the process ends, so a killed run never leaves a stale
lock); a second claim of the same dir, from any process, is refused in one line. On a file
system without file locks (Lustre mounted without ``-o flock``, NFS without lockd) the run
goes on unlocked after a one-line warning, rather than not at all. The empty
``.lock`` file itself stays in a dir that existed before (even when the claim is refused):
removing it while another process may be opening it would let two writers lock two files. A
resumed run must have the config it was started with: ``resume=true`` with a config that
differs from the saved config.yaml in any key but :data:`RESUME_IGNORED` is refused in one
line naming the keys, before anything is written. Temporary files a killed write left
behind (``.<name>.*.tmp``) are removed when a run resumes.

A run that does not complete still leaves a summary.json: ``status: diverged``
(:meth:`RunDir.diverged`, with where and how training diverged) or ``status: failed``
(:meth:`RunDir.failed`, with the reason), each with provenance and a report section.
"""

from __future__ import annotations

import errno
import os
import platform
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import yaml

from .runs import UserError, atomic_write_text, read_json, to_jsonable, write_json
from .train import distributed
from .train.classifier import CHECKPOINT, SUMMARY, resume_advice

__all__ = ["RunDir", "SUMMARY", "CHECKPOINT", "CONFIG", "RUN", "ERROR", "column", "provenance", "check_report", "git_commit",
           "RESUME_IGNORED", "config_differences", "check_dir_writable", "in_use", "holding", "Refused", "study_advice",
           "sweep_advice", "SWEEP_KEY", "PARTS", "saved_state", "damaged"]

# keys that may differ between a run and its resume: they change how a run is shown or
# where it computes, not what it computes (a resumed CPU run is bit-identical with the same
# num_threads and device; another thread count or device changes float32 sums' rounding)
RESUME_IGNORED = ("resume", "progress", "num_threads", "device", "jobs", "save_checkpoint", "data.root",
                  "data.download", "tensorboard", "wandb.mode", "wandb.project")
LOCK = ".lock"
CONFIG = "config.yaml"
RUN = "run.json"  # written at start: which app, and the labels a report groups runs by
SWEEP_KEY = "hydra.sweep.dir"  # the setting that chose a sweep's job's dir (App.run's key for one)
ERROR = "error.txt"  # the traceback of a run that crashed (a library error; a study job's refusal too)
# the parts of a run already done, for an app that resumes part by part (two_stage: its
# finished seeds); like a classifier's checkpoint.pt, it makes a dir hold an unfinished run
PARTS = "parts.json"
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
    of sentences, and ``captions`` ({figure file: what it shows and which question it answers}). The question and the verdict are non-empty sentences and every column has
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
    captions = report.get("captions", {})
    if not isinstance(captions, dict) or not all(k in report["figures"] and isinstance(v, str) and v
                                                 for k, v in captions.items()):
        raise ValueError(f"a report's captions map its figures to sentences; got {captions!r:.200}")
    return report


def column(key: str, label: str, unit: str = "") -> dict:
    """One column of a report table."""
    return {"key": key, "label": label, "unit": unit}


def _flat(obj: Any, prefix: str = "") -> dict:
    """{"a.b": value} of a nested dict (lists are values)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: obj}


def config_differences(saved: Any, config: Any, ignored=RESUME_IGNORED) -> list[str]:
    """Dotted keys whose values differ between two configs (dataclasses or dicts),
    except ``ignored`` ones (a key or any key under it)."""
    a, b = _flat(to_jsonable(saved)), _flat(to_jsonable(config))
    skip = lambda k: any(k == i or k.startswith(i + ".") for i in ignored)  # noqa: E731
    return sorted(k for k in set(a) | set(b) if not skip(k) and a.get(k, "<absent>") != b.get(k, "<absent>"))


def check_dir_writable(path: Path, key: str = "hydra.run.dir", shown: str | None = None) -> None:
    """Refuse (one line) a run dir that is a file, or under a file, or that cannot be
    created or written. Writes nothing. ``shown``: the value to name (default ``path``)."""
    path = Path(path)
    where = f"{key}={shown if shown is not None else path}"
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{where}: {probe} is a file, not a directory; choose another {key}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{where}: {probe} is not writable; choose another {key}")


def make_dir(path: Path, key: str) -> Path:
    """Make the dir a path key names (its parents too), or refuse it in one line: a file, under
    a file, not writable, or a dir the system will not make (/proc, a read-only mount, a full disk)."""
    path = Path(path)
    check_dir_writable(path, key)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{key}={path}: cannot make it ({err.strerror or type(err).__name__}); choose another "
                        f"{key}") from None
    return path


_HELD: dict[str, list] = {}  # resolved run dir -> [file descriptor, claims]: flock is per open file
_HELD_ELSEWHERE = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)  # a non-blocking flock's "someone holds it"
# flock's "this file system has no locks": Lustre mounted without -o flock (ENOSYS), NFS without lockd (ENOLCK)
_NO_LOCKS = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP)


def _lock(path: Path, key: str = "hydra.run.dir") -> bool:
    """Take ``<path>/.lock`` (creating the dir); reentrant within this process. Returns
    whether the dir was created here. ``key``: the setting a refusal tells the user to change."""
    import fcntl

    resolved = str(path.resolve())
    if resolved in _HELD:
        _HELD[resolved][1] += 1
        return False
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UserError(f"cannot write the run dir {path}: {err.strerror or err}; choose another {key}") \
            from None
    # a few tries 10 ms apart: in_use (osc report) holds a shared lock for a moment, a run for its whole life
    for attempt in range(5):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as err:
            if err.errno in _HELD_ELSEWHERE and attempt < 4:
                time.sleep(0.01)
                continue
            if err.errno in _NO_LOCKS:  # run unlocked rather than not at all, and say what is lost
                print(f"warning: cannot lock {path / LOCK} ({os.strerror(err.errno)}: a file system without file "
                      "locks, e.g. Lustre mounted without -o flock): a second run into this dir will not be refused",
                      file=sys.stderr)
                break
            os.close(fd)
            if err.errno in _HELD_ELSEWHERE:
                raise InUse(f"{path} is in use by another run (its .lock is held); wait for it to end or "
                            f"choose another {key}") from None
            raise
    _HELD[resolved] = [fd, 1]
    return created


def in_use(path: Path) -> bool:
    """Whether a run holds ``<path>/.lock`` now (this process or another): a run dir without a
    summary is then a run still going, not one that died. Creates nothing; the shared lock it
    takes to ask lasts a moment, and a run claiming the dir meanwhile tries again (``_lock``)."""
    import fcntl

    path = Path(path)
    if str(path.resolve()) in _HELD:
        return True
    try:
        fd = os.open(path / LOCK, os.O_RDONLY)
    except OSError:  # no .lock: never claimed, or claimed by a version that did not lock
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        return err.errno in _HELD_ELSEWHERE
    finally:
        os.close(fd)  # also releases the shared lock, if it was taken
    return False


@contextmanager
def holding(path: Path, key: str):
    """Hold an exclusive ``flock`` on the dir ``path`` itself (created if missing) for the body,
    waiting while another process holds it: for a dir that several jobs may fill in turn (the
    loss landscape's shared default runs: a job finding one missing waits for the job training
    it, then finds it completed). The dir's own lock, not a .lock file: a job refused inside
    leaves the dir as it was. Not reentrant; without file locks (see the module docstring) the
    body runs unlocked after a one-line warning."""
    import fcntl

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        raise UserError(f"cannot write the run dir {path}: {err.strerror or err}; choose another {key}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in _HELD_ELSEWHERE:
                print(f"waiting for {path}: another process holds it", file=sys.stderr, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
            elif err.errno in _NO_LOCKS:
                print(f"warning: cannot lock {path} ({os.strerror(err.errno)}): another job may write it at once",
                      file=sys.stderr)
            else:
                raise
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _unlock(path: Path) -> None:
    key = str(Path(path).resolve())
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        os.close(held[0])  # closing the descriptor releases the flock
        del _HELD[key]


def damaged(saved: Path | None) -> bool:
    """Whether what a run saved to resume from (:func:`saved_state`) cannot be: a checkpoint.pt
    that is no zip (a whole torch checkpoint is one), a parts.json that is no JSON object."""
    if saved is None:
        return False
    if saved.name == CHECKPOINT:
        import zipfile

        return not zipfile.is_zipfile(saved)
    try:
        return not isinstance(read_json(saved), dict)
    except Exception:
        return True


def saved_state(path: Path) -> Path | None:
    """What the run in ``path`` saved to resume from: its checkpoint.pt (a classifier run) or
    its :data:`PARTS` (an app that resumes part by part), or None."""
    return next((p for p in (path / CHECKPOINT, path / PARTS) if p.exists()), None)


def study_advice(study: Path, path: Path) -> str:
    """What to do about a run of ``osc study`` (its dir ``path``) that the study cannot use (a
    checkpoint or file it cannot read, a run of other settings): its user named no run dir or
    ``runs=`` of its own, and the study makes any of its runs whose dir is gone, resuming its own
    dir with ``resume=true`` whether it finished or not."""
    return (f"move {path} out of {study} (or delete it) and run the same osc study again with resume=true and "
            f"hydra.run.dir={study}, which makes that run anew")


def sweep_advice(path: Path, app: str | None = None, resumable: bool = True) -> str:
    """What to do about a sweep's job (its dir ``path``) whose run cannot go on (a checkpoint or
    file it cannot read): the job leaves a failed summary.json in its dir, which the same sweep run
    again refuses unless resume=true, while every other job's finished run refuses a sweep run
    again without it; the same sweep with resume=true keeps those and makes any job whose dir is
    gone. An app that cannot resume (``resumable`` false) refuses resume=true: only another
    sweep dir runs that job again."""
    if resumable:
        return (f"move {path} out of its sweep's dir (or delete it) and run the same sweep again with resume=true and "
                f"the same {SWEEP_KEY}, which makes that job anew")
    return (f"run the same sweep again with another {SWEEP_KEY} ({app or 'this app'} cannot resume: the failed "
            f"summary.json in {path} refuses that job in this one)")


def _run_below(path: Path, depth: int = 4, budget: int = 2000) -> Path | None:
    """A run dir (one holding run.json) below ``path``, down to ``depth`` levels (a workspace
    holds ``multirun/<app>/<time>/<job>``), looking into at most ``budget`` dirs (a home dir is
    not walked whole); hidden dirs and links are not entered. None: none found."""
    level = [path]
    for _ in range(depth):
        below = []
        for d in level:
            try:
                with os.scandir(d) as entries:
                    below += sorted(Path(e.path) for e in entries
                                    if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
            except OSError:
                continue
        for d in below:
            if (d / RUN).is_file():
                return d
        budget -= len(below)
        if budget <= 0:
            return None
        level = below
    return None


def _finished_run_above(path: Path) -> Path | None:
    """The nearest dir above ``path`` that holds a finished run (run.json and summary.json),
    or None."""
    for parent in Path(path).resolve().parents:
        if (parent / RUN).is_file() and (parent / SUMMARY).is_file():
            return parent
    return None


class InUse(UserError):
    """A run dir whose lock another run holds."""


class Refused(UserError):
    """A run dir :meth:`RunDir.claim` refused (``path``): the run wrote nothing in it (a sweep's
    job then puts back what Hydra wrote there before the claim). ``in_use``: refused because
    another run holds it: the dir is that run's, and nothing in it may be put back or removed
    (the other run may have made it a moment before, and is writing in it)."""

    def __init__(self, message: str, path: Path | None = None, in_use: bool = False):
        super().__init__(message)
        self.path = path
        self.in_use = in_use


class RunDir:
    """A run directory claimed by one run (see the module docstring)."""

    def __init__(self, path: Path, resume: bool = False, app: str | None = None, key: str = "hydra.run.dir",
                 study: Path | None = None, supports_resume: bool = False):
        """``key``: the setting that chose the dir (see :meth:`claim`), for the app to name in
        a refusal of what it finds there (a checkpoint it cannot resume from); ``study``: the
        dir of the ``osc study`` that runs this run; a study's run, or a sweep's job (``key``
        :data:`SWEEP_KEY`), gives such a refusal the advice of :meth:`remake_advice` instead;
        ``supports_resume``: whether the app can resume a run (what a sweep's job can be told)."""
        self.path = Path(path)
        self.key = key
        self.study = None if study is None else Path(study)
        self.app = app
        self.supports_resume = supports_resume
        self.resume = resume
        self.started = time.perf_counter()
        self.device: Any = None
        self.command: str | None = None

    @classmethod
    def claim(cls, path: Path, resume: bool = False, supports_resume: bool = False, app: str | None = None,
              config: Any = None, key: str = "hydra.run.dir", study: Path | None = None) -> "RunDir":
        """Lock the dir (see the module docstring), then refuse a dir that holds a finished
        run, or an unfinished one unless this app can resume it and ``resume`` is asked
        for, or a resume whose ``config`` differs from the saved one (or that has no saved one to
        compare with, or whose summary.json cannot be read). A refused claim
        releases the lock and removes the dir if it made it; otherwise only the dir and its
        .lock are written (and, when resuming, stale .tmp files removed). ``key``: the setting that
        chose the dir, which a refusal tells the user to change (``hydra.sweep.dir`` for a sweep's job);
        ``study``: the dir of the ``osc study`` that runs this run, whose user named neither: a refusal
        of what the dir holds says what they can do instead (:func:`study_advice`).
        A refusal is a :class:`Refused` (a UserError)."""
        try:
            return cls._claim(Path(path), resume, supports_resume, app, config, key, study)
        except UserError as err:  # (its one line as it was)
            raise Refused(str(err), Path(path), in_use=isinstance(err, InUse)) from None

    @classmethod
    def _claim(cls, path: Path, resume: bool, supports_resume: bool, app: str | None, config: Any,
               key: str, study: Path | None) -> RunDir:
        """:meth:`claim`, its refusals plain UserErrors."""
        # what a refusal of what the dir holds asks for: of a study's run, what the study's user can do
        fresh, another = f"start a fresh {key}", f"choose another {key}"
        if study is not None:
            fresh = another = study_advice(study, path)
        if resume and not supports_resume:
            raise UserError(f"resume=true: this app cannot resume a run; start a fresh {key}")
        check_dir_writable(path, key)
        below = None if (path / RUN).is_file() else _run_below(path)  # (a run's own dir: its runs, if any)
        if below is not None:  # (before the lock: its .lock would stay in the dir)
            raise UserError(f"{path} holds run dirs ({below.relative_to(path)}, ...): a run there would hide them "
                            f"from osc report, which reads a run dir as one run; {another}")
        above = None if study is not None else _finished_run_above(path)  # (a study's runs live in its dir)
        if above is not None:
            raise UserError(f"{path} is inside the finished run dir {above}: osc report reads a run dir as one run "
                            f"and would not see this one; {another}")
        created = _lock(path, key)
        try:
            summary, saved = path / SUMMARY, saved_state(path)
            if not resume and (summary.exists() or saved is not None):
                resumable = supports_resume and cls.app_of(path) in (None, app)  # (this app's own)
                hint = (", not whole (a write cut short): resume=true refuses it; move it away to run anew"
                        if damaged(saved) else "; resume=true continues it") if resumable else ""
                what = f"a {cls._status(summary)} run (summary.json)" if summary.exists() else \
                    f"an unfinished run ({saved.name}{hint})"
                raise UserError(f"{path} already holds {what}; {another}")
            # read when the run starts (RunDir.completed, the app's parts): refuse now if they cannot be
            for file, away in ((summary, f"to resume from {CHECKPOINT if saved is None else saved.name}"),
                               (path / PARTS, "to run every part again")):
                if not (resume and file.exists()):
                    continue
                try:
                    reason = None if isinstance(read_json(file), dict) else "not a JSON object"
                except Exception as err:
                    reason = type(err).__name__
                if reason is not None:
                    raise UserError(f"cannot read {file} ({reason}): " + (
                        f"move it away {away}, or {fresh}" if study is None else fresh))
            other = cls.app_of(path) if resume and app is not None else None
            if other is not None and other != app:  # its config would differ in every key: say what it is
                raise UserError(f"{path} holds a {other} run, not a {app} one; resume=true continues a run of the "
                                f"same app: {fresh}")
            if resume and config is not None and not (path / CONFIG).is_file() and (summary.exists() or saved is not None):
                raise UserError(f"{path} holds a run but no config.yaml to check resume=true against; {fresh}")
            if resume and config is not None and (path / CONFIG).is_file():
                try:
                    saved_config = yaml.safe_load((path / CONFIG).read_text())
                except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
                    raise UserError(f"cannot read {path / CONFIG}: {type(err).__name__}"
                                    + ("" if study is None else f"; {fresh}")) from None
                if not isinstance(saved_config, dict):  # an empty file (a write cut short) compared as no keys at all
                    held = 'nothing' if saved_config is None else 'a ' + type(saved_config).__name__
                    raise UserError(f"cannot read {path / CONFIG}: it holds {held}, not a config; "
                                    + (f"resume needs the config the run started with, or {fresh}" if study is None
                                       else fresh))
                diff = config_differences(saved_config, config)
                if diff:
                    raise UserError(f"resume=true with a config that differs from {path / CONFIG} in "
                                    f"{', '.join(diff)}; " + (f"resume with the saved values, or {fresh} (may differ: "
                                                              f"{', '.join(RESUME_IGNORED)})" if study is None else fresh))
        except BaseException:
            _unlock(path)
            if created:
                (path / LOCK).unlink(missing_ok=True)
                try:
                    path.rmdir()
                except OSError:
                    pass
            raise
        if resume:
            for tmp in path.glob(".*.tmp"):  # left by a write that was killed half-way
                tmp.unlink(missing_ok=True)
        return cls(path, resume=resume, app=app, key=key, study=study, supports_resume=supports_resume)

    def remake_advice(self, path: Path | None = None) -> str | None:
        """What makes the run in ``path`` (default this run's dir; a run under it, like
        loss_landscape's default runs; a run in the study's dir) anew, for a message about it
        that fails this run, where its user did not choose that dir: inside a study (``path`` in
        the study's dir), :func:`study_advice`; a sweep's job (``path`` in its dir),
        :func:`sweep_advice` (of the job: the sweep runs it again); else None, and the message
        names the setting that chose ``path``."""
        path = self.path if path is None else Path(path)
        if self.study is not None and path.resolve().is_relative_to(self.study.resolve()):
            return study_advice(self.study, path)
        if self.key == SWEEP_KEY and path.resolve().is_relative_to(self.path.resolve()):
            return sweep_advice(self.path, self.app, self.supports_resume)
        return None

    def checkpoint_advice(self) -> str:
        """What to do about this dir's checkpoint when it cannot be resumed from:
        :meth:`remake_advice` (a study's run, a sweep's job); else
        :func:`~.train.classifier.resume_advice` of :attr:`key` (move it away and run again)."""
        return self.remake_advice() or resume_advice(self.key)

    @staticmethod
    def app_of(path: Path) -> str | None:
        """The app named by ``path``'s run.json (None: none, or unreadable)."""
        try:
            other = read_json(path / RUN).get("app")
        except Exception:
            return None
        return other if isinstance(other, str) else None

    @staticmethod
    def _status(summary: Path) -> str:
        try:
            status = read_json(summary).get("status", "completed")
        except Exception:
            return "finished"
        return status if status in ("diverged", "failed") else "finished"

    def release(self) -> None:
        """Release the run dir's lock (once per claim)."""
        if not self._released:
            self._released = True
            _unlock(self.path)

    _released = False

    @property
    def completed(self) -> dict | None:
        """The summary of a run already completed in this dir (when resuming), else None. A
        "completed" summary without its report section is not one :meth:`finish` wrote (an
        earlier version's training loop wrote its own first, and a kill could come between):
        the run resumes from its checkpoint and is finished again."""
        if (self.path / SUMMARY).exists():
            done = read_json(self.path / SUMMARY)
            if done.get("status", "completed") == "completed" and isinstance(done.get("report"), dict):
                return done
        return None

    def start(self, config: Any, labels: dict | None = None) -> None:
        """Create the dir, save the config (a dataclass or dict) as config.yaml and write
        run.json: the app's name and ``labels`` (what a report groups this run by).
        Under torchrun only rank 0 writes (here and in :meth:`finish`).

        What an earlier attempt left here to say how it ended is removed: its error.txt and a
        summary.json of status failed or diverged (a resume; a sweep's failed job run again).
        They told of that attempt, and this one, once stopped, is told by what it leaves (osc
        report would call a rerun killed before its first checkpoint failed, with the old
        traceback or reason). A command line whose run is then refused puts them back, with the
        config.yaml rewritten here (:func:`~.experiments._leftovers.hydra_files`); a sweep's job
        records its refusal in a new summary instead."""
        self.started = time.perf_counter()
        self.is_started = True
        if not distributed.is_main():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / ERROR).unlink(missing_ok=True)
        if (self.path / SUMMARY).is_file() and self._status(self.path / SUMMARY) in ("failed", "diverged"):
            (self.path / SUMMARY).unlink()
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

    def _mark_started(self, labels: dict | None) -> None:
        """run.json for a run that ends before :meth:`start` (so that reports find it)."""
        if not self.is_started:
            self.is_started = True
            if distributed.is_main():  # under torchrun only rank 0 writes
                self.path.mkdir(parents=True, exist_ok=True)
                write_json(self.path / RUN, {"app": self.app, "labels": labels or {}})

    def diverged(self, info: dict, partial: dict | None = None, labels: dict | None = None) -> dict:
        """Write summary.json with ``status: diverged``: ``info`` (where and how training
        diverged: step, reason, last finite loss, skipped steps, the rule), the partial
        results ``partial``, provenance and a report section saying so."""
        partial = {k: v for k, v in (partial or {}).items() if k not in ("status", "report")}
        self._mark_started(labels)
        verdict = (f"training diverged at step {info.get('step')}: {info.get('reason')}; last finite loss "
                   f"{info.get('last_finite_loss')!r} (step {info.get('last_finite_step')}), "
                   f"{info.get('skipped_steps')} optimiser step(s) skipped for non-finite numbers")
        report = {
            "title": f"{self.app or 'run'}: diverged",
            "question": "did training stay finite?",
            "tables": [{"caption": "divergence (rule: " + str(info.get("rule", "")) + ")",
                        "columns": [column(k, k.replace("_", " ")) for k in
                                    ("step", "reason", "last_finite_loss", "last_finite_step", "skipped_steps")],
                        "rows": [{k: info.get(k) for k in ("step", "reason", "last_finite_loss", "last_finite_step",
                                                           "skipped_steps")}]}],
            "verdict": verdict + ".",
            "figures": [],
        }
        return self.finish({**partial, "status": "diverged", "divergence": info,
                            "skipped_steps": info.get("skipped_steps"), "report": report})

    def failed(self, reason: str, labels: dict | None = None, user_error: bool = True) -> dict:
        """Write run.json (if the run had not started) and summary.json with ``status:
        failed``, ``reason`` (one line) and ``user_error`` (a mistake in the input, exit
        code 2; else a library error, 1), provenance and a report section."""
        self._mark_started(labels)
        report = {"title": f"{self.app or 'run'}: failed", "question": "did the run complete?",
                  "tables": [], "verdict": f"the run failed: {reason}", "figures": []}
        return self.finish({"status": "failed", "reason": reason, "user_error": user_error, "report": report})
