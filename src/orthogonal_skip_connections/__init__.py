"""orthogonal_skip_connections: a laboratory for skip connections in residual networks.

Layers (each imports only from those above it in this list; tests/test_layers.py checks):

0. runs.py       errors (UserError), atomic files, progress bars, devices: used by every layer
1. maths/        pure tensor maths on O(n), the decomposition theorem's construction
2. skips/, models/, data/   the skip contract and kinds, orthogonal constraints, models, datasets
3. optim.py      the one optimiser (retraction inside step) and the lr schedule
4. train/, diagnostics.py, analysis/, landscape.py   training loops; measurements of trained models
5. rundir.py, report/, plots.py   run dirs (locks, provenance, resume); reports and figures
6. experiments/  thin Hydra apps (the only place Hydra and omegaconf are imported)
7. cli.py        ``osc``
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the public names, imported on first use (``osc list`` needs no torch)
    from .diagnostics import orthogonal_weights, skip_diagnostics, summarize_skips
    from .maths import orthogonal
    from .models import ResidualMLP, get_model
    from .optim import optimizer
    from .skips import baked_copy, make_skip, orthogonal_, patch_skips, project_orthogonal_, skip

__version__ = "0.1.0"
_LAZY = {
    "orthogonal": ("maths", "orthogonal"),
    "optimizer": ("optim", "optimizer"),
    "orthogonal_": ("skips", "orthogonal_"),
    "project_orthogonal_": ("skips", "project_orthogonal_"),
    "skip": ("skips", "skip"),
    "make_skip": ("skips", "make_skip"),
    "patch_skips": ("skips", "patch_skips"),
    "baked_copy": ("skips", "baked_copy"),
    "get_model": ("models", "get_model"),
    "ResidualMLP": ("models", "ResidualMLP"),
    "skip_diagnostics": ("diagnostics", "skip_diagnostics"),
    "summarize_skips": ("diagnostics", "summarize_skips"),
    "orthogonal_weights": ("diagnostics", "orthogonal_weights"),
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    """``osc.skip``, ``osc.optimizer``, ...: imported from their module when first asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _LAZY[name]
    parent = importlib.import_module(f".{module}", __name__)
    # an attribute of a module, or a submodule (``orthogonal`` of maths/, which its package does not import)
    value = getattr(parent, attr) if hasattr(parent, attr) else importlib.import_module(f".{attr}", parent.__name__)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))  # a name once used is in both
