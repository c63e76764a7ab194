"""What a command-line call refused inside Hydra leaves behind: nothing that was not there.

A run dir this call made (and the empty dirs above it that it made: ``outputs/<app>/``)
is removed if it holds nothing but Hydra's own files (``.hydra/``, the job's ``.log``), the
lock and what :meth:`RunDir.start` writes before any result (config.yaml, run.json: an app
that checks an input only once started, like loss_landscape's ``runs=``, left them behind);
a dir that holds anything else (a resumed run's checkpoint and metrics, a summary, figures)
is never removed, and in a dir that was there before only the ``.hydra/`` files, job log,
config.yaml and run.json the call rewrote (and an earlier attempt's error.txt or failed summary
it removed) are put back as they were.

A sweep's job whose claim is refused does the same in its own dir (:func:`undo_job`, in the
job's process: Hydra wrote the job's ``.hydra/`` files before the job began, and jobs may run in
other processes); a sweep whose every job was refused puts back its sweep dir's
multirun.yaml (:func:`undo_sweep`). What they put back is read before Hydra runs
(:func:`sweep_before`)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from ..runs import outermost_new, remove_empty

__all__ = ["undo", "hydra_files", "has_results", "sweep_before", "undo_job", "undo_sweep", "SAME_SECOND"]

# why a run dir named only as the run starts is another run's (a refusal that leaves it alone says so)
SAME_SECOND = (" (a run dir named as the run starts, like the default one by the second it starts, is the same for "
               "two calls started in the same second)")


def undo(run_dir: Path, fresh: bool, explicit: tuple | None, default_top: Path | None) -> None:
    """After a refusal inside Hydra in ``run_dir``. ``fresh``: the dir held nothing but
    Hydra's files when the run began; ``explicit``: (hydra.run.dir as given, whether it
    existed, Hydra's files in it then, the outermost dir making it would make), or None for
    the default dir; ``default_top``: the outermost dir above the default run dir that this
    call made (None: all were there)."""
    if has_results(run_dir):
        if explicit is not None and explicit[1]:
            restore_hydra_files(explicit, run_dir)
        return
    if explicit is not None:
        path, existed, _, top = explicit
        if path.resolve() != run_dir.resolve():
            return
        if existed:
            restore_hydra_files(explicit, run_dir)
        else:  # the run dir, then the empty dirs above it that the call made: a sweep's other
            shutil.rmtree(path, ignore_errors=True)  # jobs may be in those
            remove_empty(path.parent, top)
    elif fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
        if default_top is not None:  # the empty dirs Hydra made above it (outputs/<app>/)
            parent = run_dir.absolute().parent
            while parent == default_top or default_top in parent.parents:
                try:
                    parent.rmdir()  # empty dirs only
                except OSError:
                    break
                parent = parent.parent


def restore_hydra_files(explicit: tuple, run_dir: Path) -> None:
    """Put back the .hydra/ files and job log of an existing explicit run dir as they were."""
    path, _, files, _ = explicit
    if path.resolve() != run_dir.resolve():
        return
    for p in hydra_files(path):
        if p not in files:
            p.unlink(missing_ok=True)
    for p, data in files.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    if not any(p.parent.name == ".hydra" for p in files):  # Hydra made .hydra/ in this call: emptied above
        with contextlib.suppress(OSError):
            (path / ".hydra").rmdir()  # empty dirs only


def hydra_files(path: Path) -> dict[Path, bytes]:
    """What a call rewrites in a run dir before the run can be refused, with their bytes: Hydra's
    files (.hydra/*, the job's .log, a sweep dir's multirun.yaml), the run's config.yaml and
    run.json (a resume that then cannot read its checkpoint) and what an earlier attempt left to
    say how it ended, error.txt and a failed or diverged summary.json (removed when the run
    starts: :meth:`~..rundir.RunDir.start`)."""
    path = Path(path)
    if not path.is_dir():
        return {}
    files = [p for p in (path / ".hydra").glob("*") if p.is_file()] + [p for p in path.glob("*.log") if p.is_file()]
    files += [p for p in (path / "config.yaml", path / "run.json", path / "multirun.yaml", path / "error.txt",
                          path / "summary.json") if p.is_file()]
    return {p: p.read_bytes() for p in files}


def has_results(path: Path) -> bool:
    """Whether a run dir holds anything besides Hydra's own files, the lock and a start's
    config.yaml and run.json."""
    stubs = (".hydra", ".lock", "config.yaml", "run.json", "multirun.yaml")
    return path.is_dir() and any(p.name not in stubs and p.suffix != ".log" for p in path.iterdir())


def sweep_before(sweep_dir: Path | None, job_dirs: list[Path | None]) -> tuple | None:
    """What a sweep's dirs hold before Hydra writes in them: the record :func:`undo` takes
    (``(path, existed, Hydra's files in it, the outermost dir making it makes)``, as
    ``CommandLine.explicit``) for the sweep dir, and for each job's run dir by job number (None
    for a job whose dir is unknown; no two jobs share one: :func:`._hydra_dirs.sweep_dirs`)."""
    if sweep_dir is None:
        return None

    def before(path: Path) -> tuple:
        return path, path.exists(), hydra_files(path), outermost_new(path)

    return before(sweep_dir), [None if d is None else before(d) for d in job_dirs]


def undo_job(before: tuple | None, num: int, run_dir: Path) -> None:
    """After sweep job ``num``'s claim of ``run_dir`` was refused, in the job's process: its dir
    as it was (Hydra's files put back; a dir this call made removed). ``before``:
    :func:`sweep_before`'s record."""
    if before is not None and 0 <= num < len(before[1]) and before[1][num] is not None:
        undo(run_dir, False, before[1][num], None)


def undo_sweep(before: tuple | None, dirs: list[str], refused: list[str]) -> None:
    """After a sweep, in the process that started it, given its jobs' run dirs and those
    refused: when every job was refused, its sweep dir as it was (multirun.yaml put back, a dir
    this call made removed once its jobs' dirs are). When some job ran, the new multirun.yaml
    stays: it is the config of the sweep those runs came from (Hydra's record of the dir's last
    sweep), while each refused job's runs keep their own .hydra/ files, put back, which say how
    they were made. No job dirs at all (a record that did not reach this process) is no proof
    that none ran: nothing is put back then."""
    if before is not None and refused and not set(dirs) - set(refused):
        undo(before[0][0], False, before[0], None)
    elif before is not None and not before[0][1]:  # a sweep dir this call made, still empty: Hydra never
        remove_empty(before[0][0], before[0][3])  # wrote in it (its record and snapshot removed)
