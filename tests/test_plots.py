"""The tick helpers of plots.py: what a reader sees on an axis (labels drawn, not pixels)."""

import numpy as np
import pytest

from orthogonal_skip_connections.plots import (band, draw_morphed, grid_lines, integer_ticks, loglog_rates, plain_log_labels,
                                               plt)


def _labels(ax, which: str) -> list[tuple[float, str]]:
    """(position, text) of every labelled tick inside the view of ``ax``'s axis ``which``."""
    ax.figure.canvas.draw()
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = sorted(axis.get_view_interval())
    ticks = axis.get_major_ticks() + axis.get_minor_ticks()
    return [(t.get_loc(), t.label1.get_text()) for t in ticks
            if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi]


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("lo, hi", [(0.22, 0.9), (0.6, 1.9), (2.3, 2.5), (0.45, 2.3), (0.01, 0.5)])
def test_log_axis_labels_are_plain_numbers_at_their_ticks(lo, hi, sparse):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([lo, hi], [lo, hi])
    ax.set_yscale("log")
    plain_log_labels(ax, "y", sparse=sparse)
    labels = _labels(ax, "y")
    plt.close(fig)
    assert len(labels) >= 2, labels  # a reader can read the scale off the axis
    for loc, text in labels:  # a number, not 3 x 10^-1 mathtext, and the number of its tick
        assert float(text.replace("\N{MINUS SIGN}", "-")) == pytest.approx(loc, rel=1e-3)
    if sparse:
        assert len(labels) <= 5, labels  # a narrow panel's labels do not run together


def test_loglog_rates_ticks_counts_at_their_values():
    fig, ax = plt.subplots()
    ms = [2, 4, 8, 16, 32, 64]
    loglog_rates(ax, ms, {"a": [1.0 / m for m in ms]})
    labels = _labels(ax, "x")
    plt.close(fig)
    assert [t for _, t in labels] == [str(m) for m in ms]


def test_integer_ticks_never_label_a_fraction_of_an_epoch():
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [10, 40, 70])
    integer_ticks(ax.xaxis)
    locs = [loc for loc, _ in _labels(ax, "x")]
    plt.close(fig)
    assert locs and all(float(loc).is_integer() for loc in locs)


def test_draw_morphed_says_when_the_map_collapses_the_plane():
    lines = grid_lines([-1, -1], [1, 1], n_lines=5, n_points=10)
    fig, (ax0, ax1) = plt.subplots(1, 2)
    draw_morphed(ax0, np.zeros_like(lines))  # a zero skip: every point goes to 0
    draw_morphed(ax1, lines)
    collapsed, plain = [t.get_text() for t in ax0.texts], [t.get_text() for t in ax1.texts]
    plt.close(fig)
    assert any("one point" in t for t in collapsed) and not plain


def test_a_skip_variant_has_one_colour_in_every_figure():
    from orthogonal_skip_connections.plots import VARIANT_COLORS, variant_colors

    full = variant_colors(["identity", "zero", "fixed_orth", "learnable_orth/cayley", "learnable_orth/cayley/haar"])
    landscape = variant_colors(["zero", "identity", "learnable_orth/steepest"])
    two_stage = variant_colors(["two_stage", "identity", "orth_identity", "orth_haar"])
    assert full["identity"] == landscape["identity"] == two_stage["identity"] == "C0"
    assert full["zero"] == landscape["zero"]
    # the variants the table does not list take colours of their own, none of the table's
    others = [full["learnable_orth/cayley/haar"], two_stage["two_stage"], two_stage["orth_identity"],
              two_stage["orth_haar"]]
    assert not set(others) & set(VARIANT_COLORS.values()) and len(set(others[1:])) == 3
    assert len(set(VARIANT_COLORS.values())) == len(VARIANT_COLORS)
    # an unlisted variant keeps its colour whatever else a figure draws, and in whatever order (it
    # took the next free colour in order of appearance: two figures gave one arm two colours)
    haar = "learnable_orth/steepest/haar"
    alone = variant_colors([haar])[haar]
    assert variant_colors(["identity", haar])[haar] == variant_colors([haar, "zero", "fixed_orth"])[haar] == alone
    many = variant_colors([f"arm{i}" for i in range(8)])  # as many as the further set: no colour twice
    assert len(set(many.values())) == 8


@pytest.mark.parametrize("n", [1, 2, 5])
def test_pca_plane_is_a_plane_for_any_number_of_points(n):
    """orth_to_id's PCA picture with n_samples=2 (one test point) read a second principal
    direction that one point does not have: an IndexError traceback after training."""
    from orthogonal_skip_connections.plots import pca_plane

    X = np.random.default_rng(0).standard_normal((n, 3))
    mean, V = pca_plane(X)
    assert V.shape == (3, 2) and np.allclose(V.T @ V, np.eye(2)) and np.allclose(mean, X.mean(0))
    if n >= 2:  # the first axis is still the direction of largest spread
        top = np.linalg.svd(X - mean)[2][0]
        assert np.isclose(abs(V[:, 0] @ top), 1.0)


@pytest.mark.parametrize("log", [False, True])
def test_a_band_spans_the_sample_sd_over_seeds_the_tables_give(log):
    """band's shaded region is mean +- statistics.stdev (ddof=1) on a linear axis and
    gmean ×/÷ scipy.stats.gstd on a log one, the sds the report's tables and summaries give
    (a ddof=0 band was sqrt((n-1)/n) of it: 0.71x at two seeds); one seed draws no band."""
    import statistics

    import scipy.stats

    ys = np.array([[1.0, 10.0, 1e-3], [4.0, 20.0, 1e-1], [2.0, 15.0, 1e-2]])  # (seeds, x)
    x = np.arange(3)
    fig, ax = plt.subplots()
    line = band(ax, x, ys, log=log)
    (poly,) = ax.collections
    vertices = poly.get_paths()[0].vertices
    if log:
        mid, factor = scipy.stats.gmean(ys, axis=0), scipy.stats.gstd(ys, axis=0)
        lo, hi = mid / factor, mid * factor
    else:
        mid = ys.mean(0)
        sd = np.array([statistics.stdev(c) for c in ys.T])
        lo, hi = mid - sd, mid + sd
    np.testing.assert_allclose(line.get_ydata(), mid, rtol=1e-12)
    for k in range(3):  # the polygon's two vertices at x[k]: the band's bottom and top there
        at = np.sort(vertices[np.isclose(vertices[:, 0], x[k]), 1])
        np.testing.assert_allclose([at.min(), at.max()], [lo[k], hi[k]], rtol=1e-12)
    fig2, ax2 = plt.subplots()
    band(ax2, x, ys[:1], log=log)
    assert not ax2.collections
    plt.close(fig)
    plt.close(fig2)
