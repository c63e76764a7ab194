"""``osc <experiment> [hydra overrides]`` runs an app; ``osc list`` lists them."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# name -> (module under orthogonal_skip_connections.experiments, one-line description)
APPS: dict[str, tuple[str, str]] = {
    "study": ("study", "the main job: a small complete study of skip kinds and its report (scale=smoke|default|full)"),
    "run_experiments": ("run_experiments", "train an image classifier (CIFAR-10/100, digits) with any skip kind"),
    "theorem": ("theorem", "build the decomposition theorem's construction numerically; measure its O(log m / m) claims"),
    "teacher_student": ("teacher_student", "Li & Yuan teacher-student convergence study of the one-block ResNet family, all seeds at once"),
    "orth_residual_synthetic_data": ("orth_residual_synthetic_data", "2-D residual classifiers per skip kind: grids morphed by each block's skip, branch and whole map; decision regions"),
    "orth_to_id": ("orth_to_id", "do trained orthogonal skips W_i approach I as depth grows? ||W_i - I|| vs branch Lipschitz constants over training"),
    "construction_validity": ("construction_validity", "Procrustes fit of each trained block: is it close to an orthogonal map? over (dimension, classes, depth)"),
}


def usage() -> str:
    width = max(map(len, APPS))
    lines = ["usage: osc <experiment> [hydra overrides]   |   osc report DIR... [--out OUT]   |   osc list",
             "", "experiments:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in APPS.items()]
    lines += ["", f"  {'report':<{width}}  build report.md/.html and results.csv from existing run dirs"]
    return "\n".join(lines)


def report(argv: list[str]) -> int:
    """``osc report DIR... [--out OUT]``: the study's report from run dirs made earlier
    (single runs, Hydra multirun sweep dirs, several sweeps). OUT defaults to DIR/report."""
    import argparse

    from .report import build_report

    parser = argparse.ArgumentParser(prog="osc report", description=report.__doc__)
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs, sweep dirs or study dirs")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default: first DIR/report)")
    parser.add_argument("--title", default="Do orthogonal skips help?")
    args = parser.parse_args(argv)
    out = args.out or args.dirs[0] / "report"
    try:
        result = build_report(args.dirs, out, title=args.title)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(result['rows'])} classifier runs; report: {result['report'].resolve()} (also report.html, results.csv)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "list":
        print(usage())
        return 0
    if argv[0] == "report":
        return report(argv[1:])
    name = argv[0]
    if name not in APPS:
        print(f"error: unknown experiment {name!r}; allowed: {', '.join(APPS)} (or `osc list`)", file=sys.stderr)
        return 2
    module = importlib.import_module(f"orthogonal_skip_connections.experiments.{APPS[name][0]}")
    sys.argv = [f"osc {name}", *argv[1:]]  # Hydra parses sys.argv
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
