"""Figures from saved results. Every function takes arrays or loaded results, draws, and
writes a PNG; none trains anything. Uses matplotlib's non-interactive Agg backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plt", "savefig", "band"]


def savefig(fig, path: Path, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG (parent directories created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def band(ax, x, ys, label=None, color=None, log=False, alpha=0.25):
    """Mean over seeds with a band: ys has shape (seeds, len(x)).

    The band is mean +- std on a linear axis, and the geometric mean times/divided by the
    geometric std on a log axis (so it never crosses zero)."""
    ys = np.asarray(ys, dtype=float)
    x = np.asarray(x)
    if log:
        logs = np.log(np.clip(ys, 1e-300, None))
        mid, sd = np.exp(logs.mean(0)), logs.std(0)
        lo, hi = mid / np.exp(sd), mid * np.exp(sd)
        ax.set_yscale("log")
    else:
        mid, sd = ys.mean(0), ys.std(0)
        lo, hi = mid - sd, mid + sd
    (line,) = ax.plot(x, mid, label=label, color=color)
    if ys.shape[0] > 1:
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=alpha, linewidth=0)
    return line
