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
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..analysis import rates
from ..maths import construction as cons
from ..rundir import RunDir, column
from ..runs import UserError, check_memory, progress_bar
from ._app import App, ints_at_least, number, require


@dataclass
class MapSpec:
    """h(x) = A x + eps tanh(B x), A = L - eps B, L = expm(angle S_L) diag(stretch^linspace(-1, 1, d))."""

    angle: float
    stretch: float
    eps: float


@dataclass
class Config:
    dim: int
    radius: float
    ms: list[int]
    c_scale: float
    rotation_scale: float
    last_skip_identity: bool
    n_points: int
    n_pairs: int
    pair_distance: float
    slope_tolerance: float
    exact_tolerance: float
    seed: int
    progress: bool
    maps: dict[str, MapSpec]

    def check(self) -> None:
        require(self.dim >= 2, "dim", "an integer >= 2", self.dim)
        number("radius", self.radius, 0, strict=True)
        number("c_scale", self.c_scale, 0, strict=True)
        number("rotation_scale", self.rotation_scale, 0)
        require(self.n_points >= 1, "n_points", "an integer >= 1", self.n_points)
        require(self.n_pairs >= 2, "n_pairs", "an integer >= 2", self.n_pairs)
        number("pair_distance", self.pair_distance, 0, strict=True, high=1.0)
        number("slope_tolerance", self.slope_tolerance, 0)
        number("exact_tolerance", self.exact_tolerance, 0, strict=True)
        require(self.seed >= 0, "seed", "an integer >= 0", self.seed)
        require(len(self.ms) > 0, "ms", "a non-empty list of integers >= 1", self.ms)
        for m in self.ms:
            if m < 1:
                raise UserError(f"every m in ms must be an integer >= 1; got {m!r}")
            if self.c_scale * math.log(m) / m >= 1.0:
                raise UserError(f"c = c_scale * log(m) / m must be < 1; c_scale={self.c_scale} gives "
                                f"{self.c_scale * math.log(m) / m:.3g} at m={m}")
        self.ms = ints_at_least("ms", self.ms, 1)
        # float64 W_0..W_m (m + 1, d, d) and the Jacobians at the n_points points (N, d, d) of one block
        check_memory(f"dim={self.dim} with m up to {self.ms[-1]} and n_points={self.n_points}",
                     8 * (self.ms[-1] + 1 + self.n_points) * self.dim ** 2)
        require(len(self.maps) > 0, "maps", "a non-empty mapping name -> {angle, stretch, eps}", self.maps)
        for name, spec in self.maps.items():
            number(f"maps.{name}.angle", spec.angle)
            number(f"maps.{name}.stretch", spec.stretch, 0, strict=True)
            number(f"maps.{name}.eps", spec.eps, 0)
            s_min = min(spec.stretch, 1.0 / spec.stretch)
            if spec.eps >= s_min:
                raise UserError(f"maps.{name}.eps must be < min(stretch, 1/stretch) = {s_min:g} so that h is "
                                f"invertible; got {spec.eps}")


def draw(summary: dict, run_dir: Path) -> list[str]:
    from ..plots import loglog_rates, plain_log_labels, plt, savefig

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
        ax.set_ylabel("distance or norm (no unit)")
        ax.legend(fontsize="small")
        files.append(savefig(fig, run_dir / f"theorem_{name}.png").name)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
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
    plain_log_labels(ax2, "xy")
    ax2.set_xlabel("block i")
    ax2.set_title(f"||h_i - W_i||_L per block, m = {max(ms)}")
    ax2.grid(True, which="both", linestyle=":", linewidth=0.5)
    ax2.legend(fontsize="small")
    files.append(savefig(fig, run_dir / "theorem_lipschitz_gap.png").name)
    return files


def report(summary: dict, figures: list[str], cfg: Config) -> dict:
    rows = []
    for name, res in summary["maps"].items():
        sl, ch = res["slopes"], res["checks"]
        rows.append({"map": name, "dh0": res["h"]["dh0_identity_distance"], "eps": res["h"]["eps"],
                     "gap_last": res["rows"][-1]["lipschitz_gap"], "id_last": res["rows"][-1]["identity_distance"],
                     "slope_gap": sl["lipschitz_gap"], "slope_id": sl["identity_distance"],
                     "slope_ref": sl["reference_log_m_over_m"], "gap_ok": ch["lipschitz_gap_at_rate"],
                     "id_ok": ch["identity_distance_at_rate"], "exact": ch["composition_exact"]})
    m = max(summary["ms"])
    return {
        "title": "The decomposition theorem's construction, numerically",
        "question": "does h = h_m o ... o h_1 hold with ||h_i - W_i||_L and ||I - W_i|| shrinking like log(m)/m?",
        "measures": [
            f"maps h: R^d -> R^d, d = {cfg.dim}, h(x) = A x + eps tanh(B x) with A = L - eps B, so h(0) = 0 and "
            "Dh(0) = L = expm(angle S_L) diag(stretch^linspace(-1, 1, d)); ||Dh(0) - I||_2 says how far h is from "
            "the identity near 0",
            "construction (after Bartlett, Evans & Long 2018): a_i = (1 - c)^(m - i), c = c_scale log(m)/m; "
            "g_i = W_i^T h(a_i W_i .) / a_i; blocks h_i = g_i o g_(i-1)^(-1); W_i = expm(C (a_i - a_(i-1)) S)",
            f"||h_i - W_i||_L: the Lipschitz constant of h_i - W_i on the ball of radius R = {cfg.radius:g}, the "
            f"larger of a Jacobian estimate at {cfg.n_points} points and difference quotients of {cfg.n_pairs} "
            "pairs; ||I - W_i||: spectral norm; both maxima over the m blocks (no unit: ratios of lengths)",
            "composition error: max over the sample points of ||h_m o ... o h_1 (x) - h(x)||",
            f"slopes: least-squares log-log slopes against m over m = {', '.join(map(str, summary['ms']))}; "
            f"'at rate': slope <= slope of log(m)/m + {cfg.slope_tolerance:g}; 'exact': composition error <= "
            f"{cfg.exact_tolerance:g} at every m",
        ],
        "tables": [{
            "caption": f"per map h: errors at m = {m} and log-log slopes against m",
            "columns": [column("map", "map h"), column("dh0", "||Dh(0) - I||_2"), column("eps", "eps (non-linearity)"),
                        column("gap_last", f"max_i ||h_i - W_i||_L at m = {m}"),
                        column("id_last", f"max_i ||I - W_i|| at m = {m}"),
                        column("slope_gap", "slope of max_i ||h_i - W_i||_L"),
                        column("slope_id", "slope of max_i ||I - W_i||"),
                        column("slope_ref", "slope of log(m)/m"), column("gap_ok", "||h_i - W_i||_L at rate"),
                        column("id_ok", "||I - W_i|| at rate"), column("exact", "composition exact")],
            "rows": rows,
        }],
        "verdict": rates.verdict(summary["maps"]),
        "figures": figures,
    }


def run(cfg: Config, rd: RunDir) -> dict:
    rd.start(cfg)
    rd.device = "cpu"
    # the geodesic direction S of the W_i, shared by every h
    S = cons.unit_skew(cfg.dim, torch.Generator().manual_seed(cfg.seed))
    summary = {
        "claim": "h = h_m o ... o h_1 on B_R with ||h_i - W_i||_L and ||I - W_i|| = O(log(m)/m)",
        "construction": "a_i = (1-c)^(m-i), c = c_scale log(m)/m; g_i = W_i^T h(a_i W_i .)/a_i, g_0 = Id; "
                        "h_i = g_i o g_(i-1)^(-1); W_i = expm(C (a_i - a_(i-1)) S)",
        "ms": cfg.ms,
        "maps": {},
    }
    bar = progress_bar(total=len(cfg.maps) * len(cfg.ms), enabled=cfg.progress, desc="theorem")
    options = {k: getattr(cfg, k) for k in ("dim", "radius", "seed", "n_points", "n_pairs", "pair_distance",
                                            "c_scale", "rotation_scale", "last_skip_identity", "slope_tolerance",
                                            "exact_tolerance")}
    try:
        for name, spec in cfg.maps.items():
            def on_m(m, name=name):
                bar.set_postfix_str(f"{name} m={m}")
                bar.update()

            spec = {"angle": spec.angle, "stretch": spec.stretch, "eps": spec.eps}
            summary["maps"][name] = rates.measure_map(name, spec, S, cfg.ms, on_m=on_m, **options)
    finally:
        bar.close()
    summary["figures"] = draw(summary, rd.path)
    summary["report"] = report(summary, summary["figures"], cfg)
    return summary


main = App("theorem", Config, run)

if __name__ == "__main__":
    sys.exit(main())
