"""`osc theorem`: build the decomposition theorem's construction numerically and measure
its claims against the number of blocks m.

For each h of the configured family and each m: the composition error
max ||h_m o ... o h_1 (x) - h(x)||, max_i ||h_i - W_i||_L (by Jacobians and by sampled
pairs) and max_i ||I - W_i||, then log-log slopes against m next to log(m)/m's. The maths
lives in :mod:`orthogonal_skip_connections.construction`; this app reads the config,
calls it and saves config.yaml, summary.json and figures into the run dir.

    python -m orthogonal_skip_connections.experiments.theorem ms=[2,8,32] maps.dh0_far.eps=0.1
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..maths import construction as cons
from ..runs import UserError, hydra_app, progress_bar, save_config, write_json

MAP_KEYS = ("angle", "stretch", "eps")
ROW_KEYS = ("m", "c", "composition_error", "structural_error", "lipschitz_gap", "lipschitz_gap_jacobian",
            "lipschitz_gap_pairs", "lipschitz_gap_block1", "lipschitz_gap_rest", "identity_distance",
            "newton_residual")
SLOPE_KEYS = ("composition_error", "lipschitz_gap", "lipschitz_gap_rest", "identity_distance")


# --------------------------------------------------------------------------- config checks


def _int(cfg, key: str, low: int) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{key} must be an integer >= {low}; got {value!r}")
    return value


def _float(cfg, key: str, low: float, strict: bool = True, high: float = math.inf, prefix: str = "") -> float:
    value = cfg[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low) and value <= high
    if not ok:
        bound = f"> {low}" if strict else f">= {low}"
        bound += "" if high == math.inf else f" and <= {high}"
        raise UserError(f"{prefix}{key} must be a number {bound}; got {value!r}")
    return float(value)


def _bool(cfg, key: str) -> bool:
    if not isinstance(cfg[key], bool):
        raise UserError(f"{key} must be true or false; got {cfg[key]!r}")
    return cfg[key]


def check_config(cfg: DictConfig) -> dict:
    """Every configured value, checked before anything is written; one line per mistake."""
    c = {
        "dim": _int(cfg, "dim", 2),
        "radius": _float(cfg, "radius", 0.0),
        "c_scale": _float(cfg, "c_scale", 0.0),
        "rotation_scale": _float(cfg, "rotation_scale", 0.0, strict=False),
        "last_skip_identity": _bool(cfg, "last_skip_identity"),
        "n_points": _int(cfg, "n_points", 1),
        "n_pairs": _int(cfg, "n_pairs", 2),
        "pair_distance": _float(cfg, "pair_distance", 0.0, high=1.0),
        "slope_tolerance": _float(cfg, "slope_tolerance", 0.0, strict=False),
        "exact_tolerance": _float(cfg, "exact_tolerance", 0.0),
        "seed": _int(cfg, "seed", 0),
        "progress": _bool(cfg, "progress"),
    }
    ms = cfg.ms
    if not OmegaConf.is_list(ms) or len(ms) == 0:
        raise UserError(f"ms must be a non-empty list of integers >= 1; got {ms!r}")
    for m in ms:
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise UserError(f"every m in ms must be an integer >= 1; got {m!r}")
        if c["c_scale"] * math.log(m) / m >= 1.0:
            raise UserError(
                f"c = c_scale * log(m) / m must be < 1; c_scale={c['c_scale']} gives {c['c_scale'] * math.log(m) / m:.3g} at m={m}"
            )
    c["ms"] = sorted(set(ms))
    maps = cfg.maps
    if not isinstance(maps, DictConfig) or len(maps) == 0:
        raise UserError("maps must be a non-empty mapping name -> {angle, stretch, eps}")
    c["maps"] = {}
    for name, spec in maps.items():
        if not isinstance(spec, DictConfig) or set(spec) != set(MAP_KEYS):
            got = sorted(spec) if isinstance(spec, DictConfig) else spec
            raise UserError(f"maps.{name} must have exactly the keys {', '.join(MAP_KEYS)}; got {got!r}")
        c["maps"][name] = {
            "angle": _float(spec, "angle", -math.inf, prefix=f"maps.{name}."),
            "stretch": _float(spec, "stretch", 0.0, prefix=f"maps.{name}."),
            "eps": _float(spec, "eps", 0.0, strict=False, prefix=f"maps.{name}."),
        }
        s_min = min(c["maps"][name]["stretch"], 1.0 / c["maps"][name]["stretch"])
        if c["maps"][name]["eps"] >= s_min:
            raise UserError(
                f"maps.{name}.eps must be < min(stretch, 1/stretch) = {s_min:g} so that h is invertible; "
                f"got {c['maps'][name]['eps']}"
            )
    return c


# --------------------------------------------------------------------------- the run


def _map_generator(seed: int, name: str) -> torch.Generator:
    """Each h draws from its own stream, keyed by its name: adding or removing a map
    leaves the others unchanged."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def _slopes(rows: list[dict], floor: float) -> dict:
    ms = [r["m"] for r in rows]
    slopes = {k: cons.loglog_slope(ms, [r[k] for r in rows], floor=floor) for k in SLOPE_KEYS}
    slopes["reference_log_m_over_m"] = cons.loglog_slope(ms, [cons.reference_rate(m) for m in ms])
    return slopes


def _checks(rows, slopes, c) -> dict:
    """Does each part of the claim hold for this h? None where no slope could be fitted."""
    ref = slopes["reference_log_m_over_m"]

    def rate(key):
        s = slopes[key]
        return None if s is None or ref is None else bool(s <= ref + c["slope_tolerance"])

    return {
        "composition_exact": all(r["composition_error"] <= c["exact_tolerance"] for r in rows),
        "lipschitz_gap_at_rate": rate("lipschitz_gap"),
        "identity_distance_at_rate": rate("identity_distance"),
    }


def run_map(name: str, spec: dict, S: torch.Tensor, c: dict, bar) -> dict:
    g = _map_generator(c["seed"], name)
    d, R = c["dim"], c["radius"]
    h = cons.tanh_map(d, spec["angle"], spec["stretch"], spec["eps"], g)
    x = cons.sample_ball(c["n_points"], d, R, g)  # (N, d)
    # pairs: the first half independent points, the second half p + pair_distance R v, |v| = 1
    n_far = c["n_pairs"] // 2
    p = cons.sample_ball(c["n_pairs"], d, R, g)  # (P, d)
    v = torch.nn.functional.normalize(torch.randn(c["n_pairs"] - n_far, d, generator=g, dtype=p.dtype), dim=-1)
    q = torch.cat([cons.sample_ball(n_far, d, R, g), p[n_far:] + c["pair_distance"] * R * v])
    rows, per_block = [], None
    for m in c["ms"]:
        con = cons.build_construction(h, m, S, c["c_scale"], c["rotation_scale"], c["last_skip_identity"])
        result = cons.measure_construction(con, x, (p, q))
        rows.append({k: result[k] for k in ROW_KEYS})
        per_block = {"m": m, **result["per_block"]}  # kept for the largest m
        bar.set_postfix_str(f"{name} m={m}")
        bar.update()
    L_minus_I = h.L - torch.eye(d, dtype=h.L.dtype)
    slopes = _slopes(rows, floor=c["exact_tolerance"])
    return {
        "h": {
            **spec,
            "dh0_identity_distance": float(torch.linalg.matrix_norm(L_minus_I, ord=2)),
            "dh0_det": float(torch.linalg.det(h.L)),
            "alpha": h.alpha,
            "M": h.M,
        },
        "rows": rows,
        "slopes": slopes,
        "checks": _checks(rows, slopes, c),
        "per_block": per_block,
    }


def draw(summary: dict, run_dir: Path) -> list[str]:
    from ..plots import loglog_rates, plt, savefig

    files = []
    ref_label = "log(m)/m (scaled)"
    for name, res in summary["maps"].items():
        rows = res["rows"]
        ms = [r["m"] for r in rows]
        ref = [cons.reference_rate(m) for m in ms]
        anchor = next((r["lipschitz_gap"] / f for r, f in zip(rows, ref) if f > 0), None)
        fig, ax = plt.subplots(figsize=(5.5, 4))
        loglog_rates(
            ax, ms,
            {
                "composition error": [r["composition_error"] for r in rows],
                "max_i ||h_i - W_i||_L": [r["lipschitz_gap"] for r in rows],
                "max_{i>1} ||h_i - W_i||_L": [r["lipschitz_gap_rest"] for r in rows],
                "max_i ||I - W_i||": [r["identity_distance"] for r in rows],
            },
            reference=None if anchor is None else [anchor * f for f in ref],
            reference_label=ref_label,
            styles={"max_{i>1} ||h_i - W_i||_L": {"linestyle": ":"}},
        )
        h = res["h"]
        ax.set_title(f"{name}: ||Dh(0) - I|| = {h['dh0_identity_distance']:.2g}, eps = {h['eps']:g}", fontsize=10)
        ax.set_xlabel("number of blocks m")
        ax.legend(fontsize="small")
        files.append(savefig(fig, run_dir / f"theorem_{name}.png").name)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, res in summary["maps"].items():
        ms = [r["m"] for r in res["rows"]]
        loglog_rates(ax1, ms, {name: [r["lipschitz_gap"] for r in res["rows"]]})
        blocks = res["per_block"]
        ax2.plot(range(1, blocks["m"] + 1), blocks["lipschitz_gap"], label=name)
    ms = summary["ms"]
    ax1.plot(ms, [cons.reference_rate(m) for m in ms], "--", color="0.5", label="log(m)/m")
    ax1.set_xlabel("number of blocks m")
    ax1.set_title("max_i ||h_i - W_i||_L")
    ax1.legend(fontsize="small")
    ax2.set_yscale("log")
    ax2.set_xscale("log")
    ax2.set_xlabel("block i")
    ax2.set_title(f"||h_i - W_i||_L per block, m = {max(ms)}")
    ax2.grid(True, which="both", linestyle=":", linewidth=0.5)
    ax2.legend(fontsize="small")
    files.append(savefig(fig, run_dir / "theorem_lipschitz_gap.png").name)
    return files


@hydra_app("theorem")
def main(cfg: DictConfig, run_dir: Path) -> dict:
    c = check_config(cfg)
    save_config(cfg, run_dir)
    # the geodesic direction S of the W_i, shared by every h
    S = cons.unit_skew(c["dim"], torch.Generator().manual_seed(c["seed"]))
    summary = {
        "claim": "h = h_m o ... o h_1 on B_R with ||h_i - W_i||_L and ||I - W_i|| = O(log(m)/m)",
        "construction": "a_i = (1-c)^(m-i), c = c_scale log(m)/m; g_i = W_i^T h(a_i W_i .)/a_i, g_0 = Id; "
                        "h_i = g_i o g_(i-1)^(-1); W_i = expm(C (a_i - a_(i-1)) S)",
        "ms": c["ms"],
        "maps": {},
    }
    bar = progress_bar(total=len(c["maps"]) * len(c["ms"]), enabled=c["progress"], desc="theorem")
    try:
        for name, spec in c["maps"].items():
            summary["maps"][name] = run_map(name, spec, S, c, bar)
    finally:
        bar.close()
    summary["figures"] = draw(summary, run_dir)
    write_json(run_dir / "summary.json", summary)  # last: its presence means a finished run
    return summary


if __name__ == "__main__":
    main()
