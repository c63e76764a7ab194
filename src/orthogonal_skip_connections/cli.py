"""``osc <experiment> [hydra overrides]`` runs an app; ``osc list`` lists them."""

from __future__ import annotations

import importlib
import sys

# name -> (module under orthogonal_skip_connections.experiments, one-line description)
APPS: dict[str, tuple[str, str]] = {
    "run_experiments": ("run_experiments", "train an image classifier (CIFAR-10/100, digits) with any skip kind"),
    "theorem": ("theorem", "build the decomposition theorem's construction numerically; measure its O(log m / m) claims"),
    "teacher_student": ("teacher_student", "Li & Yuan teacher-student convergence study of the one-block ResNet family, all seeds at once"),
}


def usage() -> str:
    width = max(map(len, APPS))
    lines = ["usage: osc <experiment> [hydra overrides]   |   osc list", "", "experiments:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in APPS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "list":
        print(usage())
        return 0
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
