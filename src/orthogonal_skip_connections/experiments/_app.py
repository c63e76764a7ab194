"""The one app shape (the only layer that imports Hydra and omegaconf).

An app is a module in ``experiments/`` with

- a typed config: a dataclass (``@dataclass class Config``, fields typed, no defaults:
  the defaults are the app's YAML in ``config/``, composed on top of the dataclass,
  registered with Hydra's ConfigStore as ``<app>_schema``), whose ``check()`` raises a
  one-line :class:`UserError` naming the key for a value out of range;
- ``run(cfg, rd) -> summary``: checks what needs the library (datasets, model options),
  then ``rd.start(cfg)``, library calls, and returns the summary with its ``report``
  section; it returns or raises, never exits;
- ``main = App("name", Config, run)`` and ``if __name__ == "__main__": sys.exit(main())``.

:class:`App` does the rest: composes the config from the command line *before* Hydra
runs, so a mistyped or unknown key, a wrong type or a value out of range is one line on
stderr and exit code 2 with nothing written; claims the run dir (:class:`RunDir`: fresh
or resumed, locked, a resume with a changed config refused); writes summary.json with
provenance. Only :meth:`App.__call__` turns a :class:`UserError` into exit code 2 and a
diverged training (the rule of :mod:`~orthogonal_skip_connections.train.divergence`)
into exit code 1 with a ``status: diverged`` summary; any other exception (a library bug)
propagates as a traceback.

Refused calls leave nothing behind: a run dir this call made is removed, and the
``.hydra/`` files and job log Hydra rewrote in an existing run dir are put back as they
were. Booleans are ``true`` or ``false`` only (``resume=no`` is refused, not read).

Sweeps (``-m``): every job's config is checked before the first job runs (a bad value is
one line, exit 2, nothing run). A job that then fails (a user error found at run time, a
diverged training, a library error) is recorded in its run dir (summary.json with
``status: failed`` and ``reason``, or ``status: diverged``; a library error's traceback in
error.txt), one line is printed, and the sweep goes on; its exit code is the worst of its
jobs' (2 > 1 > 0).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import shlex
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from ..rundir import RunDir, check_dir_writable
from ..runs import UserError
from ..train import distributed
from ..train.divergence import Diverged

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "config")

__all__ = ["APPS", "load_app", "App", "CONFIG_DIR", "compose", "require", "choice", "one_of", "SmallTraining", "SkipOptions"]


# --------------------------------------------------------------------------- the registry

from ._registry import APPS, load_app  # noqa: E402  (no torch, no Hydra: ``osc list`` stays fast)


# --------------------------------------------------------------------------- checks


def require(ok: bool, key: str, allowed: str, value: Any) -> None:
    """Raise ``UserError("<key> must be <allowed>; got <value>")`` unless ``ok``."""
    if not ok:
        raise UserError(f"{key} must be {allowed}; got {value!r}")


def choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise UserError(f"unknown {key} {value!r}; allowed: {', '.join(map(str, allowed))}")


def one_of(key: str, values: list, allowed, low_count: int = 1) -> list:
    """A non-empty list of allowed values, in order, duplicates dropped."""
    require(len(values) >= low_count and all(v in allowed for v in values), key,
            f"a non-empty list of: {', '.join(map(str, allowed))}", values)
    return list(dict.fromkeys(values))


def ints_at_least(key: str, values: list, low: int) -> list[int]:
    """A non-empty list of integers >= low, sorted, duplicates dropped."""
    require(len(values) > 0, key, f"a non-empty list of integers >= {low}", values)
    for v in values:
        if v < low:
            raise UserError(f"every entry of {key} must be an integer >= {low}; got {v!r}")
    return sorted(set(values))


def number(key: str, value: float, low: float = -math.inf, strict: bool = False, high: float = math.inf) -> None:
    ok = math.isfinite(value) and (value > low if strict else value >= low) and value <= high
    bound = " and ".join(b for b in [
        "" if low == -math.inf else f"{'>' if strict else '>='} {low}", "" if high == math.inf else f"<= {high}"] if b)
    require(ok, key, f"a number {bound}".strip(), value)


# --------------------------------------------------------------------------- shared config parts


@dataclasses.dataclass
class SmallTraining:
    """The training keys the small-model apps share, at the top level of their configs."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    milestones: list[int]
    gamma: float
    warmup_epochs: float
    grad_clip: float
    progress: bool

    def check_training(self) -> None:
        from ..optim import OPTIMIZERS, SCHEDULES

        choice("optimizer", self.optimizer, OPTIMIZERS)
        choice("schedule", self.schedule, SCHEDULES)
        require(self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)
        require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        number("lr", self.lr, 0, strict=True)
        number("momentum", self.momentum, 0)
        number("weight_decay", self.weight_decay, 0)
        number("gamma", self.gamma, 0, strict=True)
        number("warmup_epochs", self.warmup_epochs, 0)
        number("grad_clip", self.grad_clip, 0)
        for m in self.milestones:
            require(m >= 1, "milestones", "epochs >= 1", m)

    def train_config(self):
        """The :class:`TrainConfig` of the small-model trainer."""
        from ..train.classifier import TrainConfig

        tcfg = TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
                           momentum=self.momentum, weight_decay=self.weight_decay, schedule=self.schedule,
                           milestones=sorted(set(self.milestones)), gamma=self.gamma,
                           warmup_epochs=self.warmup_epochs, grad_clip=self.grad_clip, progress=self.progress)
        tcfg.validate()
        return tcfg


@dataclasses.dataclass
class SkipOptions:
    """``skip.*`` of the ResidualMLP apps."""

    method: str
    init: str
    special: bool
    lr_scale: float

    def options(self) -> dict:
        return {"method": self.method, "init": self.init, "special": self.special, "lr_scale": self.lr_scale}


def residual_mlp_factory(cfg, dim: int, depth: int, num_classes: int, skip_kind: str):
    """``make_model()`` for :meth:`SeedStack.build`: a ResidualMLP classifier whose ``depth``
    blocks act on R^dim itself, then a linear head, from ``cfg.hidden_mult``,
    ``cfg.activation`` and ``cfg.skip``. One model is built here to check the options (a
    mistake is one line, before anything is written)."""
    import torch

    from ..models.mlp import ResidualMLP

    def make_model():
        return ResidualMLP(dim, depth, hidden_mult=cfg.hidden_mult, skip_kind=skip_kind, num_classes=num_classes,
                           activation=cfg.activation, **cfg.skip.options())

    with torch.random.fork_rng(devices=[]):
        try:
            make_model()
        except (TypeError, ValueError) as err:
            raise UserError(str(err)) from None
    return make_model


def skip_kinds(key: str, kinds: list[str]) -> list[str]:
    from ..skips import SKIP_KINDS

    return one_of(key, kinds, SKIP_KINDS)


# --------------------------------------------------------------------------- composing


def _register(name: str, schema: type) -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=f"{name}_schema", node=schema)


def _schema_node(schema: type, path: list[str]):
    """The type at dotted ``path`` under the dataclass ``schema`` (None if unknown)."""
    import typing

    node: Any = schema
    skip = False
    for part in path:
        if skip:  # a key of a Dict[str, X]: any name, then X
            skip = False
            continue
        if not dataclasses.is_dataclass(node):
            return None
        node = typing.get_type_hints(node).get(part)
        if typing.get_origin(node) is dict:
            node, skip = typing.get_args(node)[1], True
    return None if skip else node


def _allowed_keys(schema: type, path: list[str]) -> list[str] | None:
    node = _schema_node(schema, path)
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else None


def _kind(tp) -> str:
    """'an integer', 'a number', ... for a field type."""
    import typing

    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union and len(args) == 1:
        return _kind(args[0]) + " or null"
    if typing.get_origin(tp) is list:
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(args[0], "values")
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, "a mapping")


def _one_line(err: BaseException, schema: type) -> str:
    """One line from Hydra's or omegaconf's (multi-line) composition error."""
    cause = err
    while cause.__cause__ is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key = cause.full_key
        if isinstance(cause, (ConfigKeyError, AttributeError)):
            parts = key.split(".")
            allowed = _allowed_keys(schema, parts[:-1])
            where = ".".join(parts[:-1])
            return f"unknown key {key!r}" + (f"; allowed{' in ' + where if where else ''}: {', '.join(allowed)}"
                                            if allowed else "")
        if isinstance(cause, MissingMandatoryValue):
            return f"{key} has no value; set it ({key}=...)"
        msg = str(getattr(cause, "msg", cause)).splitlines()[0]
        tp = _schema_node(schema, re.sub(r"\[\d+\]", "", key).split("."))
        if "[" in key and tp is not None:  # an entry of a list
            import typing

            tp, key = (typing.get_args(tp) or [None])[0], "every entry of " + re.sub(r"\[\d+\]", "", key)
        got = re.search(r"[Vv]alue '(.*?)'", msg)
        if tp is not None and got:
            return f"{key} must be {_kind(tp)}; got {got.group(1)!r}"
        return f"{key}: {msg}"
    options = getattr(err, "options", None)
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if options:
        first = first.rstrip(".") + f"; allowed: {', '.join(options)}"
    return first


def _compose_raw(name: str, overrides: list[str], hydra_config: bool = False) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name=name, overrides=list(overrides), return_hydra_config=hydra_config)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return hydra_compose(config_name=name, overrides=list(overrides), return_hydra_config=hydra_config)


def compose(name: str, overrides: list[str] = ()) -> DictConfig:
    """App ``name``'s config (its YAML over its schema) with ``overrides``, inside a running
    Hydra app or outside one; a mistake is a one-line :class:`UserError`."""
    app = load_app(name)
    _strict_booleans(app.schema, overrides)
    try:
        return _compose_raw(name, list(overrides))
    except Exception as err:  # Hydra's composition errors: unknown key, wrong type, no such option
        raise UserError(_one_line(err, app.schema)) from None


def _strict_booleans(schema: type, overrides) -> None:
    """A boolean key takes ``true`` or ``false`` only: omegaconf would read ``no``, ``off``,
    ``0`` or ``y`` as booleans, which a user may not mean."""
    import typing

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, parsed = OverridesParser.create(), []
    for override in overrides:
        try:
            parsed += parser.parse_overrides([override])
        except Exception as err:  # the grammar's message names no key: name the override
            raise UserError(f"cannot parse the override {override!r}: {_one_line(err, schema)}; see "
                            f"https://hydra.cc/docs/advanced/override_grammar/basic/") from None
    parsed = [o for o in parsed if not o.key_or_group.startswith("hydra.")]
    for o in parsed:
        key = o.key_or_group.lstrip("+~")
        tp = _schema_node(schema, key.split("."))
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if not (tp is bool or (typing.get_origin(tp) is typing.Union and args == [bool])) or o.is_delete():
            continue
        values = list(o.value().list) if o.is_sweep_override() and hasattr(o.value(), "list") else [o.value()]
        for v in values:
            if not isinstance(v, bool) and not (v is None and tp is not bool):
                raise UserError(f"{key} must be true or false; got {v!r}")


def typed(schema: type, cfg: Any):
    """``cfg`` (a composed DictConfig, a plain dict or an instance) as a checked ``schema``
    instance: unknown keys, wrong types and missing values are one-line UserErrors, and
    then ``check()`` tests the ranges."""
    if not isinstance(cfg, schema):
        try:
            if isinstance(cfg, (DictConfig, dict)):
                cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
                cfg = {k: v for k, v in cfg.items() if k != "hydra"}
            merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
            cfg = OmegaConf.to_object(merged)
        except OmegaConfBaseException as err:
            raise UserError(_one_line(err, schema)) from None
    cfg.check()
    return cfg


# --------------------------------------------------------------------------- --help


def _yaml_options(text: str) -> tuple[list[str], list[tuple[str, str, str]]]:
    """(header comment lines, [(dotted key, default as written, comment)]) of an app's YAML,
    read line by line so that the comments, which say what each key means and which values
    it allows, are kept. The defaults list and the hydra block are left out."""
    header, options, stack, skip_indent = [], [], [], None
    seen_key = False
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.lstrip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if not seen_key:
                header.append(stripped.lstrip("#").strip())
            continue
        indent = len(line) - len(stripped)
        if skip_indent is not None:
            if indent > skip_indent or stripped.startswith("- "):
                continue
            skip_indent = None
        m = re.match(r"([A-Za-z_][\w-]*):\s*(.*)$", stripped)
        if m is None:
            continue
        seen_key = True
        key, rest = m.groups()
        value, _, comment = ("", "", rest[1:]) if rest.startswith("#") else rest.partition(" #")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if indent == 0 and key in ("defaults", "hydra"):
            skip_indent = indent
            continue
        path = ".".join([k for _, k in stack] + [key])
        if not value.strip():
            stack.append((indent, key))
        options.append((path, value.strip(), comment.strip().lstrip("#").strip()))
    return header, options


def help_text(name: str) -> str:
    """``osc <app> --help``: every option of the app with its default, its type and what its
    YAML comment says it means and allows; config groups with their choices."""
    import typing

    app = load_app(name)
    text = (Path(CONFIG_DIR) / f"{name}.yaml").read_text()
    header, options = _yaml_options(text)
    lines = [f"usage: osc {name} [key=value ...] [hydra.run.dir=DIR] [-m for a sweep]", "",
             f"{name}: {APPS[name][1]}", ""]
    lines += [h for h in header if h] + [""]
    groups = re.findall(r"^\s*-\s*(\w+):\s*(\w+)\s*(?:#\s*(.*))?$", text, flags=re.M)  # defaults' groups
    for group, default, comment in groups:
        choices = sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))
        lines.append(f"  {group}={default}  (config group; one of: {', '.join(choices)}){'  ' + comment if comment else ''}")
    lines.append("options (key = default: type; meaning and allowed values):")
    width = min(34, max(len(f"{k} = {v}") for k, v, _ in options if v) + 2)
    for key, value, comment in options:
        node = _schema_node(app.schema, key.split("."))
        if not value:  # a mapping: its keys follow
            lines.append(f"  {key}:" + (f"  {comment}" if comment else ""))
            continue
        origin = typing.get_origin(node)
        kind = _kind(node) if node is not None and origin is not dict else "a mapping"
        lines.append(f"  {f'{key} = {value}':<{width}} {kind}" + (f"; {comment}" if comment else ""))
    lines += ["", "Lists are written key=[a,b]; nested keys key.sub=value. A mistyped key, a wrong type or a value",
              "out of range is one line and exit code 2, before anything is written.",
              f"Hydra's own options: osc {name} --hydra-help"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the app


class App:
    """An app: its name (= config name), typed config and ``run(cfg, rd)``.

    ``main = App(...)``; ``main()`` is the command-line entry (returns the exit code);
    ``main.run(cfg, run_dir)`` runs it in-process (cfg: overrides, DictConfig, dict or
    instance) and returns the summary or raises."""

    _claims: list = []
    _explicit = None

    def __init__(self, name: str, schema: type, fn: Callable, resume: bool = False, redo_completed: bool = False,
                 console: Callable[[dict], str] | None = None, torchrun: bool = False):
        """``resume``: the app can continue an unfinished run (``resume=true``);
        ``redo_completed``: resuming a completed run runs it again (apps that skip the
        parts already done, like ``study``) instead of returning its summary;
        ``console(summary)``: extra text (a table) printed before the result line when the
        app runs from the command line; ``torchrun``: the app trains data-parallel when
        started by torchrun (every rank runs in rank 0's run dir, and only rank 0 writes)."""
        self.name = self.config_name = name
        self.schema = schema
        self.fn = fn
        self.console = console
        self.supports_resume = resume
        self.redo_completed = redo_completed
        self.torchrun = torchrun
        _register(name, schema)

    def config(self, overrides: list[str] = ()):
        """The checked config instance for ``overrides``."""
        return typed(self.schema, compose(self.name, overrides))

    def run(self, cfg: Any, run_dir: Path, command: str | None = None, record_failures: bool = False) -> dict:
        """Run in ``run_dir``; returns the summary or raises (UserError, Diverged after a
        ``status: diverged`` summary, or a library error). ``record_failures``: a
        UserError or library error is first recorded as a ``status: failed`` summary (a
        sweep's job)."""
        if isinstance(cfg, (list, tuple)):
            cfg = compose(self.name, cfg)
        cfg = typed(self.schema, cfg)
        if distributed.is_main():
            rd = RunDir.claim(run_dir, resume=bool(getattr(cfg, "resume", False)),
                              supports_resume=self.supports_resume, app=self.name, config=cfg)
        else:  # under torchrun: rank 0 claims (and locks) the dir; the other ranks write nothing
            rd = RunDir(run_dir, resume=bool(getattr(cfg, "resume", False)), app=self.name)
        labels = cfg.labels() if hasattr(cfg, "labels") else None
        try:
            rd.command = command
            if rd.resume and not self.redo_completed:
                done = rd.completed
                if done is not None:
                    print(f"{rd.path} is already completed; nothing to resume")
                    return done
            try:
                summary = self.fn(cfg, rd)
            except Diverged as err:
                rd.diverged(err.info, err.partial, labels)
                raise
            except Exception as err:
                if record_failures:
                    reason = str(err).splitlines()[0] if isinstance(err, UserError) else \
                        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} (traceback in error.txt)"
                    if not isinstance(err, UserError):
                        rd.path.mkdir(parents=True, exist_ok=True)
                        (rd.path / "error.txt").write_text("".join(traceback.format_exception(err)))
                    rd.failed(reason, labels, user_error=isinstance(err, UserError))
                raise
            if not rd.is_started:
                raise RuntimeError(f"{self.name}: run() returned without rd.start(cfg)")
            return rd.finish(summary)
        finally:
            rd.release()

    # the command line -------------------------------------------------------------

    def print_result(self, summary: dict, run_dir: Path) -> None:
        """The end of every app on the command line: its console text (if any), one line
        with its result (the report's verdict) and the path of its run dir, after any
        progress bar has gone (tqdm.write keeps them apart)."""
        from tqdm.auto import tqdm

        if self.console is not None:
            tqdm.write(self.console(summary))
        tqdm.write(f"{self.name}: {summary['report']['verdict']}")
        tqdm.write(f"run dir: {Path(run_dir).resolve()}")

    def _precheck(self, argv: list[str]) -> None:
        """Compose and check the config, and check an explicit hydra.run.dir, before Hydra
        runs (which would print multi-line errors and create the run dir)."""
        flags = [a for a in argv if a.startswith("-")]
        overrides = [a for a in argv if not a.startswith("-")]
        if any(f not in ("-m", "--multirun") for f in flags):
            return  # --help, --cfg, --info...: Hydra's own business
        jobs = [overrides]
        if flags:  # multirun: check every combination of the sweep
            from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
            from hydra.core.override_parser.overrides_parser import OverridesParser

            try:
                parsed = OverridesParser.create().parse_overrides(overrides)
            except Exception as err:
                raise UserError(_one_line(err, self.schema)) from None
            jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
            for o in overrides:
                if o.startswith("hydra.sweep.dir="):
                    check_dir_writable(Path(o.split("=", 1)[1]), "hydra.sweep.dir")
        explicit = [o for o in overrides if o.startswith("hydra.sweep.dir=" if flags else "hydra.run.dir=")]
        if not explicit:  # the default dir's fixed part (before the first ${...}) must be writable
            key = "hydra.sweep.dir" if flags else "hydra.run.dir"
            try:
                hc = _compose_raw(self.name, jobs[0], hydra_config=True).hydra
                pattern = str(OmegaConf.to_container(hc.sweep if flags else hc.run, resolve=False)["dir"])
            except Exception:  # Hydra's own config: checked by Hydra
                pattern = ""
            if pattern:
                check_dir_writable(Path(pattern.split("${")[0] or "."), key, shown=f"{pattern} (the default)")
        for job in jobs:
            cfg = typed(self.schema, compose(self.name, job))
            for o in job:
                if o.startswith("hydra.run.dir=") and not flags and distributed.is_main():
                    path = Path(o.split("=", 1)[1])
                    top = path  # the outermost dir this call would make
                    while not top.parent.exists() and top.parent != top.parent.parent:
                        top = top.parent
                    self._explicit = (path, path.exists(), _hydra_files(path), top)
                    # held (locked) until the run ends: a second writer is refused before Hydra writes
                    self._claims.append(RunDir.claim(path, resume=bool(getattr(cfg, "resume", False)),
                                                     supports_resume=self.supports_resume, config=cfg))

    def __call__(self, argv: list[str] | None = None) -> int:
        """Run from the command line: ``argv`` (default ``sys.argv[1:]``) are Hydra overrides.
        Returns the exit code (0; 2 for a user's mistake; 1 for a diverged training); called
        without ``argv`` (as a program) a non-zero code is raised as SystemExit."""
        code = self._main(argv)
        if argv is None and code:
            raise SystemExit(code)
        return code

    def _main(self, argv: list[str] | None) -> int:
        import os
        import tempfile

        argv = list(sys.argv[1:] if argv is None else argv)
        if any(a in ("-h", "--help") for a in argv):
            print(help_text(self.name))
            return 0
        self._claims, self._explicit, codes = [], None, []
        # a sweep's failed jobs write their exit codes here: they may run in other processes
        # (Hydra's joblib or submitit launchers), which inherit the environment
        fd, codes_file = tempfile.mkstemp(prefix="osc-sweep-", suffix=".codes")
        os.close(fd)
        saved_env = os.environ.get(CODES_ENV)
        os.environ[CODES_ENV] = codes_file
        try:
            try:
                if distributed.launched_by_torchrun():
                    argv = self._join_ranks(argv)
                self._precheck(argv)
            except UserError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            return self._hydra(argv, codes)
        finally:
            if distributed.launched_by_torchrun():
                distributed.leave()
            for rd in self._claims:
                rd.release()
            self._claims = []
            if saved_env is None:
                os.environ.pop(CODES_ENV, None)
            else:
                os.environ[CODES_ENV] = saved_env
            os.unlink(codes_file)

    def _hydra(self, argv: list[str], codes: list[int]) -> int:
        import hydra
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        command = f"osc {self.name} {shlex.join(argv)}".strip()

        @hydra.main(config_path=CONFIG_DIR, config_name=self.name, version_base=None)
        def task(cfg: DictConfig) -> None:
            hc = HydraConfig.get()
            run_dir = Path(hc.runtime.output_dir)
            if hc.mode == RunMode.MULTIRUN:  # a sweep's job: record a failure and go on
                try:
                    self.print_result(self.run(cfg, run_dir, command=command, record_failures=True), run_dir)
                except UserError as err:
                    print(f"error: job {hc.job.num} ({run_dir}): {err}", file=sys.stderr)
                    _write_code(2)
                except Diverged as err:
                    print(f"error: job {hc.job.num} ({run_dir}): training diverged: {err}", file=sys.stderr)
                    _write_code(1)
                except Exception as err:
                    print(f"error: job {hc.job.num} ({run_dir}) failed: {type(err).__name__}: {err}; traceback in "
                          f"{run_dir / 'error.txt'}".splitlines()[0], file=sys.stderr)
                    _write_code(1)
                return
            fresh = self._explicit is None and not _has_results(run_dir)
            try:
                summary = self.run(cfg, run_dir, command=command)
                if distributed.is_main():  # under torchrun: rank 0 speaks for all
                    self.print_result(summary, run_dir)
            except UserError as err:
                print(f"error: {err}", file=sys.stderr)
                if distributed.is_main():
                    self._undo(run_dir, fresh)
                sys.exit(2)
            except Diverged as err:
                print(f"error: training diverged: {err}", file=sys.stderr)
                sys.exit(1)

        saved = sys.argv
        named = self._job_name(argv)
        sys.argv = [f"osc {self.name}", *argv, *named]  # Hydra parses sys.argv
        try:
            task()
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        finally:
            sys.argv = saved
            codes += _read_codes()
        return max(codes, default=0)

    def _job_name(self, argv: list[str]) -> list[str]:
        return [] if any(a.startswith("hydra.job.name=") for a in argv) else [f"hydra.job.name={self.name}"]

    def _join_ranks(self, argv: list[str]) -> list[str]:
        """Under torchrun: join the process group; rank 0 resolves and claims the run dir
        and every rank runs in it, the others with Hydra's own files and logs turned off.
        Returns the overrides to run with; a mistake is the same UserError on every rank."""
        if not self.torchrun:
            raise UserError(f"{self.name} does not run under torchrun; start it without torchrun")
        if any(a in ("-m", "--multirun") for a in argv):
            raise UserError("torchrun runs one job; start one torchrun per job of a sweep")
        distributed.init_from_env()
        run_dir, error = None, None
        if distributed.is_main():
            try:
                from hydra.core.utils import setup_globals

                setup_globals()  # the ${now:...} resolver
                cfg = typed(self.schema, compose(self.name, argv))
                hydra_cfg = _compose_raw(self.name, [*argv, *self._job_name(argv)], hydra_config=True)
                run_dir = str(Path(OmegaConf.select(hydra_cfg, "hydra.run.dir")).absolute())
                RunDir.claim(run_dir, resume=bool(getattr(cfg, "resume", False)),
                             supports_resume=self.supports_resume, config=cfg).release()  # a check only
            except UserError as err:
                error = str(err)
            except Exception as err:  # Hydra's composition errors
                error = _one_line(err, self.schema)
        run_dir, error = distributed.broadcast_object((run_dir, error))
        if error is not None:
            raise UserError(error)
        quoted = run_dir if re.fullmatch(r"[\w/.+-]+", run_dir) else \
            "'" + run_dir.replace("\\", "\\\\").replace("'", "\\'") + "'"
        argv = [a for a in argv if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={quoted}"]
        if not distributed.is_main():
            argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
        return argv

    def _undo(self, run_dir: Path, fresh: bool) -> None:
        """After a refusal inside Hydra: remove a run dir this call made (unless the run had
        started: then its files say what happened), or put back the .hydra/ files and job
        log Hydra rewrote in one that was there before."""
        started = (run_dir / "run.json").exists()
        if self._explicit is not None:
            path, existed, files, top = self._explicit
            if path.resolve() != run_dir.resolve():
                return
            if not existed:
                if not started:
                    shutil.rmtree(top, ignore_errors=True)
                return
            for p in _hydra_files(path):
                if p not in files:
                    p.unlink(missing_ok=True)
            for p, data in files.items():
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
        elif fresh and not started:
            shutil.rmtree(run_dir, ignore_errors=True)


CODES_ENV = "OSC_SWEEP_CODES"


def _write_code(code: int) -> None:
    """Append a failed sweep job's exit code to the file the sweep's parent reads."""
    import os

    path = os.environ.get(CODES_ENV)
    if path:
        with open(path, "a") as f:
            f.write(f"{code}\n")


def _read_codes() -> list[int]:
    import os

    path = os.environ.get(CODES_ENV)
    try:
        return [int(line) for line in Path(path).read_text().split()] if path else []
    except (OSError, ValueError):
        return []


def _hydra_files(path: Path) -> dict[Path, bytes]:
    """What Hydra writes into a run dir (.hydra/*, the job's .log), with their bytes."""
    path = Path(path)
    if not path.is_dir():
        return {}
    files = [p for p in (path / ".hydra").glob("*") if p.is_file()] + [p for p in path.glob("*.log") if p.is_file()]
    return {p: p.read_bytes() for p in files}


def _has_results(path: Path) -> bool:
    """Whether a run dir holds anything besides Hydra's own files and the lock."""
    return path.is_dir() and any(p.name not in (".hydra", ".lock") and p.suffix != ".log" for p in path.iterdir())


def as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
