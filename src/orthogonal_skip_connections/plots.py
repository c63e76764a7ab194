"""Figures from saved results. Every function takes arrays or loaded results, draws, and
writes a PNG; none trains anything. Uses matplotlib's non-interactive Agg backend."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plt", "savefig", "band", "plain_log_labels", "one_two_five_ticks", "ticks_at", "integer_ticks",
           "shared_legend"]


def savefig(fig, path: Path, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG (parent directories created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


class _PlainLogFormatter(matplotlib.ticker.LogFormatterSciNotation):
    """matplotlib's own choice of which log-axis ticks to label, each written as a plain
    number (0.3, 2, 40) from 1e-3 to 1e4 instead of 3 x 10^-1; beyond that range in powers of 10."""

    def __call__(self, x, pos=None):
        text = super().__call__(x, pos)
        if text and 1e-3 <= abs(x) < 1e4:
            return self.fix_minus(f"{x:.4g}")
        return text


class _SparseLogLocator(matplotlib.ticker.Locator):
    """Few ticks on a log axis: the sparsest of powers of 10, 1-2-5 and 1-2-3-5 x 10^k that
    puts two in view, else a few round linear values (matplotlib's LogLocator falls back to
    a linear locator's many ticks there)."""

    def __call__(self):
        return self.tick_values(*self.axis.get_view_interval())

    def tick_values(self, vmin, vmax):
        vmin, vmax = sorted((max(vmin, 1e-300), max(vmax, 1e-300)))
        decades = range(math.floor(math.log10(vmin)), math.ceil(math.log10(vmax)) + 1)
        for subs in ((1,), (1, 2, 5), (1, 2, 3, 5)):
            inside = [s * 10.0 ** k for k in decades for s in subs if vmin <= s * 10.0 ** k <= vmax]
            if len(inside) >= 2:
                return inside
        return [t for t in matplotlib.ticker.MaxNLocator(4).tick_values(vmin, vmax) if vmin <= t <= vmax]


def plain_log_labels(ax, which: str = "y", sparse: bool = False) -> None:
    """Plain-number tick labels on the log axes ``which`` ("x", "y" or "xy") of ``ax`` (call
    after the scale is set: setting a scale resets the formatters). ``sparse``: labels at
    1, 2 and 5 x 10^k only, for a short axis (matplotlib labels 0.3, 0.4, ..., 0.9 on one
    under a decade long, which run together on a narrow panel)."""
    for name in which:
        axis = ax.xaxis if name == "x" else ax.yaxis
        if axis.get_scale() != "log":
            continue
        if sparse:
            axis.set_major_locator(_SparseLogLocator())
            axis.set_major_formatter(_PlainLogFormatter(minor_thresholds=(np.inf, np.inf)))
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            axis.set_major_formatter(_PlainLogFormatter())
            axis.set_minor_formatter(_PlainLogFormatter())


def ticks_at(axis, values) -> None:
    """Ticks at exactly ``values`` (e.g. the depths a sweep ran), labelled as plain numbers,
    no minor ticks: for a log axis over a few powers of 2, where matplotlib would write 2^1 or
    crowd 2 x 10^0, 3 x 10^0, ... together."""
    values = sorted(set(float(v) for v in values))
    axis.set_ticks(values, labels=[f"{v:g}" for v in values])
    axis.set_minor_locator(matplotlib.ticker.NullLocator())


def one_two_five_ticks(axis) -> None:
    """Labelled ticks at 1, 2 and 5 x 10^k on a log axis spanning at most 3 powers of ten
    (at 10^k only beyond that): losses from 0.19 to 0.56 read against 0.2 and 0.5, not
    between unlabelled ticks at 1 and 10 (where :func:`plain_log_labels`' ``sparse`` keeps
    the powers of ten once two are in view). Call after the limits are final."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = sorted(axis.get_view_interval())
    subs = (1.0, 2.0, 5.0) if hi / max(lo, 1e-300) <= 1e3 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def integer_ticks(axis) -> None:
    """Ticks at whole numbers only (epochs), never at 1.25."""
    axis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def shared_legend(fig, ax, ncols: int | None = None, loc: str = "outside lower center", **kwargs):
    """One legend for the whole figure, from ``ax``'s labelled artists, outside every panel
    (``loc`` "outside ...": the figure needs ``layout="constrained"``), for figures whose
    panels all draw the same series."""
    handles, labels = ax.get_legend_handles_labels()
    return fig.legend(handles, labels, loc=loc, ncols=ncols or min(len(labels), 5), fontsize="small", **kwargs)


# One colour per skip variant (run_experiments' ``variant`` label) in every figure of a report:
# identity the blue of the accuracy curves, zero orange, ... The variants not listed (a Haar start,
# two_stage's arms) take the colours after them in turn (:func:`variant_colors`).
VARIANT_COLORS = {
    "identity": "C0", "zero": "C1", "fixed_orth": "C2", "learnable_orth/cayley": "C3",
    "learnable_orth/steepest": "C4", "linear": "C5", "scalar": "C6", "idempotent": "C7", "random": "C8",
    "learnable_orth/exp": "C9", "learnable_orth/svd": "#393b79", "learnable_orth/qr": "#637939",
    "learnable_orth/newton_schulz": "#8c6d31", "learnable_orth/householder": "#7b4173",
}
_MORE_COLORS = ("#843c39", "#5254a3", "#bd9e39", "#ad494a", "#a55194", "#6b6ecf", "#8ca252", "#e7969c")


def variant_colors(variants) -> dict[str, str]:
    """``{variant: colour}`` for ``variants``: :data:`VARIANT_COLORS`' colour for the variants it
    lists; for the others a colour of a further set chosen by the variant's name (a stable
    hash), so that it keeps its colour from one figure to the next, else the next one no other
    variant of these has (the set cycles past its 8 colours)."""
    import zlib

    variants = list(dict.fromkeys(variants))
    out = {v: VARIANT_COLORS[v] for v in variants if v in VARIANT_COLORS}
    used = set()
    for v in variants:
        if v in out:
            continue
        start = zlib.crc32(v.encode())
        ring = [_MORE_COLORS[(start + k) % len(_MORE_COLORS)] for k in range(len(_MORE_COLORS))]
        out[v] = next((c for c in ring if c not in used), ring[0])
        used.add(out[v])
    return {v: out[v] for v in variants}


__all__ += ["VARIANT_COLORS", "variant_colors"]


def band(ax, x, ys, label=None, color=None, log=False, alpha=0.25, **line_kw):
    """Mean over seeds with a band: ys has shape (seeds, len(x)).

    The band is mean +- the sample sd over seeds on a linear axis, and the geometric mean
    times/divided by the geometric sd on a log axis (so it never crosses zero): the sds the
    tables give (:mod:`.analysis.stats`); one seed, or ``alpha=0``: no band.
    ``line_kw``: more ``ax.plot`` keywords for the mean's line (linestyle, linewidth, ...)."""
    from .analysis.stats import geometric_spread, seed_sd

    ys = np.asarray(ys, dtype=float)
    x = np.asarray(x)
    if log:
        mid, factor = geometric_spread(ys, axis=0)
        lo, hi = mid / factor, mid * factor
        ax.set_yscale("log")
    else:
        mid, sd = ys.mean(0), seed_sd(ys, axis=0)
        lo, hi = mid - sd, mid + sd
    (line,) = ax.plot(x, mid, label=label, color=color, **line_kw)
    if ys.shape[0] > 1 and alpha > 0:
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=alpha, linewidth=0)
    return line


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
    if len(x) <= 12 and np.all(x == np.round(x)):  # counts (blocks m): ticks at them, 2 4 8 rather than 2 x 10^0
        ticks_at(ax.xaxis, x)
    else:
        plain_log_labels(ax, "x")
    plain_log_labels(ax, "y")
    ax.grid(True, which="both", linestyle=":", linewidth=0.5)
    return ax


# --------------------------------------------------------------------------- 2-D pictures
# Geometry for pictures of maps R^2 -> R^2 and of decision regions: the app evaluates its
# model on the points these return, these draw the results.

__all__ += ["padded_box", "plane_grid", "grid_lines", "draw_morphed", "decision_regions", "pca_plane",
            "block_curves", "block_colorbar", "class_legend"]

CLASS_COLORS = ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink",
                "tab:gray", "tab:olive", "tab:cyan")


def padded_box(P, pad: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box (lo (2,), hi (2,)) of points P (N, 2), widened by ``pad`` of its size."""
    P = np.asarray(P, dtype=float)
    lo, hi = P.min(0), P.max(0)
    span = np.maximum(hi - lo, 1e-6)
    return lo - pad * span, hi + pad * span


def plane_grid(lo, hi, n: int = 150) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An n x n grid over the box [lo, hi]: xx, yy (n, n) and the points (n*n, 2)."""
    xx, yy = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n))
    return xx, yy, np.stack([xx.ravel(), yy.ravel()], axis=1)


def grid_lines(lo, hi, n_lines: int = 15, n_points: int = 60) -> np.ndarray:
    """The lines of a square grid over [lo, hi]: (2 n_lines, n_points, 2), the first
    n_lines horizontal, the rest vertical; each line sampled at n_points points, so its
    image under a non-linear map is drawn as a curve."""
    t = np.linspace(0.0, 1.0, n_points)
    levels = np.linspace(0.0, 1.0, n_lines)
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    horiz = np.stack([np.broadcast_to(t, (n_lines, n_points)), np.broadcast_to(levels[:, None], (n_lines, n_points))], -1)
    vert = horiz[..., ::-1]
    return lo + np.concatenate([horiz, vert]) * (hi - lo)


def draw_morphed(ax, lines, points=None, labels=None, title=None):
    """Curves ``lines`` (K, P, 2) (a grid's image under a map) and, optionally, the image
    ``points`` (N, 2) of the data coloured by class ``labels`` (N,)."""
    lines = np.asarray(lines)
    K = len(lines)
    for k, line in enumerate(lines):
        ax.plot(line[:, 0], line[:, 1], color="0.35" if k < K // 2 else "0.6", linewidth=0.6)
    if points is not None:
        points, labels = np.asarray(points), np.asarray(labels)
        for c in np.unique(labels):
            pts = points[labels == c]
            ax.scatter(pts[:, 0], pts[:, 1], s=3, color=CLASS_COLORS[int(c) % len(CLASS_COLORS)], alpha=0.6)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xticks([])
    ax.set_yticks([])
    flat = lines.reshape(-1, 2)
    if np.ptp(flat, axis=0).max() <= 1e-6 * (1.0 + np.abs(flat).max()):  # e.g. a zero skip: one dot, say why
        x0, y0 = flat.mean(0)
        ax.text(0.5, 0.35, f"the whole plane maps to\none point ({x0:.2g}, {y0:.2g})", transform=ax.transAxes,
                ha="center", va="top", fontsize=7, color="0.3")
    if title:
        ax.set_title(title, fontsize=8)


def decision_regions(ax, xx, yy, predicted, X=None, y=None, num_classes: int = 2, title=None):
    """Filled regions of the predicted class ``predicted`` (n, n) on the grid (xx, yy),
    with the points X (N, 2) coloured by their class y on top."""
    from matplotlib.colors import ListedColormap

    colors = [CLASS_COLORS[c % len(CLASS_COLORS)] for c in range(num_classes)]
    ax.contourf(xx, yy, np.asarray(predicted), levels=np.arange(num_classes + 1) - 0.5,
                cmap=ListedColormap(colors), alpha=0.25)
    if X is not None:
        X, y = np.asarray(X), np.asarray(y)
        for c in range(num_classes):
            pts = X[y == c]
            ax.scatter(pts[:, 0], pts[:, 1], s=4, color=colors[c], edgecolors="none")
    ax.set_xlim(xx.min(), xx.max())
    ax.set_ylim(yy.min(), yy.max())
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def class_legend(fig, num_classes: int, **kwargs):
    """One legend for :func:`decision_regions`' class colours (class 0 .. num_classes - 1)."""
    from matplotlib.patches import Patch

    handles = [Patch(color=CLASS_COLORS[c % len(CLASS_COLORS)], label=f"class {c}") for c in range(num_classes)]
    return fig.legend(handles=handles, fontsize="small", title="colour: class (region: predicted, point: true)",
                      title_fontsize="small", **kwargs)


def pca_plane(X) -> tuple[np.ndarray, np.ndarray]:
    """The plane of the first two principal components of X (N, d), d >= 2: the mean
    (d,) and an orthonormal basis V (d, 2). Coordinates are (X - mean) @ V; a point
    (a, b) of the plane is mean + a V[:, 0] + b V[:, 1] in R^d. Fewer than two points span
    fewer than two directions: the basis is completed with orthonormal ones (a test set of
    one point, ``n_samples=2``, still gets its picture)."""
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 2:
        raise ValueError(f"a PCA plane needs points in R^d with d >= 2; got shape {X.shape}")
    mean = X.mean(0)
    _, _, Vt = np.linalg.svd(X - mean, full_matrices=False)  # (min(N, d), d)
    if Vt.shape[0] < 2:
        Q, _ = np.linalg.qr(np.concatenate([Vt.T, np.eye(X.shape[1])], axis=1))  # (d, d), Q[:, 0] = +-Vt[0]
        return mean, Q[:, :2]
    return mean, Vt[:2].T


def block_curves(ax, x, ys, log=False, cmap: str = "viridis"):
    """One line per block, its mean over seeds (geometric on a log axis), coloured from the
    first block (dark) to the last (light), and in black the mean over blocks with its band
    over seeds (:func:`band`): ys has shape (seeds, len(x), blocks). Eight bands, one per
    block, would pile into one smear; the lines show the blocks, the one band the seeds.
    Returns the colour scale of the blocks, for :func:`block_colorbar`."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize

    ys = np.asarray(ys, dtype=float)
    L = ys.shape[-1]
    colors = plt.get_cmap(cmap)(np.linspace(0.0, 0.9, max(L, 1)))
    logs = np.log(np.clip(ys, 1e-300, None)) if log else None
    for i in range(L):
        mid = np.exp(logs[..., i].mean(0)) if log else ys[..., i].mean(0)
        ax.plot(x, mid, color=colors[i], linewidth=1)
    over_blocks = np.exp(logs.mean(-1)) if log else ys.mean(-1)  # (seeds, len(x))
    band(ax, x, over_blocks, color="black", log=log, alpha=0.15, linewidth=2, label="mean over blocks")
    ax.grid(True, which="both", alpha=0.3)
    return ScalarMappable(Normalize(0.5, L + 0.5), ListedColormap(colors))  # one colour per block


def block_colorbar(fig, scale, axes) -> None:
    """A colour bar beside ``axes`` naming the blocks of :func:`block_curves` (1 .. L)."""
    L = scale.cmap.N
    bar = fig.colorbar(scale, ax=axes, fraction=0.02, pad=0.01)
    bar.set_ticks(np.unique(np.linspace(1, L, min(L, 8)).round()))
    bar.set_label("block i", fontsize="small")


