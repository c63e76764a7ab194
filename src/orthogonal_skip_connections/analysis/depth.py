"""Does training bring a residual net's skips W_i towards I, the more so the deeper the net
(orth_to_id)? Per-block measurements of a seed stack, the per-depth table and the
per-(dataset, d) answer. The theorem's construction puts ||I - W_i|| at O(log m / m) (paper
Theorem 1, after Bartlett, Evans & Long 2018, arXiv 1804.05012); a trained net is compared
with that rate only through what training did: the distance moved towards I (start - end)
and the part of the start distance left (end / start), each with its spread over seeds. A
depth trend of the end alone could come from the random (Haar) starting points."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import spearmanr

from ..diagnostics import branch_lipschitz_bounds, branch_lipschitz_empirical, skip_matrices
from ..maths import construction as cons
from ..maths import orthogonal as orth
from ..models.stack import SeedStack
from .stats import seed_sd, t_interval

__all__ = ["measure_blocks", "by_depth", "corrected_distance", "answer", "verdict"]


def measure_blocks(stack: SeedStack, X_lip: torch.Tensor) -> dict:
    """Per seed and block, (S, L) each: ||W_i - I||_F, ||W_i^T W_i - I||_F, sign det W_i and
    the two Lipschitz estimates of the branch f_i."""
    W = skip_matrices(stack)  # (S, L, n, n) float64
    return {
        "identity_distance": orth.identity_distance(W),
        "orth_error": orth.orth_error(W),
        "det_sign": orth.slogdet_safe(W)[0],
        "lipschitz_bound": branch_lipschitz_bounds(stack),
        "lipschitz_empirical": branch_lipschitz_empirical(stack, X_lip),
    }


def _per_seed(r: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per seed (S,): the mean over blocks of ||W_i - I||_F at the start and at the end."""
    return (np.asarray(r["initial_identity_distance"], dtype=float).mean(1),
            np.asarray(r["final_identity_distance"], dtype=float).mean(1))


START_TOL = 1e-6  # a start closer to I than this (init=identity) leaves nothing to divide by


def by_depth(rows: list[dict]) -> list[dict]:
    """Per (dataset, d, m): each seed's mean over blocks of ||W_i - I||_F at the start and at
    the end of training; what training moved them towards I (start - end: > 0 towards I,
    < 0 away), its mean, std and 95% t-interval over seeds; and end / start, the part of
    the distance from the start that is left. The start of a Haar draw is sqrt(2 d) from I
    in root mean square (E ||W - I||_F^2 = 2 d - 2 E tr W = 2 d; the mean distance is up to 8%
    less, at d = 2), so end / sqrt(2 d) compares dimensions."""
    out = []
    for r in rows:
        ini, fin = _per_seed(r)
        moved = ini - fin
        mv, lo, hi = t_interval(moved)
        left = fin / ini if np.all(ini > START_TOL) else None
        out.append({
            "dataset": r["dataset"], "dim": r["dim"], "n_blocks": r["n_blocks"], "seeds": len(ini),
            "initial_identity_distance_mean": float(ini.mean()),
            "expected_start_distance": math.sqrt(2 * r["dim"]),
            "final_identity_distance_mean": float(fin.mean()), "final_identity_distance_sd": seed_sd(fin),
            "final_relative_to_haar": float(fin.mean()) / math.sqrt(2 * r["dim"]),
            "moved_towards_identity": mv, "moved_towards_identity_sd": seed_sd(moved), "moved_lo": lo, "moved_hi": hi,
            "distance_left": None if left is None else float(left.mean()),
            "travelled_mean": float(np.mean(r["travelled"])) if "travelled" in r else math.nan,
            "final_lipschitz_bound_mean": float(np.mean(r["final_lipschitz_bound"])) if "final_lipschitz_bound" in r
            else math.nan,
            "final_lipschitz_empirical_mean": float(np.mean(r["final_lipschitz_empirical"]))
            if "final_lipschitz_empirical" in r else math.nan,
            "negative_det_count": int((np.asarray(r["final_det_sign"]) < 0).sum()) if "final_det_sign" in r else 0,
            "test_acc_mean": float(np.mean(r["test_acc"])) if "test_acc" in r else math.nan,
            "test_acc_sd": seed_sd(r["test_acc"]) if "test_acc" in r else math.nan,
        })
    return out


def corrected_distance(rows: list[dict]) -> tuple[list[int], np.ndarray, bool]:
    """The rows of one (dataset, d): the depths m (sorted), the start-corrected distance per
    seed and depth (S, M), and whether the skips started at I. Corrected: end / start, the part
    of each seed's start distance (mean over blocks) left at the end, which divides out where
    the Haar draw started; with init=identity the start is I and the end itself is used. What
    :func:`answer` judges and orth_to_id's depth figure draws."""
    rs = sorted(rows, key=lambda r: r["n_blocks"])
    per_seed = [_per_seed(r) for r in rs]  # [(ini (S,), fin (S,))] per depth
    n_seeds = min(len(ini) for ini, _ in per_seed)
    from_identity = not all(np.all(ini > START_TOL) for ini, _ in per_seed)
    y = np.stack([(fin if from_identity else fin / ini)[:n_seeds] for ini, fin in per_seed], 1)  # (S, M)
    return [r["n_blocks"] for r in rs], y, from_identity


def answer(table: list[dict], rows: list[dict], fraction: float) -> dict:
    """Per dataset and d: did *training* bring the W_i closer to I, the more so the deeper
    the net? Two conditions, both over seeds:

    1. moved towards I: at the largest depth, start - end (mean over blocks) has a 95%
       t-interval over seeds above 0;
    2. with depth: the part of the distance left, end / start per seed (which divides out
       where the Haar draw started; with init=identity the start is I and the end itself is
       used), falls with m: its per-seed log-log slopes against m have a 95% t-interval
       below 0 and a mean at most ``fraction`` times the slope of log(m)/m (the theorem's
       rate ||I - W_i|| = O(log m / m)).

    Each is true where its interval shows it, false where the interval rules it out (1: its
    upper end at most 0; 2: its lower end above ``fraction`` times log(m)/m's slope: slower
    than the rate asked, or rising), and None where the interval holds both answers.
    ``approaches_identity_with_depth`` is true when both hold, false when either is false, and
    None ("cannot tell") otherwise: also with fewer than two seeds or two depths, when the
    corrected distance is 0 at some depth (``zero_distance_at``: no log-log slope), or when
    log(m)/m does not fall over the depths (``rate_can_be_told`` false: m = 2, 4, where it is
    the same, or 2, 3, where it rises, and any slope at all would pass). Spearman's rank
    correlation of ||W_i - I||_F with Lip(f_i) over all blocks, seeds and depths is kept
    alongside."""
    out = {}
    for key in sorted({(t["dataset"], t["dim"]) for t in table}):
        ts = sorted((t for t in table if (t["dataset"], t["dim"]) == key), key=lambda t: t["n_blocks"])
        rs = [r for r in rows if (r["dataset"], r["dim"]) == key]
        ms, y, from_identity = corrected_distance(rs)  # y: (S, M)
        n_seeds = len(y)
        # a distance of 0 (the skips at I) has no logarithm: no slope, rather than one over the other depths
        zero_at = [m for j, m in enumerate(ms) if np.any(y[:, j] <= cons.ZERO_DISTANCE)]
        slopes = [] if zero_at else [cons.loglog_slope(ms, list(y[s])) for s in range(n_seeds)]
        slopes = [s for s in slopes if s is not None]
        ref = cons.loglog_slope(ms, [cons.reference_rate(m) for m in ms])
        slope, slope_lo, slope_hi = t_interval(slopes) if slopes else (math.nan,) * 3
        deepest = ts[-1]
        # each condition: true where the interval shows it, false where it rules it out, else None
        # (the interval holds both answers: "cannot tell", not "no")
        lo, hi = deepest["moved_lo"], deepest["moved_hi"]
        moved_ok = None if math.isnan(lo) or from_identity else True if lo > 0 else False if hi <= 0 else None
        # (started at I: there is no way towards it)
        rate_told = ref is not None and ref < 0  # log(m)/m falls over these m (m = 2, 4: it is the same at both)
        if len(ms) < 2 or n_seeds < 2 or math.isnan(slope_hi) or not rate_told:
            falls = None
        elif slope_hi < 0 and slope <= fraction * ref:
            falls = True
        else:  # false where the whole interval falls slower than the rate asked (or rises)
            falls = False if slope_lo > fraction * ref else None
        if from_identity:
            approaches = falls
        elif moved_ok is False or falls is False:
            approaches = False
        elif moved_ok is None or falls is None:
            approaches = None
        else:
            approaches = True
        w = np.concatenate([np.ravel(r["final_identity_distance"]) for r in rs])
        lip = np.concatenate([np.ravel(r.get("final_lipschitz_empirical", np.zeros_like(r["final_identity_distance"])))
                              for r in rs])
        rho = spearmanr(w, lip).statistic if len(w) > 2 and np.ptp(w) > 0 and np.ptp(lip) > 0 else None
        out[f"{key[0]}/d={key[1]}"] = {
            "dataset": key[0], "dim": key[1], "n_blocks": ms, "seeds": n_seeds,
            "started_at_identity": from_identity,
            "initial_identity_distance_mean": [t["initial_identity_distance_mean"] for t in ts],
            "final_identity_distance_mean": [t["final_identity_distance_mean"] for t in ts],
            "final_relative_to_haar": [t["final_relative_to_haar"] for t in ts],
            "moved_at_largest_depth": deepest["moved_towards_identity"],
            "moved_at_largest_depth_ci": [deepest["moved_lo"], deepest["moved_hi"]],
            "start_at_largest_depth": deepest["initial_identity_distance_mean"],
            "moved_towards_identity": moved_ok,
            "corrected_distance": "end" if from_identity else "end / start",
            "loglog_slope_vs_depth": None if math.isnan(slope) else slope,
            "loglog_slope_ci": [slope_lo, slope_hi],
            "reference_slope_log_m_over_m": ref,
            "falls_with_depth": falls,
            "rate_can_be_told": rate_told,
            "zero_distance_at": zero_at,
            "approaches_identity_with_depth": approaches,
            "spearman_identity_distance_vs_lipschitz": None if rho is None else float(rho),
        }
    return out


def _why_unknown(a: dict) -> str:
    """Why an answer is None ("cannot tell")."""
    if a.get("zero_distance_at"):
        return f"the distance is 0 at m = {', '.join(map(str, a['zero_distance_at']))}: no log-log slope"
    if a["seeds"] < 2 or len(a["n_blocks"]) < 2:
        return "fewer than two seeds or two depths"
    if not a.get("rate_can_be_told", True):
        return (f"log(m)/m does not fall over m = {', '.join(map(str, a['n_blocks']))} (it peaks at m = 3): "
                "no rate to hold the slope to")
    return "the 95% intervals over seeds hold both answers"


def verdict(ans: dict, fraction: float) -> str:
    """One sentence from the per-(dataset, d) answers: what training did, with the seeds'
    spread, and "cannot tell" where seeds or depths are too few."""
    def fmt_ci(ci):
        return "no interval (one seed)" if any(v is None or math.isnan(v) for v in ci) else \
            f"95% CI [{ci[0]:+.3g}, {ci[1]:+.3g}]"

    yes = [k for k, a in ans.items() if a["approaches_identity_with_depth"] is True]
    unknown = [k for k, a in ans.items() if a["approaches_identity_with_depth"] is None]
    parts = []
    for k, a in ans.items():
        m = a["n_blocks"][-1]
        if a["started_at_identity"]:
            parts.append(f"{k}: started at I and ended {a['final_identity_distance_mean'][-1]:.3g} from it at m = {m}")
        else:
            moved = a["moved_at_largest_depth"]
            way = "towards" if moved >= 0 else "away from"
            ci = fmt_ci(a["moved_at_largest_depth_ci"])
            parts.append(f"{k}: training moved the W_i {abs(moved):.3g} {way} I at m = {m} "
                         f"({'start - end, ' if ci.startswith('95%') else ''}{ci}) from a start "
                         f"{a['start_at_largest_depth']:.3g} away")
    if len(yes) == len(ans):
        head = "yes: training brings the W_i towards I, the more so the deeper the net, in every setting"
    elif yes:
        head = f"in {len(yes)} of {len(ans)} (dataset, d) settings ({', '.join(yes)}) training brings the W_i " \
               "towards I, the more so the deeper the net; not in the others"
    elif len(unknown) == len(ans):
        why = {_why_unknown(a) for a in ans.values()}
        head = f"cannot tell ({why.pop()})" if len(why) == 1 else \
            f"cannot tell ({'; '.join(f'{k}: {_why_unknown(a)}' for k, a in ans.items())})"
    else:
        head = f"no: in none of the {len(ans) - len(unknown)} settings judged does training bring the W_i " \
               f"towards I, the more so the deeper the net (at least {fraction:g} x the rate of log(m)/m)"
        if unknown:
            head += f"; cannot tell for {', '.join(f'{k} ({_why_unknown(ans[k])})' for k in unknown)}"
    return head + " - " + "; ".join(parts) + "."
