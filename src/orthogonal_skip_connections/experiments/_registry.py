"""The registry of apps, apart from the app machinery so that ``osc list`` and ``osc --help``
print it without importing torch or Hydra (a second or more of start-up)."""

from __future__ import annotations

import importlib

__all__ = ["APPS", "load_app"]

# name -> (module under orthogonal_skip_connections.experiments, one-line description)
APPS: dict[str, tuple[str, str]] = {
    "study": ("study", "the main job: a small complete study of skip kinds and its report (scale=smoke|default|full)"),
    "run_experiments": ("run_experiments", "train an image classifier (CIFAR-10/100, digits) with any skip kind"),
    "theorem": ("theorem", "build the decomposition theorem's construction numerically; measure its O(log m / m) claims"),
    "teacher_student": ("teacher_student", "Li & Yuan teacher-student convergence study of the one-block ResNet family, all seeds at once"),
    "orth_residual_synthetic_data": ("orth_residual_synthetic_data", "2-D residual classifiers per skip kind: grids morphed by each block's skip, branch and whole map; decision regions"),
    "orth_to_id": ("orth_to_id", "does training bring orthogonal skips W_i towards I as depth grows? ||W_i - I|| vs branch Lipschitz constants over training"),
    "loss_landscape": ("loss_landscape", "loss landscapes (Li et al. 2018) and Hessian sharpness of trained classifiers per skip kind; trains the default resnet56/digits runs when missing"),
    "two_stage": ("two_stage", "identity skips, then each swapped for its block's Procrustes-orthogonal fit and fine-tuned on O(n), vs identity or orthogonal throughout"),
    "construction_validity": ("construction_validity", "Procrustes fit of each trained block: is it close to an orthogonal map? over (dimension, classes, depth)"),
}


def load_app(name: str):
    """The :class:`~._app.App` of app ``name`` (its module's ``main``)."""
    if name not in APPS:
        from ..runs import UserError

        raise UserError(f"unknown experiment {name!r}; allowed: {', '.join(APPS)}")
    return importlib.import_module(f"{__package__}.{APPS[name][0]}").main
