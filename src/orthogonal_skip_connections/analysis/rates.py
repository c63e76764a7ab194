"""The decomposition theorem's rate checks (paper Theorem 1, after Bartlett, Evans & Long
2018, arXiv 1804.05012): build the construction of one map h for every number of blocks
m, measure it, fit log-log slopes against m and compare them with log(m)/m's."""

from __future__ import annotations

import zlib

import torch

from ..maths import construction as cons

__all__ = ["ROW_KEYS", "SLOPE_KEYS", "map_generator", "slopes", "rate_checks", "measure_map", "verdict"]

ROW_KEYS = ("m", "c", "composition_error", "structural_error", "lipschitz_gap", "lipschitz_gap_jacobian",
            "lipschitz_gap_pairs", "lipschitz_gap_block1", "lipschitz_gap_rest", "identity_distance",
            "newton_residual")
SLOPE_KEYS = ("composition_error", "lipschitz_gap", "lipschitz_gap_rest", "identity_distance")


def map_generator(seed: int, name: str) -> torch.Generator:
    """Each h draws from its own stream, keyed by its name: adding or removing a map
    leaves the others unchanged."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def slopes(rows: list[dict], floor: float) -> dict:
    """Log-log slopes against m of the measured errors, and of log(m)/m itself."""
    ms = [r["m"] for r in rows]
    out = {k: cons.loglog_slope(ms, [r[k] for r in rows], floor=floor) for k in SLOPE_KEYS}
    out["reference_log_m_over_m"] = cons.loglog_slope(ms, [cons.reference_rate(m) for m in ms])
    return out


def rate_checks(rows: list[dict], slope: dict, slope_tolerance: float, exact_tolerance: float) -> dict:
    """Does each part of the claim hold for this h? None where no slope could be fitted, and
    where the m cannot tell a rate (``rate_can_be_told`` false): where log(m)/m's slope over
    them is within ``slope_tolerance`` of 0 (m = 2, 4: log(m)/m is the same at both), a
    quantity that does not fall at all would pass."""
    ref = slope["reference_log_m_over_m"]
    told = ref is not None and ref + slope_tolerance < 0

    def rate(key):
        s = slope[key]
        return None if s is None or not told else bool(s <= ref + slope_tolerance)

    return {
        "composition_exact": all(r["composition_error"] <= exact_tolerance for r in rows),
        "lipschitz_gap_at_rate": rate("lipschitz_gap"),
        "identity_distance_at_rate": rate("identity_distance"),
        "rate_can_be_told": told,
    }


def measure_map(name: str, spec: dict, S: torch.Tensor, ms: list[int], *, dim: int, radius: float, seed: int,
                n_points: int, n_pairs: int, pair_distance: float, c_scale: float, rotation_scale: float,
                last_skip_identity: bool, slope_tolerance: float, exact_tolerance: float, on_m=None) -> dict:
    """The construction of h = tanh_map(spec) for every m in ``ms``: per-m rows, slopes,
    checks, and the per-block numbers of the largest m."""
    g = map_generator(seed, name)
    d, R = dim, radius
    h = cons.tanh_map(d, spec["angle"], spec["stretch"], spec["eps"], g)
    x = cons.sample_ball(n_points, d, R, g)  # (N, d)
    # pairs: the first half independent points, the second half p + pair_distance R v, |v| = 1
    n_far = n_pairs // 2
    p = cons.sample_ball(n_pairs, d, R, g)  # (P, d)
    v = torch.nn.functional.normalize(torch.randn(n_pairs - n_far, d, generator=g, dtype=p.dtype), dim=-1)
    q = torch.cat([cons.sample_ball(n_far, d, R, g), p[n_far:] + pair_distance * R * v])
    rows, per_block = [], None
    for m in ms:
        con = cons.build_construction(h, m, S, c_scale, rotation_scale, last_skip_identity)
        result = cons.measure_construction(con, x, (p, q))
        rows.append({k: result[k] for k in ROW_KEYS})
        per_block = {"m": m, **result["per_block"]}  # kept for the largest m
        if on_m is not None:
            on_m(m)
    L_minus_I = h.L - torch.eye(d, dtype=h.L.dtype)
    slope = slopes(rows, floor=exact_tolerance)
    return {
        "h": {
            **spec,
            "dh0_identity_distance": float(torch.linalg.matrix_norm(L_minus_I, ord=2)),
            "dh0_det": float(torch.linalg.det(h.L)),
            "alpha": h.alpha,
            "M": h.M,
        },
        "rows": rows,
        "slopes": slope,
        "checks": rate_checks(rows, slope, slope_tolerance, exact_tolerance),
        "per_block": per_block,
    }


def verdict(maps: dict[str, dict]) -> str:
    """One sentence from the checks of every map."""
    n = len(maps)

    def count(key):
        vals = [r["checks"][key] for r in maps.values()]
        return sum(v is True for v in vals), sum(v is None for v in vals)

    lip, lip_none = count("lipschitz_gap_at_rate")
    ide, ide_none = count("identity_distance_at_rate")
    exact, _ = count("composition_exact")
    if n and not all(r["checks"].get("rate_can_be_told", True) for r in maps.values()):  # (the same m for every h)
        ms = [row["m"] for row in next(iter(maps.values())).get("rows", [])]
        return (f"cannot tell a rate{' over m = ' + ', '.join(map(str, ms)) if ms else ''}: log(m)/m falls too "
                f"little over them (it peaks at m = 3), so a quantity that does not fall at all would pass; give m "
                f"over a wider range (the default 2, 4, ..., 256); the composition h_m o ... o h_1 equals h to "
                f"round-off for {exact} of {n}.")
    text = (f"max_i ||h_i - W_i||_L decays at least at the rate log(m)/m for {lip} of {n} maps h, "
            f"max_i ||I - W_i|| for {ide} of {n}; the composition h_m o ... o h_1 equals h to round-off for "
            f"{exact} of {n}")
    unfit = max(lip_none, ide_none)
    return text + (f" ({unfit} map(s) without a fitted slope)." if unfit else ".")
