"""The one interval every table and verdict uses: the 95% Student-t interval of a mean over
seeds (independent runs), with the few values a sweep gives (2 to 8); and the spread over
seeds every summary gives beside it, the sample standard deviation."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["seed_sd", "t_interval"]


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


def seed_sd(x) -> float:
    """The sample standard deviation of ``x`` over seeds, ddof=1 (Bessel's correction: the
    square root of the unbiased variance, numpy.std's ``ddof`` note), the sd that
    :func:`t_interval` scales; nan for fewer than two values."""
    x = np.asarray(x, dtype=float).ravel()
    return float(x.std(ddof=1)) if len(x) > 1 else math.nan
