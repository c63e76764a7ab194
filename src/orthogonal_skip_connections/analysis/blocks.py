"""Is each block h_i of a trained residual net close to an orthogonal map, as the theorem's
construction has it (paper Theorem 1, after Bartlett, Evans & Long 2018, arXiv
1804.05012)? Per block, the relative residual of the best orthogonal (Procrustes,
Schoenemann 1966) fit of its map on data, next to the best linear fit's."""

from __future__ import annotations

import numpy as np
import torch

from ..diagnostics import block_inputs, block_procrustes, linear_fit_residual

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


def by_kind(rows: list[dict], kinds: list[str]) -> dict:
    """Per skip kind, means over the grid of the per-point means."""
    def mean(kind, key):
        return float(np.mean([r[key] if key != "test_acc" else np.mean(r[key]) for r in rows if r["kind"] == kind]))

    return {kind: {key: mean(kind, key) for key in ("procrustes_residual_mean", "linear_residual_mean",
                                                    "procrustes_residual_at_init_mean", "test_acc",
                                                    "procrustes_residual_seed_sd")}
            for kind in kinds}


def verdict(table: dict) -> str:
    """One sentence: per kind, did training leave the blocks closer to orthogonal maps than
    they were at initialisation? "cannot tell" when the change is within the seeds' spread."""
    parts = []
    for kind, t in table.items():
        after, before, sd = t["procrustes_residual_mean"], t["procrustes_residual_at_init_mean"], \
            t.get("procrustes_residual_seed_sd", 0.0)
        if not sd or sd != sd:
            word = "cannot tell (one seed)" if after != before else "unchanged"
        elif after + sd < before:
            word = "closer to orthogonal than at initialisation"
        elif after - sd > before:
            word = "further from orthogonal than at initialisation"
        else:
            word = "cannot tell (the change is within the seeds' spread)"
        parts.append(f"{kind}: {word}, residual {after:.2f} ± {sd:.2f} after training vs {before:.2f} at "
                     f"initialisation (best linear fit {t['linear_residual_mean']:.2f})")
    return (_closest(table) + "; ".join(parts)
            + " (relative Procrustes residual: 0 = orthogonal on the data, ± std over seeds).")


def _closest(table: dict) -> str:
    """Which kind's blocks end closest to orthogonal maps, said only when its mean plus its
    seeds' std stays below every other kind's mean minus theirs (the rule of :func:`verdict`)."""
    if len(table) < 2:
        return ""
    ranked = sorted(table, key=lambda k: table[k]["procrustes_residual_mean"])
    sd = {k: table[k].get("procrustes_residual_seed_sd", 0.0) for k in ranked}
    if any(not v or v != v for v in sd.values()):
        return "no kind can be told closest to orthogonal maps (one seed); "
    best = ranked[0]
    top = table[best]["procrustes_residual_mean"] + sd[best]
    if all(top < table[k]["procrustes_residual_mean"] - sd[k] for k in ranked[1:]):
        return f"{best} blocks end closest to orthogonal maps; "
    return (f"no kind ends detectably closer to orthogonal maps than the others ({best} lowest, within the "
            f"seeds' spread of {ranked[1]}); ")
