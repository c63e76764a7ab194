"""The one interval every table and verdict uses: the 95% Student-t interval of a mean over
seeds (independent runs), with the few values a sweep gives (2 to 8); the spread over
seeds every summary gives beside it, the sample standard deviation; and the one rule for an
arm that did not train (:func:`near_chance`), whose comparisons say nothing."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["geometric_interval", "geometric_spread", "seed_sd", "t_interval", "t_interval_within", "near_chance",
           "CHANCE_MARGIN"]

CHANCE_MARGIN = 2.0  # accuracy points: an arm whose mean ends this close to chance did not train


def near_chance(arms) -> tuple[list[str], str]:
    """Of ``arms``, (label, mean test accuracy in %, chance accuracy in %) each, the labels of
    those that ended within :data:`CHANCE_MARGIN` points of chance, and a clause saying so
    ("a, b ended within 2 points of chance (10%)"; each arm's chance where they differ); a NaN
    accuracy (no runs) is not judged. ([], '') for none."""
    idle = [(label, chance) for label, acc, chance in arms if not math.isnan(acc) and acc < chance + CHANCE_MARGIN]
    if not idle:
        return [], ""
    chances = {chance for _, chance in idle}
    if len(chances) == 1:
        return [label for label, _ in idle], (f"{', '.join(label for label, _ in idle)} ended within "
                                              f"{CHANCE_MARGIN:g} points of chance ({chances.pop():.3g}%)")
    return [label for label, _ in idle], (", ".join(f"{label} (chance {chance:.3g}%)" for label, chance in idle)
                                          + f" ended within {CHANCE_MARGIN:g} points of chance")


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
