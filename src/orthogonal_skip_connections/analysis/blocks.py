"""Is each block h_i of a trained residual net close to an orthogonal map, as the theorem's
construction has it (paper Theorem 1, after Bartlett, Evans & Long 2018, arXiv
1804.05012)? Per block, the relative residual of the best orthogonal (Procrustes,
Schoenemann 1966) fit of its map on data, next to the best linear fit's."""

from __future__ import annotations

import numpy as np
import torch

from ..diagnostics import block_inputs, block_procrustes, linear_fit_residual
from .stats import seed_sd, t_interval

__all__ = ["fit_blocks", "by_kind", "verdict"]


@torch.no_grad()
def fit_blocks(model, X) -> dict:
    """Per block of one trained model (eval mode), on inputs X (N, d): Procrustes and
    linear-fit residuals, and the distances of Q_i from I and from the skip W_i; lists of
    length m."""
    rows = block_procrustes(model, X)
    linear = [linear_fit_residual(z, block(z)) for block, z in zip(model.blocks, block_inputs(model, X))]
    return {
        "procrustes_residual": [r["procrustes_residual"] for r in rows],
        "linear_residual": linear,
        "procrustes_identity_distance": [r["procrustes_identity_distance"] for r in rows],
        "procrustes_skip_distance": [r["procrustes_skip_distance"] for r in rows],
    }


def _per_seed(rows: list[dict], key: str) -> np.ndarray:
    """(S,): per seed, the mean over the grid points ``rows`` of the mean over blocks of
    ``per_block[key]`` ((S, m) per point). Seed s is the same seed at every point, so the S
    values are independent samples of the grid mean."""
    return np.mean([np.asarray(r["per_block"][key], dtype=float).mean(1) for r in rows], axis=0)


def by_kind(rows: list[dict], kinds: list[str]) -> dict:
    """Per skip kind, means over the grid of the per-point means, and per seed (S,) the grid
    mean of the residual after training and of its change from initialisation (after - at init,
    the same seed's nets): what :func:`verdict` compares, with 95% t-intervals over seeds."""
    def mean(kind, key):
        return float(np.mean([r[key] if key != "test_acc" else np.mean(r[key]) for r in rows if r["kind"] == kind]))

    table = {}
    for kind in kinds:
        rs = [r for r in rows if r["kind"] == kind]
        t = {key: mean(kind, key) for key in ("procrustes_residual_mean", "linear_residual_mean",
                                              "procrustes_residual_at_init_mean", "test_acc")}
        after = _per_seed(rs, "procrustes_residual")
        # the spread of this row's mean over seeds: of each seed's grid mean (a mean of the grid
        # points' spreads, which it was, is larger: the points' seed noise partly averages out)
        t["procrustes_residual_seed_sd"] = seed_sd(after)
        change = after - _per_seed(rs, "procrustes_residual_at_init")
        t["procrustes_residual_change"], t["procrustes_residual_change_lo"], t["procrustes_residual_change_hi"] = \
            t_interval(change)
        t["procrustes_residual_per_seed"], t["procrustes_residual_change_per_seed"] = after.tolist(), change.tolist()
        table[kind] = t
    return table


def verdict(table: dict) -> str:
    """One sentence: per kind, did training leave the blocks closer to orthogonal maps than
    they were at initialisation? Paired by seed: "closer" or "further" only when the 95%
    t-interval over seeds of the change (after - at init, each seed's own nets) excludes 0;
    "cannot tell" otherwise, and with one seed."""
    parts = []
    for kind, t in table.items():
        after, before = t["procrustes_residual_mean"], t["procrustes_residual_at_init_mean"]
        change = np.asarray(t["procrustes_residual_change_per_seed"], dtype=float)
        d, lo, hi = t_interval(change)
        if not change.any():
            word = "unchanged"
        elif len(change) < 2:
            word = "cannot tell (one seed)"
        elif hi < 0:
            word = "closer to orthogonal than at initialisation"
        elif lo > 0:
            word = "further from orthogonal than at initialisation"
        else:
            word = "cannot tell (the change's 95% interval over seeds holds 0)"
        ci = f" [{lo:+.3f}, {hi:+.3f}]" if len(change) >= 2 else ""
        parts.append(f"{kind}: {word}, residual {after:.2f} after training vs {before:.2f} at initialisation "
                     f"(change {d:+.3f}{ci}; best linear fit {t['linear_residual_mean']:.2f})")
    return (_closest(table) + "; ".join(parts)
            + " (relative Procrustes residual: 0 = orthogonal on the data; intervals: 95% over seeds).")


def _closest(table: dict) -> str:
    """Which kind's blocks end closest to orthogonal maps, said only when, paired by seed, the
    95% t-interval of its residual minus each other kind's lies below 0 (the rule of
    :func:`verdict`)."""
    if len(table) < 2:
        return ""
    ranked = sorted(table, key=lambda k: table[k]["procrustes_residual_mean"])
    per_seed = {k: np.asarray(table[k]["procrustes_residual_per_seed"], dtype=float) for k in ranked}
    if min(len(v) for v in per_seed.values()) < 2:
        return "no kind can be told closest to orthogonal maps (one seed); "
    best = ranked[0]
    highs = {k: t_interval(per_seed[best] - per_seed[k])[2] for k in ranked[1:]}
    if all(h < 0 for h in highs.values()):
        return f"{best} blocks end closest to orthogonal maps; "
    tied = next(k for k in ranked[1:] if not highs[k] < 0)
    return (f"no kind ends detectably closer to orthogonal maps than the others ({best} lowest; its difference "
            f"from {tied}'s, paired by seed, has a 95% interval that holds 0); ")
