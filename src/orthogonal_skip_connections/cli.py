"""``osc <experiment> [hydra overrides]`` runs an app; ``osc list`` lists them (without
importing torch or Hydra: the registry is plain data)."""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path

from .experiments import APPS, load_app


def usage() -> str:
    width = max(map(len, APPS))
    lines = ["usage: osc <experiment> [hydra overrides]   |   osc report DIR... [--out OUT]   |   osc list"
             "   |   osc --version",
             "", "experiments:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in APPS.items()]
    lines += ["", f"  {'report':<{width}}  build report.md/.html, results.csv and comparisons.csv from run dirs",
              "", "osc <experiment> --help lists its options with their defaults, meanings and allowed values."]
    return "\n".join(lines)


def report(argv: list[str]) -> int:
    """``osc report DIR... [--out OUT]``: the study's report from run dirs made earlier
    (single runs, Hydra multirun sweep dirs, several sweeps). OUT defaults to DIR/report."""
    import argparse

    from .report import build_report
    from .runs import UserError

    class OneLineParser(argparse.ArgumentParser):
        def error(self, message):  # argparse's own: the usage, then the message, on two lines
            raise UserError(f"osc report: {message}; usage: osc report DIR... [--out OUT] [--title TITLE]")

    parser = OneLineParser(prog="osc report", description=report.__doc__)
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs, sweep dirs or study dirs")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default: first DIR/report)")
    parser.add_argument("--title", default="Do orthogonal skips help?", help="the report's heading (default: %(default)s)")
    try:
        args = parser.parse_args(argv)
        for d in args.dirs:  # before the default --out under the first: "<file>/report" named no --out given
            if d.is_file():
                raise UserError(f"{d} is a file; give run dirs, or dirs that hold them")
        result = build_report(args.dirs, args.out or args.dirs[0] / "report", title=args.title)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    others = f", {len(result['others'])} other app run(s)" if result["others"] else ""
    print(f"{len(result['rows'])} classifier runs{others}; report: {result['report'].resolve()} "
          f"(also {', '.join(result['written'])})")
    return 0


def version() -> str:
    """This package's version and those of what it runs on, for a bug report (read from the
    installed packages' metadata: no torch import)."""
    import platform
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    from . import __version__

    def of(package: str) -> str:
        try:
            return installed(package)
        except PackageNotFoundError:
            return "not installed"

    deps = ", ".join(f"{p} {of(p)}" for p in ("torch", "torchvision", "hydra-core", "omegaconf"))
    return f"osc {__version__} (Python {platform.python_version()}, {deps})"


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:  # `osc list | head`: the reader left; no traceback, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the app's own handling (importing torch, checking the config)
        print("interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("--version", "-V"):
        print(version())
        return 0
    if argv[0] == "list":
        print(usage())
        return 0
    if argv[0] == "report":
        return report(argv[1:])
    name = argv[0]
    if name not in APPS:
        commands = [*APPS, "report", "list"]
        close = difflib.get_close_matches(name, commands, n=1)  # `osc reprot`, `osc run_experiment`
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"error: unknown experiment {name!r}{hint}; allowed: {', '.join(APPS)}, or report DIR..., list",
              file=sys.stderr)
        return 2
    return load_app(name)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
