"""The one interval every table and verdict uses: the 95% Student-t interval of a mean over
seeds (independent runs), with the few values a sweep gives (2 to 8); and the spread over
seeds every summary gives beside it, the sample standard deviation."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["geometric_interval", "geometric_spread", "seed_sd", "t_interval", "t_interval_within"]


def t_interval(x) -> tuple[float, float, float]:
    """(mean, low, high) of the 95% Student-t interval of the mean of ``x`` (None entries left
    out: a run without the value); low = high = nan for fewer than two values (all three nan
    for none), low = high = mean when the values do not spread."""
    from scipy import stats

    x = np.asarray([v for v in x if v is not None], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def geometric_interval(x) -> tuple[float, float, float]:
    """(geometric mean, low, high): :func:`t_interval` of log x, mapped back by exp (None
    entries left out). For what spans decades across seeds (sharpness, a loss after a swap),
    where an arithmetic interval runs below 0: this one is the geometric mean times/divided by
    one factor. All nan unless every value is finite and > 0 (a log of 0, inf or NaN is none)."""
    v = [float(x_) for x_ in x if x_ is not None]
    if not v or not all(math.isfinite(x_) and x_ > 0 for x_ in v):
        return math.nan, math.nan, math.nan
    m, lo, hi = t_interval(np.log(v))
    return math.exp(m), math.exp(lo), math.exp(hi)


def t_interval_within(x, low: float = -math.inf, high: float = math.inf):
    """(mean, low, high, (cut_low, cut_high)): :func:`t_interval` cut to the values' own range
    [``low``, ``high``] (an accuracy within [0, 100], a distance >= 0), with which ends were
    cut, for a table to mark (report.classification.interval's †). NaN ends stay NaN."""
    mean, lo, hi = t_interval(x)
    cut = (bool(lo < low), bool(hi > high))
    return mean, max(lo, low) if cut[0] else lo, min(hi, high) if cut[1] else hi, cut


def seed_sd(x, axis: int | None = None):
    """The sample standard deviation of ``x`` over seeds, ddof=1 (Bessel's correction: the
    square root of the unbiased variance, numpy.std's ``ddof`` note), the sd that
    :func:`t_interval` scales; nan for fewer than two values. ``axis=None``: over all of ``x``,
    a float; else over that axis (the seeds'), an array: every band and table gives this sd."""
    x = np.asarray(x, dtype=float)
    if axis is None:
        x = x.ravel()
        return float(x.std(ddof=1)) if len(x) > 1 else math.nan
    if x.shape[axis] < 2:
        return np.full(np.delete(x.shape, axis), math.nan)
    return x.std(axis=axis, ddof=1)


def geometric_spread(x, axis: int | None = None):
    """(geometric mean, geometric standard deviation) of positive ``x`` over seeds: exp of the
    mean and of :func:`seed_sd` of log x (Kirkwood 1979; scipy.stats.gstd's ddof=1), the
    factor ×/÷ which a log axis' band spans; gsd nan for fewer than two values. Values below
    1e-300 count as 1e-300 (a loss of exactly 0 has no logarithm)."""
    logs = np.log(np.clip(np.asarray(x, dtype=float), 1e-300, None))
    mean = np.exp(logs.mean(axis=axis))
    sd = np.exp(seed_sd(logs, axis))
    return (float(mean), float(sd)) if axis is None else (mean, sd)
