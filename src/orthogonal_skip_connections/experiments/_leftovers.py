"""What a command-line call refused inside Hydra leaves behind: nothing that was not there.

A run dir this call made (and the empty dirs above it that it made: ``outputs/<app>/``)
is removed if it holds nothing but Hydra's own files (``.hydra/``, the job's ``.log``), the
lock and what :meth:`RunDir.start` writes before any result (config.yaml, run.json: an app
that checks an input only once started, like loss_landscape's ``runs=``, left them behind);
a dir that holds anything else (a resumed run's checkpoint and metrics, a summary, figures)
is never removed, and in a dir that was there before only the ``.hydra/`` files, job log,
config.yaml and run.json the call rewrote are put back as they were."""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["undo", "hydra_files", "has_results"]


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
        else:
            shutil.rmtree(top, ignore_errors=True)
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


def hydra_files(path: Path) -> dict[Path, bytes]:
    """What a call rewrites in a run dir before the run can be refused, with their bytes: Hydra's
    files (.hydra/*, the job's .log) and the run's config.yaml and run.json (a resume that then
    cannot read its checkpoint)."""
    path = Path(path)
    if not path.is_dir():
        return {}
    files = [p for p in (path / ".hydra").glob("*") if p.is_file()] + [p for p in path.glob("*.log") if p.is_file()]
    files += [p for p in (path / "config.yaml", path / "run.json") if p.is_file()]
    return {p: p.read_bytes() for p in files}


def has_results(path: Path) -> bool:
    """Whether a run dir holds anything besides Hydra's own files, the lock and a start's
    config.yaml and run.json."""
    stubs = (".hydra", ".lock", "config.yaml", "run.json")
    return path.is_dir() and any(p.name not in stubs and p.suffix != ".log" for p in path.iterdir())
