"""Per-block measurements of a model's skip connections.

For each skip matrix W (C x C): ||W^T W - I||_F (distance from O(n)), ||W - I||_F and
||W - I||_2 (distance from the identity skip) and sign(det W) (+1 on SO(n); a
reflection, -1, can never reach I by moving continuously on O(n)).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import orthogonal as orth
from .skips import iter_skips

__all__ = ["skip_diagnostics", "summarize_skips"]


@torch.no_grad()
def skip_diagnostics(model: nn.Module) -> list[dict]:
    """One dict per skip, in model order: name, kind, method, and for kinds with a matrix
    orth_error, identity_distance, identity_distance_spectral, det_sign (else None)."""
    rows = []
    for name, skip in iter_skips(model):
        row = {"name": name, "kind": skip.kind, "method": getattr(skip, "method", None)}
        W = skip.weight
        if W is None:
            row.update(orth_error=None, identity_distance=None, identity_distance_spectral=None, det_sign=None)
        else:
            W = W.detach().double()  # measures in float64: round-off of fp32 weights is the signal here
            row.update(
                orth_error=float(orth.orth_error(W)),
                identity_distance=float(orth.identity_distance(W)),
                identity_distance_spectral=float(orth.identity_distance_spectral(W)),
                det_sign=int(torch.linalg.slogdet(W).sign),
            )
        rows.append(row)
    return rows


def summarize_skips(rows: list[dict]) -> dict:
    """Model-level summary of :func:`skip_diagnostics` rows (None where no skip has a matrix)."""
    mats = [r for r in rows if r["orth_error"] is not None]
    if not mats:
        return {"skip_orth_error_max": None, "skip_identity_distance_mean": None,
                "skip_identity_distance_max": None, "skip_negative_det_count": None}
    dist = [r["identity_distance"] for r in mats]
    return {
        "skip_orth_error_max": max(r["orth_error"] for r in mats),
        "skip_identity_distance_mean": math.fsum(dist) / len(dist),
        "skip_identity_distance_max": max(dist),
        "skip_negative_det_count": sum(r["det_sign"] < 0 for r in mats),
    }
