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


def panels_over_steps(steps_by_panel, series_by_panel, path, ylabel, log=True, title=None, ncols=3):
    """One panel per key (e.g. per architecture), several curves per panel, each curve a
    mean over seeds with a band (:func:`band`).

    steps_by_panel: {panel: (T,)}; series_by_panel: {panel: {label: (seeds, T)}}.
    Non-positive values are clipped on a log axis. Returns the PNG path."""
    names = list(series_by_panel)
    ncols = max(1, min(ncols, len(names)))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for label, ys in series_by_panel[name].items():
            band(ax, steps_by_panel[name], ys, label=label, log=log)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return savefig(fig, path)


__all__ += ["loglog_rates"]


def loglog_rates(ax, x, series: dict, reference=None, reference_label=None, styles: dict | None = None):
    """Log-log lines of quantities against x (e.g. the number of blocks m).

    ``series``: label -> values (None, zero or negative values are left out: a log axis
    cannot show them). ``reference``: values of a reference rate at x, drawn dashed in
    grey. ``styles``: label -> extra ``ax.plot`` keywords."""
    x = np.asarray(x, dtype=float)
    styles = styles or {}
    for label, ys in series.items():
        ys = np.asarray([np.nan if y is None else y for y in ys], dtype=float)
        keep = np.isfinite(ys) & (ys > 0)
        if keep.any():
            ax.plot(x[keep], ys[keep], marker="o", markersize=3, label=label, **styles.get(label, {}))
    if reference is not None:
        ref = np.asarray(reference, dtype=float)
        keep = np.isfinite(ref) & (ref > 0)
        ax.plot(x[keep], ref[keep], "--", color="0.5", label=reference_label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.grid(True, which="both", linestyle=":", linewidth=0.5)
    return ax
