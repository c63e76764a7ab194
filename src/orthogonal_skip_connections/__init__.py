"""orthogonal_skip_connections: a laboratory for skip connections in residual networks.

Layers (each imports only from those above it in this list; tests/test_layers.py checks):

1. maths/        pure tensor maths on O(n), the decomposition theorem's construction
2. skips/, models/, data/   the skip contract and kinds, orthogonal constraints, models, datasets
3. optim.py      the one optimiser (retraction inside step) and the lr schedule
4. train/, diagnostics.py, analysis/, landscape.py   training loops; measurements of trained models
5. runs.py, report/, plots.py   run dirs, files, progress; reports and figures
6. experiments/  thin Hydra apps (the only place Hydra and omegaconf are imported)
7. cli.py        ``osc``
"""

from .diagnostics import skip_diagnostics, summarize_skips
from .maths import orthogonal
from .models import ResidualMLP, get_model
from .optim import optimizer
from .skips import make_skip, orthogonal_, patch_skips, skip

__version__ = "0.1.0"
__all__ = [
    "orthogonal",
    "optimizer",
    "orthogonal_",
    "skip",
    "make_skip",
    "patch_skips",
    "get_model",
    "ResidualMLP",
    "skip_diagnostics",
    "summarize_skips",
]
