"""An app on the command line: the Hydra glue around :meth:`App.run <._app.App.run>`.

Before Hydra runs, the config is composed and checked (:meth:`CommandLine.precheck`), so a
mistyped or unknown key, a wrong type or a value out of range is one line on stderr and exit
code 2 with nothing written, and an explicit ``hydra.run.dir`` is claimed (locked) so that a
second writer is refused before Hydra writes into it. Only here does a
:class:`~orthogonal_skip_connections.runs.UserError` become exit code 2 and a diverged
training (the rule of :mod:`~orthogonal_skip_connections.train.divergence`) exit code 1;
any other exception (a library bug) propagates as a traceback (also kept in the run dir's error.txt).

Refused calls leave nothing behind (:mod:`._leftovers`): a run dir this call made is removed, and the ``.hydra/``
files and job log Hydra rewrote in an existing one are put back, as a sweep's refused job does; a sweep whose every
job was refused puts back its multirun.yaml. A dir another run holds (its lock) is that run's: left alone.

Sweeps (``-m``): every job's config is checked before the first job runs (a bad value is
one line, exit 2, nothing run). A job that then fails (a user error found at run time, a
diverged training, a library error) is recorded in its run dir (summary.json with
``status: failed`` and ``reason``, or ``status: diverged``; a library error's traceback in
error.txt), one line is printed, and the sweep goes on; its exit code is the worst of its
jobs' (2 > 1 > 0), and its last line names the dir holding its jobs' run dirs. Jobs may run in
other processes (Hydra's joblib or submitit launchers): they append their run dirs and codes to
a record dir named by :data:`CODES_ENV` (:mod:`._sweep_record`), which each job sets from the task
it was given (a joblib worker outlives its call, with that call's environment). A sweep dir known
before Hydra runs is given to Hydra as such (``${now:...}`` resolved once) and holds that record.

Under ``torchrun`` (apps built with ``torchrun=True``) rank 0 resolves and claims the run
dir and every rank runs in it (:meth:`CommandLine.join_ranks`).

Ctrl-C and SIGTERM stop a call with one line (:mod:`._interrupt`).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..rundir import Refused, RunDir, check_dir_writable
from ..runs import UserError, outermost_new, remove_empty
from ..train import distributed
from ..train.divergence import Diverged
from ._compose import CONFIG_DIR, compose, compose_raw, one_line, typed
from ._help import help_text
from ._hydra_dirs import check_sweep_settings, hydra_dir, known_now, sweep_dirs
from ._interrupt import hydra_quoted, resume_command, sigterm_as_interrupt, stopped
from ._leftovers import SAME_SECOND, has_results, hydra_files, sweep_before, undo, undo_job, undo_sweep
from ._options import check_options, options_first, split_options, with_job_name
from ._sweep_record import (CODES_ENV, job_failed, load_before, new_record, read_codes, read_errors, read_job_dirs,
                            read_refused, remove_record, save_before, sweep_line, write_job_dir, write_refused)

__all__ = ["CommandLine", "CODES_ENV"]


class CommandLine:
    """One command-line call of ``app`` (an :class:`~._app.App`): the run dirs it claimed
    before Hydra ran, and what an explicit ``hydra.run.dir`` held before."""

    def __init__(self, app):
        self.app = app
        self.claims: list[RunDir] = []  # held (locked) until the call ends
        self.explicit = None  # (hydra.run.dir, existed, Hydra's files in it, outermost dir this call makes)
        self.default_top = None  # the outermost dir above the default run dir that this call would make
        self.sweep = None  # a sweep's dir and its jobs' as they were (._leftovers.sweep_before)
        self.rank0_top = None  # under torchrun, on the other ranks: the outermost dir rank 0's run makes
        self.saves_nothing = False  # one run with save_checkpoint=none: a stop leaves nothing to resume
        self.record = None  # where a sweep's jobs write what they tell this process (._sweep_record)
        self.pin = []  # hydra.sweep.dir=<the sweep dir>, where it is known before Hydra runs
        self.run_dir = None  # one run's dir, once Hydra has made it: a stop's line names it

    def __getstate__(self):  # a launcher pickles the task, and so this, once per job: the sweep's snapshot
        return {**vars(self), "sweep": None}  # stays here (a refused job reads its own: load_before)

    def main(self, argv: list[str]) -> int:
        """The exit code of ``osc <app> *argv``: 0; 2 for a user's mistake; 1 for a diverged
        training (a sweep: its worst job's)."""
        if any(a in ("-h", "--help") for a in argv):
            print(help_text(self.app.name))
            return 0
        if "--hydra-help" in argv:  # Hydra's own options: an app's override is none of Hydra's (its traceback)
            argv = ["--hydra-help"] + [a for a in argv if a.lstrip("+~").startswith(("hydra/", "hydra."))]
        argv = options_first(argv)  # `a=1 -m b=2`, `a=1 --cfg job b=2`: Hydra's usage error
        codes: list[int] = []
        saved_env = os.environ.pop(CODES_ENV, None)  # a sweep's record is made by precheck
        try:
            try:
                if distributed.launched_by_torchrun():
                    argv = self.join_ranks(argv)
                self.precheck(argv)
            except UserError as err:
                # under torchrun every rank meets the same check on the same (rank 0's) overrides:
                # rank 0 says it for all, rather than one copy of the line per process
                if not distributed.launched_by_torchrun() or os.environ.get("RANK", "0") == "0":
                    print(f"error: {err}", file=sys.stderr)
                return 2
            try:
                with sigterm_as_interrupt(not distributed.launched_by_torchrun()):
                    return self.hydra(argv, codes)
            except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: one line, not the traceback of wherever it landed
                sweep = any(a in ("-m", "--multirun") for a in argv)
                # (one run stopped before Hydra made its default dir saved nothing: no dir to name)
                where = (self.sweep[0][0] if self.pin else None) if sweep else self.run_dir or (
                    self.explicit[0] if self.explicit else None)
                torchrun = distributed.launched_by_torchrun()  # (rank 0 speaks for every rank)
                key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
                resume = None if where is None else resume_command(self.app.name, None if torchrun else argv, key,
                                                                   Path(where))
                line, code = stopped(stop, self.app.supports_resume and not self.saves_nothing and (
                    sweep or where is not None), sweep, resume, any("launcher=submitit" in a for a in argv))
                if not torchrun or os.environ.get("RANK", "0") == "0":
                    print(line, file=sys.stderr)
                return code
        finally:
            if distributed.launched_by_torchrun():
                distributed.leave()
            for rd in self.claims:
                rd.release()
            self.claims = []
            if saved_env is None:
                os.environ.pop(CODES_ENV, None)
            else:
                os.environ[CODES_ENV] = saved_env
            remove_record(self.record)

    def precheck(self, argv: list[str]) -> None:
        """Compose and check the config, and check an explicit hydra.run.dir, before Hydra
        runs (which would print multi-line errors and create the run dir)."""
        app = self.app
        flags = [a for a in argv if a.startswith("-")]
        overrides = split_options(argv)[1]  # not the value of --cfg job
        check_options(flags, app.name)
        if any(f not in ("-m", "--multirun") for f in flags):  # --cfg, --info...: Hydra's own business,
            compose(app.name, overrides)  # but a mistake in the config they show is one line too
            return
        jobs = [overrides]
        if flags:  # multirun: check every combination of the sweep
            from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
            from hydra.core.override_parser.overrides_parser import OverridesParser

            try:
                parsed = OverridesParser.create().parse_overrides(overrides)
            except Exception as err:
                raise UserError(one_line(err, app.schema)) from None
            jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
            check_sweep_settings(app.name, overrides, jobs[0])
        explicit = [o for o in overrides if o.startswith("hydra.sweep.dir=" if flags else "hydra.run.dir=")]
        if not explicit:  # the default dir's fixed part (before the first ${...}) must be writable
            key = "hydra.sweep.dir" if flags else "hydra.run.dir"
            try:
                hc = compose_raw(app.name, jobs[0], hydra_config=True).hydra
                pattern = str(OmegaConf.to_container(hc.sweep if flags else hc.run, resolve=False)["dir"])
            except Exception:  # Hydra's own config: checked by Hydra
                pattern = ""
            if pattern:
                fixed = Path(pattern.split("${")[0] or ".")
                check_dir_writable(fixed, key, shown=f"{pattern} (the default)")
                if not flags and not fixed.exists():
                    self.default_top = outermost_new(fixed).absolute()
        cfgs = []
        for job in jobs:
            cfg = typed(app.schema, compose(app.name, job))
            cfgs.append(cfg)
            # (a sweep stopped mid-way keeps its finished jobs, whatever save_checkpoint says)
            # (a study's save_checkpoint is its runs': a resumed study keeps those that completed)
            self.saves_nothing = (not flags and getattr(cfg, "save_checkpoint", None) == "none"
                                  and not app.redo_completed)
            if not flags and distributed.is_main() and any(o.startswith("hydra.run.dir=") for o in job):
                path = hydra_dir(app.name, job, "hydra.run.dir")
                if path is not None:
                    if self.explicit is None or self.explicit[0].resolve() != path.resolve():
                        # (under torchrun, join_ranks saw the dir before its check claim made it)
                        self.explicit = (path, path.exists(), hydra_files(path), outermost_new(path))
                    # held (locked) until the run ends: a second writer is refused before Hydra writes
                    self.claims.append(RunDir.claim(path, resume=bool(getattr(cfg, "resume", False)),
                                                    supports_resume=app.supports_resume, app=app.name, config=cfg))
        if flags and app.prepare is not None:
            app.prepare(cfgs)
        if flags:  # read last: after every check, before Hydra writes
            sweep_dir, job_dirs = sweep_dirs(app.name, jobs)
            self.sweep = sweep_before(sweep_dir, job_dirs)
            if known_now(sweep_dir, explicit[-1].split("=", 1)[1] if explicit else pattern):
                self.pin = [f"hydra.sweep.dir={hydra_quoted(str(sweep_dir))}"]
            self.record = new_record(sweep_dir if self.pin else None)  # in the sweep dir where it is known
            os.environ[CODES_ENV] = str(self.record)
            if self.sweep is not None:
                save_before(self.record, self.sweep)  # (it makes the sweep dir: undo_sweep removes it if empty)

    def hydra(self, argv: list[str], codes: list[int]) -> int:
        """Run the app under ``@hydra.main`` (one job, or a sweep's jobs)."""
        import hydra
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        app = self.app
        command = f"osc {app.name} {shlex.join(argv)}".strip()

        @hydra.main(config_path=CONFIG_DIR, config_name=app.name, version_base=None)
        def task(cfg: DictConfig) -> None:
            hc = HydraConfig.get()
            run_dir = Path(hc.runtime.output_dir)
            if hc.mode == RunMode.MULTIRUN:  # a sweep's job: record a failure and go on
                os.environ[CODES_ENV] = str(self.record)  # a reused worker's is an earlier call's
                write_job_dir(run_dir)
                try:
                    summary = app.run(cfg, run_dir, command=command, record_failures=True, key="hydra.sweep.dir")
                    app.print_result(summary, run_dir)
                except UserError as err:
                    if isinstance(err, Refused) and err.path == run_dir and not err.in_use:  # its own claim, of a dir
                        # no other run holds: it ran nothing; its dir put back (the job may be in another process)
                        undo_job(load_before(), hc.job.num, run_dir)
                        write_refused(run_dir)
                    job_failed(2, f"error: job {hc.job.num} ({run_dir}): {err}")
                except Diverged as err:
                    job_failed(1, f"error: job {hc.job.num} ({run_dir}): training diverged: {err}")
                except Exception as err:
                    job_failed(1, f"error: job {hc.job.num} ({run_dir}) failed: {type(err).__name__}: {err}; "
                                  f"traceback in {run_dir / 'error.txt'}".splitlines()[0])
                return
            fresh = self.explicit is None and not has_results(run_dir)
            self.run_dir = run_dir
            try:
                summary = app.run(cfg, run_dir, command=command)
                if distributed.is_main():  # under torchrun: rank 0 speaks for all
                    app.print_result(summary, run_dir)
            except UserError as err:
                theirs = isinstance(err, Refused) and err.in_use and err.path == run_dir  # another run's: left alone
                print(f"error: {distributed.rank_prefix()}{err}{SAME_SECOND if theirs and not self.explicit else ''}",
                      file=sys.stderr)
                if distributed.is_main() and not theirs:
                    self.undo(run_dir, fresh)
                elif self.rank0_top is not None and not distributed.is_main():  # this rank's Hydra may have made
                    remove_empty(run_dir, self.rank0_top)  # the dir again after rank 0 removed it: empty dirs only
                sys.exit(2)
            except Diverged as err:
                print(f"error: {distributed.rank_prefix()}training diverged: {err}", file=sys.stderr)
                sys.exit(1)

        saved = sys.argv
        own = [a for a in argv if not (self.pin and a.startswith("hydra.sweep.dir="))]  # the pin in its place
        sys.argv = [f"osc {app.name}", *with_job_name(app.name, [*own, *self.pin])]  # Hydra parses sys.argv
        try:
            task()
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        finally:
            sys.argv = saved
            codes += read_codes()
            dirs, refused, errors = read_job_dirs(), read_refused(), read_errors()
            remove_record(self.record)  # before undo_sweep: a sweep dir this call made, emptied, is removed
            undo_sweep(self.sweep, dirs, refused)
        if errors and any(a.startswith("hydra/launcher=submitit") for a in argv):  # jobs' stderr: in .submitit/
            print("\n".join(errors), file=sys.stderr)
        line = sweep_line(dirs, codes)
        if line:  # a sweep: where its results are, last (each job's own lines scroll by above)
            print(line)
        return max(codes, default=0)

    def join_ranks(self, argv: list[str]) -> list[str]:
        """Under torchrun: join the process group; rank 0 resolves and claims the run dir
        and every rank runs in it, the others with Hydra's own files and logs turned off.
        Returns the overrides to run with; a mistake is the same UserError on every rank."""
        app = self.app
        if not app.torchrun:
            raise UserError(f"{app.name} does not run under torchrun; start it without torchrun")
        if any(a in ("-m", "--multirun") for a in argv):
            raise UserError("torchrun runs one job; start one torchrun per job of a sweep")
        distributed.init_from_env()
        run_dir, error = None, None
        if distributed.is_main():
            try:
                cfg = typed(app.schema, compose(app.name, argv))
                path = hydra_dir(app.name, argv, "hydra.run.dir")
                if path is None:
                    raise UserError("hydra.run.dir cannot be resolved before the run; under torchrun give a plain "
                                    "path or ${now:...} and the config's own keys")
                path = path.absolute()
                run_dir = str(path)
                # as it was before the check below makes it: what a refusal puts back
                self.explicit = (path, path.exists(), hydra_files(path), outermost_new(path))
                RunDir.claim(run_dir, resume=bool(getattr(cfg, "resume", False)),
                             supports_resume=app.supports_resume, config=cfg).release()  # a check only
            except UserError as err:
                error = str(err)
            except Exception as err:  # Hydra's composition errors
                error = one_line(err, app.schema)
        top = str(self.explicit[3]) if self.explicit is not None and not self.explicit[1] else None
        run_dir, error, top = distributed.broadcast_object((run_dir, error, top))
        if error is not None:
            raise UserError(error)
        self.rank0_top = None if distributed.is_main() or top is None else Path(top)
        argv = [a for a in argv if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={hydra_quoted(run_dir)}"]
        if not distributed.is_main():
            argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
        return argv

    def undo(self, run_dir: Path, fresh: bool) -> None:
        """After a refusal inside Hydra: leave nothing behind (:func:`._leftovers.undo`)."""
        undo(run_dir, fresh, self.explicit, self.default_top)
