"""Hydra's options in an ``osc <app>`` call (``-m``, ``--cfg job``, ``--info``, ...), apart
from its ``key=value`` overrides: split from them and put first (:func:`options_first`), and
checked before Hydra runs (:func:`check_options`: one mode per call, no unknown option), so a
mistake is one line rather than Hydra's usage text or traceback; and the app's name as Hydra's
job name, among the overrides (:func:`with_job_name`)."""

from __future__ import annotations

from ..runs import UserError

__all__ = ["options_first", "split_options", "check_options", "job_name", "with_job_name"]

# Hydra's options that take a value (the next argument), and --info's optional one (one of its topics)
_VALUED = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
           "--experimental-rerun"}
_INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}

# Hydra's flags that each choose what the call does (its short name -> its long one): one per call
_MODES = {f: long for long, short in (("--run", "-r"), ("--multirun", "-m"), ("--cfg", "-c"), ("--info", "-i"),
                                      ("--shell-completion", "-sc")) for f in (long, short)}


def options_first(argv: list[str]) -> list[str]:
    """``argv`` with Hydra's options, each with its value, before the overrides: Hydra's argparse
    takes the overrides as one run of positionals, so ``a=1 -m b=2`` or ``a=1 --cfg job b=2``
    was its usage text and 'unrecognized arguments'."""
    options, overrides = split_options(argv)
    return options + overrides


def split_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra's options with their values, the overrides) of ``argv``."""
    options, overrides, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-"):
            takes = a in _VALUED or (a in ("--info", "-i") and i + 1 < len(argv) and argv[i + 1] in _INFO_TOPICS)
            options += argv[i:i + 2] if takes else [a]
            i += 2 if takes else 1
        else:
            overrides.append(a)
            i += 1
    return options, overrides


def check_options(flags: list[str], app_name: str) -> None:
    """Refuse (one line) two of Hydra's modes in one call (Hydra's refusal is a traceback) and an
    option Hydra does not take (its refusal is its whole usage text). ``flags``: the call's
    arguments that start with ``-``."""
    modes = sorted({_MODES[f.split("=")[0]] for f in flags if f.split("=")[0] in _MODES})
    if len(modes) > 1:
        raise UserError(f"{' and '.join(modes)} cannot be given together: Hydra takes one of "
                        f"{', '.join(sorted(set(_MODES.values())))}")
    unknown = [f for f in flags if not _hydra_flag(f)]
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r}; allowed: key=value overrides and Hydra's options "
                        f"(-m/--multirun, --cfg job|hydra|all, --info, ...); osc {app_name} --help lists the keys")


def _hydra_flag(flag: str) -> bool:
    """Whether Hydra's argparse takes ``flag`` (``--cfg=job`` too, and, as argparse does, a
    long option's unambiguous prefix)."""
    from hydra._internal.utils import get_args_parser

    name, known = flag.split("=")[0], get_args_parser()._option_string_actions
    return name in known or (name.startswith("--") and len([k for k in known if k.startswith(name)]) == 1)


def job_name(app_name: str, argv: list[str]) -> list[str]:
    return [] if any(a.startswith("hydra.job.name=") for a in argv) else [f"hydra.job.name={app_name}"]


def with_job_name(app_name: str, argv: list[str]) -> list[str]:
    """``argv`` with ``hydra.job.name=<app>`` next to its last override: Hydra's argparse
    takes the overrides as one run of positionals, so one appended after a flag
    (``seed=1 --cfg job``) would be refused as an unrecognized argument."""
    named = job_name(app_name, argv)
    last = max((i for i, a in enumerate(argv) if not a.startswith("-") and ("=" in a or a.startswith("~"))),
               default=len(argv) - 1)
    return [*argv[:last + 1], *named, *argv[last + 1:]]
