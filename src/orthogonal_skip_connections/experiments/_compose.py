"""Composing an app's config: its YAML in ``config/`` over its dataclass schema (registered
with Hydra's ConfigStore as ``<app>_schema``), inside a running Hydra app or outside one,
and reading it back as a checked dataclass instance (:func:`typed`).

Every mistake is one line (:class:`~orthogonal_skip_connections.runs.UserError`): Hydra's
and omegaconf's multi-line composition errors are cut down to the key, what it allows and
what was given (:func:`one_line`); booleans are ``true`` or ``false`` only and a config group
takes one config's name (:func:`check_overrides`: omegaconf would read ``no`` or ``0``, Hydra
names no group for ``dataset=null``). What Hydra makes of a call's run and sweep dirs is
:mod:`._hydra_dirs`'s."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import re
import typing
from pathlib import Path
from typing import Any, Iterable, Iterator

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from ..runs import UserError
from ._registry import load_app

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "config")

__all__ = ["CONFIG_DIR", "compose", "compose_each", "typed", "register_schema", "compose_raw", "one_line",
           "schema_node", "kind_of", "check_overrides"]


def register_schema(name: str, schema: type) -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=f"{name}_schema", node=schema)


# --------------------------------------------------------------------------- the schema, read by key


def schema_node(schema: type, path: list[str]):
    """The type at dotted ``path`` under the dataclass ``schema`` (None if unknown)."""
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


def allowed_keys(schema: type, path: list[str]) -> list[str] | None:
    node = schema_node(schema, path)
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else None


def kind_of(tp) -> str:
    """'an integer', 'a number', ... for a field type."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union and len(args) == 1:
        return kind_of(args[0]) + " or null"
    if typing.get_origin(tp) is list:
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(args[0], "values")
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, "a mapping")


# --------------------------------------------------------------------------- one line per mistake


def one_line(err: BaseException, schema: type) -> str:
    """One line from Hydra's or omegaconf's (multi-line) composition error."""
    cause = err
    while cause.__cause__ is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key = cause.full_key
        if isinstance(cause, (ConfigKeyError, AttributeError)):
            parts = key.split(".")
            allowed = allowed_keys(schema, parts[:-1])
            where = ".".join(parts[:-1])
            return f"unknown key {key!r}" + (f"; allowed{' in ' + where if where else ''}: {', '.join(allowed)}"
                                            if allowed else "")
        if isinstance(cause, MissingMandatoryValue):
            return f"{key} has no value; set it ({key}=...)"
        msg = str(getattr(cause, "msg", cause)).splitlines()[0]
        section = allowed_keys(schema, key.split("."))
        if section and msg.startswith("Invalid type assigned"):  # optimizer=adam: a value for a whole section
            return f"{key} is a group of settings, not one value; set its keys ({key}.<key>=...): {', '.join(section)}"
        tp = schema_node(schema, re.sub(r"\[\d+\]", "", key).split("."))
        if "[" in key and tp is not None:  # an entry of a list
            tp, key = (typing.get_args(tp) or [None])[0], "every entry of " + re.sub(r"\[\d+\]", "", key)
        got = re.search(r"[Vv]alue '(.*)' of type", msg) or re.search(r"[Vv]alue '(.*?)'", msg)  # '{'a': 1}' whole
        if tp is not None and got:
            return f"{key} must be {kind_of(tp)}; got {got.group(1)!r}"
        single = re.match(r"Invalid value assigned: (\w+) is not a ListConfig", msg)
        if tp is not None and single:  # dims=3 for dims=[3]
            return f"{key} must be {kind_of(tp)}, written {key}=[a,b,...]; got one {single.group(1)}"
        return f"{key}: {msg}"
    options = getattr(err, "options", None)
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    missing = re.match(r"(?:In '[^']*': )?Could not find '([^']+)/([^'/]+)'", first)
    if missing:  # a config group's option mistyped: dataset=cifar1
        first = f"unknown {missing.group(1)} {missing.group(2)!r}"
    if first.startswith("Ambiguous value for argument"):  # key=a,b without -m
        first += "; a list is written key=[a,b], a sweep over a,b needs -m"
    if options:
        first = first.rstrip(".") + f"; allowed: {', '.join(options)}"
    if missing and missing.group(1) == "hydra/launcher" and missing.group(2) in _LAUNCHER_EXTRAS:
        first += f" (it comes with {_LAUNCHER_EXTRAS[missing.group(2)]})"
    return first


# Hydra launchers whose configs ship with an optional extra of this package (pyproject.toml)
_LAUNCHER_EXTRAS = {name: 'pip install -e ".[slurm]", or pip install hydra-submitit-launcher'
                    for name in ("submitit_slurm", "submitit_local")}


def _list_hint(override: str) -> str:
    """For a list of overrides written unquoted (osc study's ``overrides.teacher_student=[d=3]``,
    which the grammar cannot read: ``=`` inside a list), the same list quoted, as it must be."""
    key, _, value = override.partition("=")
    if not (value.startswith("[") and value.endswith("]") and "=" in value):
        return ""
    items = value[1:-1].split(",")
    if "[" in value[1:-1] or any("'" in i or '"' in i for i in items):  # nested or partly quoted: no guess
        return "each override in a list is quoted, 'key=value'; "
    quoted = ",".join(f"'{i.strip()}'" for i in items)
    return f"each override in a list is quoted: \"{key}=[{quoted}]\" (shell quotes around it); "


def check_overrides(schema: type, overrides) -> None:
    """The overrides as Hydra's grammar reads them, before Hydra composes: a boolean key takes
    ``true`` or ``false`` only (omegaconf would read ``no``, ``off``, ``0`` or ``y`` as
    booleans, which a user may not mean), and a config group one config's name (:func:`_check_group`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, parsed = OverridesParser.create(), []
    for override in overrides:
        try:
            parsed += parser.parse_overrides([override])
        except Exception as err:  # the grammar's message names no key: name the override
            raise UserError(f"cannot parse the override {override!r}: {one_line(err, schema)}; "
                            f"{_list_hint(override)}see https://hydra.cc/docs/advanced/override_grammar/basic/") from None
    parsed = [o for o in parsed if not o.key_or_group.startswith("hydra.")]
    for o in parsed:
        key = o.key_or_group.lstrip("+~")
        _check_group(schema, o, key)
        tp = schema_node(schema, key.split("."))
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if not (tp is bool or (typing.get_origin(tp) is typing.Union and args == [bool])) or o.is_delete():
            continue
        values = list(o.value().list) if o.is_sweep_override() and hasattr(o.value(), "list") else [o.value()]
        for v in values:
            if not isinstance(v, bool) and not (v is None and tp is not bool):
                raise UserError(f"{key} must be true or false; got {v!r}")


def _check_group(schema: type, o, key: str) -> None:
    """Refuse a config group given no config's name: null or a number (Hydra's refusal names no
    group) and, for the apps' own groups (``dataset``), which pick one config each, a list (Hydra
    would merge its configs, the last winning) or ``~`` (no dataset); an app without the group
    refuses it as an unknown key (Hydra: 'No match in the defaults list')."""
    own = (Path(CONFIG_DIR) / key).is_dir()
    if o.is_sweep_override() or not (own or "/" in key):  # hydra/launcher: Hydra's groups
        return
    if own and schema_node(schema, [key]) is None:
        raise UserError(f"unknown key {key!r}; allowed: {', '.join(allowed_keys(schema, []))}")
    if o.is_delete() and own:
        problem = "it cannot be removed: the app needs one of its configs"
    elif isinstance(o.value(), list) and own:
        problem = f"it takes one config's name, not a list (a sweep over several: -m {key}=a,b)"
    elif not o.is_delete() and not isinstance(o.value(), (str, list)):
        problem = "it takes one config's name"
    else:
        return
    with _hydra() as hydra:
        options = hydra.config_loader().get_group_options(key)
    if options:  # none: not a group (foo/bar=1), which Hydra refuses as an unknown key
        raise UserError(f"{o.input_line}: {key} is a config group: {problem}; allowed: {', '.join(options)}")


# --------------------------------------------------------------------------- composing


@contextlib.contextmanager
def _hydra():
    """Hydra's global state: a running app's, or, outside one, the apps' config dir's for a while."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield GlobalHydra.instance()
    else:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            yield GlobalHydra.instance()


def compose_raw(name: str, overrides: list[str], hydra_config: bool = False) -> DictConfig:
    from hydra import compose as hydra_compose

    with _hydra():
        return hydra_compose(config_name=name, overrides=list(overrides), return_hydra_config=hydra_config)


def compose(name: str, overrides: list[str] = ()) -> DictConfig:
    """App ``name``'s config (its YAML over its schema) with ``overrides``, inside a running
    Hydra app or outside one; a mistake is a one-line :class:`UserError`. Outside a running
    app, the composition of the config groups chosen (``dataset=...``, ``hydra/...``) is kept
    for the process and each call applies its value overrides to a copy (:func:`compose_each`):
    a command line composes its config two to four times, and Hydra takes ~0.2 s each."""
    return next(compose_each(name, [list(overrides)]))


def _compose_whole(name: str, overrides: list[str], schema: type) -> DictConfig:
    try:
        return compose_raw(name, list(overrides))
    except Exception as err:  # Hydra's composition errors: unknown key, wrong type, no such option
        raise UserError(one_line(err, schema)) from None


def _run_path(o) -> bool:
    """A plain string for one of the hydra keys that name a run's dir or job: Hydra's own
    settings, absent from the app's config and any string valid, so no composition needs it
    (each run of a test or a sweep sets its own dir: kept, no composition would be reused)."""
    return (o.package is None and o.key_or_group in ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir",
                                                      "hydra.job.name")
            and not o.is_sweep_override() and isinstance(o.value(), str))


# (app, working dir, group overrides) -> the composed config, for compose outside a running
# Hydra app: the config dir is the package's, which does not change while the process runs
_BASES: dict[tuple, DictConfig] = {}


def compose_each(name: str, jobs: Iterable[list[str]]) -> Iterator[DictConfig]:
    """``compose(name, job)`` for each job in turn, several times faster for many jobs that share
    their config-group overrides (a study's plan): Hydra composes each distinct set of
    group overrides (``dataset=...``, ``hydra/...``) once, and each job's value overrides
    are applied to a copy by Hydra's own rule for them
    (``ConfigLoaderImpl._apply_overrides_to_config``, what Hydra does after composing the
    defaults). A mistake is the same one-line UserError as a whole composition's. Inside a
    running Hydra app (whose search path may hold the user's config dirs) the compositions
    are kept for this call only, outside it for the process (``_BASES``)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    schema = load_app(name).schema
    try:  # a Hydra internal (1.3): where a release renames it, every job is composed whole
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        apply_values = ConfigLoaderImpl._apply_overrides_to_config
    except (ImportError, AttributeError):
        for job in jobs:
            check_overrides(schema, job)
            yield _compose_whole(name, list(job), schema)
        return
    parser = OverridesParser.create()
    bases = {} if GlobalHydra.instance().is_initialized() else _BASES
    for job in jobs:
        check_overrides(schema, job)  # also parses each override: a grammar error is one line there
        parsed = [o for o in parser.parse_overrides(list(job)) if not _run_path(o)]
        # (a sweep, key=a,b, is composed whole: Hydra's refusal outside -m is the one to give)
        group = [o for o in parsed if o.package is not None or o.is_sweep_override()
                 or o.key_or_group.split(".")[0].startswith("hydra")
                 or (Path(CONFIG_DIR) / o.key_or_group.lstrip("+~")).is_dir()]
        key = (name, str(Path.cwd()), tuple(o.input_line for o in group))
        if key not in bases:
            bases[key] = _compose_whole(name, list(key[2]), schema)
        cfg = copy.deepcopy(bases[key])
        try:
            apply_values([o for o in parsed if o not in group], cfg)
        except Exception as err:
            raise UserError(one_line(err, schema)) from None
        yield cfg


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
            raise UserError(one_line(err, schema)) from None
    cfg.check()
    return cfg
