"""Does a trained residual net's skip W_i approach I as depth m grows (orth_to_id)? Per-block
measurements of a seed stack, the per-depth table and the per-(dataset, d) answer: the
log-log slope of the final ||W_i - I||_F against m next to log(m)/m's (the theorem's
construction puts ||I - W_i|| at O(log m / m); paper Theorem 1, after Bartlett, Evans &
Long 2018, arXiv 1804.05012)."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import spearmanr

from ..diagnostics import branch_lipschitz_bounds, branch_lipschitz_empirical, skip_matrices
from ..maths import construction as cons
from ..maths import orthogonal as orth
from ..models.stack import SeedStack

__all__ = ["measure_blocks", "by_depth", "answer", "verdict"]


def measure_blocks(stack: SeedStack, X_lip: torch.Tensor) -> dict:
    """Per seed and block, (S, L) each: ||W_i - I||_F, ||W_i^T W_i - I||_F, sign det W_i and
    the two Lipschitz estimates of the branch f_i."""
    W = skip_matrices(stack)  # (S, L, n, n) float64
    return {
        "identity_distance": orth.identity_distance(W),
        "orth_error": orth.orth_error(W),
        "det_sign": torch.linalg.slogdet(W).sign,
        "lipschitz_bound": branch_lipschitz_bounds(stack),
        "lipschitz_empirical": branch_lipschitz_empirical(stack, X_lip),
    }


def _mean_sd(per_seed: np.ndarray) -> tuple[float, float]:
    return float(per_seed.mean()), float(per_seed.std())


def by_depth(rows: list[dict]) -> list[dict]:
    """Per (dataset, d, m): the mean over blocks of each seed's final (and initial)
    ||W_i - I||_F, then mean and std over seeds; also divided by sqrt(2 d), the
    root-mean-square ||W - I||_F of a Haar-random W (E tr W = 0), so dimensions compare."""
    out = []
    for r in rows:
        fin = np.asarray(r["final_identity_distance"]).mean(1)  # (S,)
        ini = np.asarray(r["initial_identity_distance"]).mean(1)
        haar = math.sqrt(2 * r["dim"])
        out.append({
            "dataset": r["dataset"], "dim": r["dim"], "n_blocks": r["n_blocks"],
            "final_identity_distance_mean": _mean_sd(fin)[0], "final_identity_distance_sd": _mean_sd(fin)[1],
            "initial_identity_distance_mean": _mean_sd(ini)[0],
            "final_relative_to_haar": _mean_sd(fin)[0] / haar,
            "moved_towards_identity": _mean_sd(ini)[0] - _mean_sd(fin)[0],
            "travelled_mean": float(np.mean(r["travelled"])),
            "final_lipschitz_bound_mean": float(np.mean(r["final_lipschitz_bound"])),
            "final_lipschitz_empirical_mean": float(np.mean(r["final_lipschitz_empirical"])),
            "negative_det_count": int((np.asarray(r["final_det_sign"]) < 0).sum()),
            "test_acc_mean": float(np.mean(r["test_acc"])), "test_acc_sd": float(np.std(r["test_acc"])),
        })
    return out


def answer(table: list[dict], rows: list[dict], fraction: float) -> dict:
    """Per dataset and d: does the mean final ||W_i - I||_F shrink with depth m like
    log(m)/m? Counted as approaching I when its log-log slope against m is at most
    ``fraction`` times the slope of log(m)/m over the same depths (so it decays at least
    that fraction of the theorem's rate). And how does ||W_i - I||_F go with Lip(f_i),
    over all blocks, seeds and depths (Spearman's rank correlation)?"""
    out = {}
    for key in sorted({(t["dataset"], t["dim"]) for t in table}):
        ts = sorted((t for t in table if (t["dataset"], t["dim"]) == key), key=lambda t: t["n_blocks"])
        ms = [t["n_blocks"] for t in ts]
        dist = [t["final_identity_distance_mean"] for t in ts]
        slope = cons.loglog_slope(ms, dist)
        ref = cons.loglog_slope(ms, [cons.reference_rate(m) for m in ms])
        rs = [r for r in rows if (r["dataset"], r["dim"]) == key]
        w = np.concatenate([np.ravel(r["final_identity_distance"]) for r in rs])
        lip = np.concatenate([np.ravel(r["final_lipschitz_empirical"]) for r in rs])
        rho = spearmanr(w, lip).statistic if len(w) > 2 and np.ptp(w) > 0 and np.ptp(lip) > 0 else None
        out[f"{key[0]}/d={key[1]}"] = {
            "dataset": key[0], "dim": key[1], "n_blocks": ms,
            "final_identity_distance_mean": dist,
            "final_relative_to_haar": [t["final_relative_to_haar"] for t in ts],
            "loglog_slope_vs_depth": slope,
            "reference_slope_log_m_over_m": ref,
            "approaches_identity_with_depth": None if slope is None or ref is None else bool(slope <= fraction * ref),
            "spearman_identity_distance_vs_lipschitz": None if rho is None else float(rho),
        }
    return out


# --------------------------------------------------------------------------- figures


def verdict(ans: dict, fraction: float) -> str:
    """One sentence from the per-(dataset, d) answers."""
    known = {k: a for k, a in ans.items() if a["approaches_identity_with_depth"] is not None}
    yes = [k for k, a in known.items() if a["approaches_identity_with_depth"]]
    text = (f"the trained W_i approach I with depth (mean final ||W_i - I||_F falling with m at least {fraction:g} "
            f"times as fast as log(m)/m) in {len(yes)} of {len(known)} (dataset, d) settings")
    text += f" ({', '.join(yes)})" if yes else ""
    if len(known) < len(ans):
        text += f"; {len(ans) - len(known)} setting(s) have too few depths for a slope"
    return text + "."
