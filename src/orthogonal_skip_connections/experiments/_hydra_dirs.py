"""What Hydra makes of a call's overrides before it runs: the run or sweep dir
(:func:`hydra_dir`: quotes removed, ``${...}`` resolved, a blank or ``~`` path refused), a
sweep's jobs' dirs (:func:`sweep_dirs`: two jobs may not share one), and a sweep's launcher and
sweep dir (:func:`check_sweep_settings`)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from ..rundir import check_dir_writable
from ..runs import UserError
from ._compose import compose_raw, one_line
from ._options import job_name

__all__ = ["check_sweep_settings", "check_joblib_settings", "hydra_dir", "known_now", "sweep_dirs"]


def hydra_dir(app_name: str, overrides: list[str], key: str) -> Path | None:
    """The dir Hydra makes of ``key`` (``hydra.run.dir``, ``hydra.sweep.dir``) with ``overrides``:
    the value as Hydra parses it (``hydra.run.dir='/a b'`` is ``/a b``, quotes and escapes
    removed) with its ``${...}`` resolved (the config's keys, ``${now:...}``), not the text
    after ``=``. None where only the run itself can resolve it (``${hydra:runtime...}``). A
    blank value is a UserError: Hydra would take it as the current dir and write the run there."""
    value = _plain_value(overrides, key)
    if value is None:  # from the config, or with ${...} in it: what Hydra's composition makes of it
        from hydra.core.utils import setup_globals

        setup_globals()  # the ${now:...} resolver
        try:
            hydra_cfg = compose_raw(app_name, [*overrides, *job_name(app_name, overrides)], hydra_config=True)
            value = str(OmegaConf.select(hydra_cfg, key))
        except Exception:  # Hydra's own business when it runs
            return None
    if not value.strip():
        raise UserError(f"{key} must be a path (a blank one is the current dir, where no run belongs); got {value!r}")
    if value.startswith("~"):  # Hydra does not expand it: the run went into a dir named '~' under the working dir
        raise UserError(f"{key}={value}: Hydra does not expand '~' (it would make a dir named '~' here); write the "
                        f"path out, or {key}=${{oc.env:HOME}}{value[1:]}")
    return Path(value)


def _plain_value(overrides: list[str], key: str) -> str | None:
    """The string the last ``key=...`` of ``overrides`` sets, as Hydra's grammar reads it
    (quotes and escapes removed), where it has no ``$`` (so nothing to resolve and no
    composition needed: ~0.15 s); None otherwise."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    mine = [o for o in overrides if o.split("=", 1)[0].strip() == key]
    if not mine:
        return None
    try:
        o = OverridesParser.create().parse_overrides([mine[-1]])[0]
    except Exception:  # Hydra's grammar refuses it: its own business
        return None
    value = o.value()
    return value if isinstance(value, str) and not o.is_sweep_override() and "$" not in value else None


def sweep_dirs(app_name: str, jobs: list[list[str]]) -> tuple[Path | None, list[Path | None]]:
    """A sweep's dir and its jobs' (hydra.sweep.dir / hydra.sweep.subdir); None where only the run
    can say. Two jobs in one dir (a subdir without ${hydra.job.num}) are refused: the second would
    overwrite the first's .hydra/ files before its claim of the dir was refused."""
    try:  # the subdir is the job's number unless set otherwise: then each job's is composed
        raw = OmegaConf.to_container(compose_raw(app_name, jobs[0], hydra_config=True).hydra.sweep, resolve=False)
        sweep = hydra_dir(app_name, jobs[0], "hydra.sweep.dir")
        subs = [str(i) if raw["subdir"] == "${hydra.job.num}" else
                hydra_dir(app_name, [*job, f"hydra.job.num={i}"], "hydra.sweep.subdir") for i, job in enumerate(jobs)]
    except Exception:  # (a blank subdir too): Hydra's business when it runs
        return None, [None] * len(jobs)
    dirs = [None if sweep is None or sub is None else sweep / sub for sub in subs]
    seen: dict[Path, int] = {}
    for i, d in enumerate(dirs):
        if d is not None and seen.setdefault(d.resolve(), i) != i:
            raise UserError(f"jobs {seen[d.resolve()]} and {i} of the sweep would share the run dir {d}: "
                            "hydra.sweep.subdir must differ per job (the default ${hydra.job.num} does)")
    return sweep, dirs


def known_now(sweep_dir: Path | None, text: str) -> bool:
    """Whether ``sweep_dir``, resolved before Hydra runs from ``text`` (hydra.sweep.dir's value as
    written), is the dir Hydra makes: no ``${...}`` in it but ``${now:...}`` (Hydra's own sweep
    config may resolve another key otherwise), whose time is then fixed by giving Hydra this dir."""
    return sweep_dir is not None and "${" not in re.sub(r"\$\{now:[^}]*\}", "", text)


def check_sweep_settings(app_name: str, overrides: list[str], job: list[str]) -> None:
    """A sweep's launcher and an explicit sweep dir, before Hydra runs (``job``: its first job's
    overrides): what the launchers would refuse with a traceback from inside Hydra."""
    if "hydra/launcher=submitit_slurm" in overrides and shutil.which("srun") is None:
        raise UserError("hydra/launcher=submitit_slurm submits to Slurm, and there is no `srun` here: run "
                        "the sweep where Slurm is (a login node), or use hydra/launcher=joblib on this machine")
    if "hydra/launcher=joblib" in overrides and any(o.startswith("hydra.launcher.") for o in overrides):
        check_joblib_settings(app_name, job)
    if any(o.startswith("hydra.sweep.dir=") for o in overrides):
        sweep_dir = hydra_dir(app_name, job, "hydra.sweep.dir")
        if sweep_dir is not None:
            check_dir_writable(sweep_dir, "hydra.sweep.dir")


def check_joblib_settings(app_name: str, job: list[str]) -> None:
    """hydra.launcher.n_jobs of the joblib launcher: joblib's refusal of 0 came from inside the
    launcher, as a traceback, after Hydra had written the sweep dir's multirun.yaml."""
    try:
        hc = compose_raw(app_name, job, hydra_config=True).hydra.launcher
    except Exception as err:  # a value of the wrong type: Hydra's composition error, in one line
        raise UserError(one_line(err, None)) from None
    n_jobs = hc.get("n_jobs")
    if isinstance(n_jobs, int) and n_jobs == 0:
        raise UserError("hydra.launcher.n_jobs=0 runs no job: give the number of worker processes (>= 1), "
                        "or -1 for one per CPU")
