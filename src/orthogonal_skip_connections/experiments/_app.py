"""The one app shape (with the other ``_``-prefixed modules here, the only layer that
imports Hydra and omegaconf).

An app is a module in ``experiments/`` with

- a typed config: a dataclass (``@dataclass class Config``, fields typed, no defaults:
  the defaults are the app's YAML in ``config/``, composed on top of the dataclass,
  registered with Hydra's ConfigStore as ``<app>_schema``), whose ``check()`` raises a
  one-line :class:`UserError` naming the key for a value out of range;
- ``run(cfg, rd) -> summary``: checks what needs the library (datasets, model options),
  then ``rd.start(cfg)``, library calls, and returns the summary with its ``report``
  section; it returns or raises, never exits;
- ``main = App("name", Config, run)`` and ``if __name__ == "__main__": sys.exit(main())``.

:class:`App` does the rest: claims the run dir (:class:`RunDir`: fresh or resumed, locked,
a resume with a changed config refused), runs, writes summary.json with provenance, and
records a failed or diverged run in its run dir.

The parts, each importable from here as before:

- :mod:`._checks`   one-line value checks for ``Config.check()`` (``require``, ``choice``, ...)
- :mod:`._parts`    config parts several apps share (``SmallTraining``, ``SkipOptions``, ...)
- :mod:`._compose`  the config from YAML + schema + overrides (``compose``, ``typed``), one-line errors
- :mod:`._help`     ``osc <app> --help``
- :mod:`._options`  Hydra's options in a call (``-m``, ``--cfg job``): put first, checked in one line
- :mod:`._hydra_dirs`  the run and sweep dirs Hydra will make of a call's overrides, known before it runs
- :mod:`._command_line`  the Hydra glue: checks before Hydra runs, exit codes, sweeps, torchrun
- :mod:`._leftovers`  what a call refused inside Hydra leaves behind (nothing that was not there)
- :mod:`._sweep_record`  what a sweep's jobs tell the sweep's process (run dirs, failures) and its last line
- :mod:`._registry` the list of apps (no torch, no Hydra: ``osc list`` stays fast)
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from ..rundir import ERROR, RunDir, saved_state
from ..runs import UserError
from ..train import distributed
from ..train.divergence import Diverged
from ._checks import MAX_SEED, check_seed, choice, ints_at_least, number, one_of, path_or_null, require, threads
from ._command_line import CommandLine
from ._compose import CONFIG_DIR, compose, register_schema, typed
from ._parts import (SkipOptions, SmallTraining, check_residual_mlp_memory, check_synthetic_data,
                     residual_mlp_factory, skip_kinds)
from ._registry import APPS, load_app

__all__ = ["APPS", "load_app", "App", "CONFIG_DIR", "compose", "typed", "require", "threads", "choice", "one_of", "ints_at_least",
           "check_seed", "MAX_SEED",
           "number", "path_or_null", "SmallTraining", "SkipOptions", "residual_mlp_factory", "skip_kinds",
           "check_synthetic_data",
           "check_residual_mlp_memory"]




class App:
    """An app: its name (= config name), typed config and ``run(cfg, rd)``.

    ``main = App(...)``; ``main()`` is the command-line entry (returns the exit code);
    ``main.run(cfg, run_dir)`` runs it in-process (cfg: overrides, DictConfig, dict or
    instance) and returns the summary or raises."""

    def __init__(self, name: str, schema: type, fn: Callable, resume: bool = False, redo_completed: bool = False,
                 console: Callable[[dict], str] | None = None, torchrun: bool = False,
                 prepare: Callable[[list], None] | None = None):
        """``resume``: the app can continue an unfinished run (``resume=true``);
        ``redo_completed``: resuming a completed run runs it again (apps that skip the
        parts already done, like ``study``) instead of returning its summary;
        ``console(summary)``: extra text (a table) printed before the result line when the
        app runs from the command line; ``torchrun``: the app trains data-parallel when
        started by torchrun (every rank runs in rank 0's run dir, and only rank 0 writes);
        ``prepare(cfgs)``: what a sweep (``-m``) does once, after every job's config is checked
        and before Hydra runs (run_experiments: finds or downloads each dataset), raising a
        UserError to refuse the sweep."""
        self.name = self.config_name = name
        self.schema = schema
        self.fn = fn
        self.console = console
        self.supports_resume = resume
        self.redo_completed = redo_completed
        self.torchrun = torchrun
        self.prepare = prepare
        register_schema(name, schema)

    def config(self, overrides: list[str] = ()):
        """The checked config instance for ``overrides``."""
        return typed(self.schema, compose(self.name, overrides))

    def run(self, cfg: Any, run_dir: Path, command: str | None = None, record_failures: bool = False,
            key: str = "hydra.run.dir", study: Path | None = None) -> dict:
        """Run in ``run_dir``; returns the summary or raises (UserError, Diverged after a
        ``status: diverged`` summary, or a library error, whose traceback is first written to
        the run dir's error.txt). ``record_failures``: a UserError or library error is first
        recorded as a ``status: failed`` summary too (a sweep's job). ``key``: the setting that
        chose ``run_dir``, named when the dir is refused (``hydra.sweep.dir`` for a sweep's
        job); ``study``: the dir of the ``osc study`` that runs this run, whose user chose
        neither: a refusal of what ``run_dir`` holds says what they can do instead
        (:func:`~..rundir.study_advice`)."""
        if isinstance(cfg, (list, tuple)):
            cfg = compose(self.name, cfg)
        cfg = typed(self.schema, cfg)
        if distributed.is_main():
            rd = RunDir.claim(run_dir, resume=bool(getattr(cfg, "resume", False)),
                              supports_resume=self.supports_resume, app=self.name, config=cfg, key=key, study=study)
        else:  # under torchrun: rank 0 claims (and locks) the dir; the other ranks write nothing
            rd = RunDir(run_dir, resume=bool(getattr(cfg, "resume", False)), app=self.name, key=key, study=study)
        labels = cfg.labels() if hasattr(cfg, "labels") else None
        try:
            rd.command = command
            if rd.resume and not self.redo_completed:
                done = rd.completed
                if done is not None:
                    print(f"{rd.path} is already completed; nothing to resume")
                    return done
                # (a typo'd dir, a run stopped before its first checkpoint: say so)
                if study is None and distributed.is_main() and saved_state(rd.path) is None:
                    print(f"{rd.path} holds nothing saved yet; resume=true starts the run from the beginning")
            try:
                summary = self.fn(cfg, rd)
            except Diverged as err:
                rd.diverged(err.info, err.partial, labels)
                raise
            except Exception as err:
                # a library error, in any run (one run, a sweep's job, a study's): its traceback kept in
                # error.txt, so that osc report calls the run failed, not interrupted. A refusal (a
                # UserError) writes none: a refused run leaves its dir as it was
                if not isinstance(err, UserError) and distributed.is_main():
                    rd.path.mkdir(parents=True, exist_ok=True)
                    (rd.path / ERROR).write_text("".join(traceback.format_exception(err)))
                if record_failures:
                    reason = str(err).splitlines()[0] if isinstance(err, UserError) else \
                        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} (traceback in error.txt)"
                    rd.failed(reason, labels, user_error=isinstance(err, UserError))
                raise
            if not rd.is_started:
                raise RuntimeError(f"{self.name}: run() returned without rd.start(cfg)")
            return rd.finish(summary)
        finally:
            rd.release()

    def print_result(self, summary: dict, run_dir: Path) -> None:
        """The end of every app on the command line: its console text (if any), one line
        with its result (the report's verdict) and the path of its run dir, after any
        progress bar has gone (tqdm.write keeps them apart)."""
        from tqdm.auto import tqdm

        if self.console is not None:
            tqdm.write(self.console(summary))
        tqdm.write(f"{self.name}: {summary['report']['verdict']}")
        tqdm.write(f"run dir: {Path(run_dir).resolve()}")

    def __call__(self, argv: list[str] | None = None) -> int:
        """Run from the command line: ``argv`` (default ``sys.argv[1:]``) are Hydra overrides.
        Returns the exit code (0; 2 for a user's mistake; 1 for a diverged training); called
        without ``argv`` (as a program) a non-zero code is raised as SystemExit. See
        :mod:`._command_line`."""
        code = CommandLine(self).main(list(sys.argv[1:] if argv is None else argv))
        if argv is None and code:
            raise SystemExit(code)
        return code
