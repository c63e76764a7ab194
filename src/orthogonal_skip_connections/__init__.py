"""orthogonal_skip_connections: a laboratory for skip connections in residual networks."""

from . import orthogonal
from .diagnostics import skip_diagnostics, summarize_skips
from .models import ResidualMLP, get_model
from .skips import OrthogonalUpkeep, make_skip, patch_skips, split_parameters

__version__ = "0.1.0"
__all__ = [
    "orthogonal",
    "make_skip",
    "patch_skips",
    "split_parameters",
    "OrthogonalUpkeep",
    "get_model",
    "ResidualMLP",
    "skip_diagnostics",
    "summarize_skips",
]
