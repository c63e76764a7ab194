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
from typing import Any

import numpy as np
import torch

from ..analysis import rates
from ..maths import construction as cons
from ..rundir import RunDir, column
from ..runs import UserError, check_memory, progress_bar
from ._app import App, check_seed, ints_at_least, number, require


@dataclass
class MapSpec:
    """h(x) = A x + eps tanh(B x), A = L - eps B, L = expm(angle S_L) diag(stretch^linspace(-1, 1, d))."""

    angle: float
    stretch: float
    eps: float

    @classmethod
    def of(cls, name: str, value: Any) -> "MapSpec":
        """``maps.<name>`` as given: a MapSpec, or a mapping of exactly its three numbers (how a
        map added on the command line arrives: ``+maps.x={angle:1,stretch:1,eps:0.1}``)."""
        if isinstance(value, cls):
            return value
        fields = ("angle", "stretch", "eps")
        if not isinstance(value, dict):
            raise UserError(f"maps.{name} must be {{angle: ..., stretch: ..., eps: ...}}; got {value!r}")
        unknown = [k for k in value if k not in fields]
        if unknown:
            raise UserError(f"unknown key 'maps.{name}.{unknown[0]}'; allowed in maps.{name}: {', '.join(fields)}")
        missing = [f for f in fields if f not in value]
        if missing:
            raise UserError(f"maps.{name} lacks {', '.join(missing)} (a map is {{angle: ..., stretch: ..., eps: ...}})")
        for f in fields:
            require(isinstance(value[f], (int, float)) and not isinstance(value[f], bool), f"maps.{name}.{f}",
                    "a number", value[f])
        return cls(**{f: float(value[f]) for f in fields})


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
    # name -> MapSpec; typed Any so that Hydra can add one (OmegaConf refuses a dict into a MapSpec slot)
    maps: dict[str, Any]

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
        check_seed("seed", self.seed)
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
        self.maps = {name: MapSpec.of(name, spec) for name, spec in self.maps.items()}
        for name, spec in self.maps.items():
            # radians; far past 1e6 expm(angle S_L) is no longer finite in float64 (1e20 failed in the SVD)
            number(f"maps.{name}.angle", spec.angle, -1e6, high=1e6)
            number(f"maps.{name}.stretch", spec.stretch, 1e-6, high=1e6)
            number(f"maps.{name}.eps", spec.eps, 0)
            s_min = min(spec.stretch, 1.0 / spec.stretch)
            if spec.eps >= s_min:
                raise UserError(f"maps.{name}.eps must be < min(stretch, 1/stretch) = {s_min:g} so that h is "
                                f"invertible; got {spec.eps}")


GAP, GAP_REST = "max_i ||h_i - W_i||_L", "max_{i>1} ||h_i - W_i||_L"
# the per-map figure's two gaps coincide where block 1 is not the worst: the first drawn wide
# and translucent under the second, thin, so both stay visible
GAP_STYLES = {f"{GAP} (wide)": {"linewidth": 5, "alpha": 0.35},
              f"{GAP_REST} (thin; on the wide line where block 1 is not the worst)": {"linewidth": 1.2}}
# the combined figure's maps, which coincide from block 2 on: wide under medium under thin dashed
MAP_STYLES = ({"linewidth": 5, "alpha": 0.35}, {"linewidth": 2}, {"linewidth": 1, "linestyle": (0, (4, 2))})
NORM_LABEL = "norm (no unit) or\ncomposition error (units of x)"


def reference(ms: list[int], values: list[float]) -> tuple[list[float] | None, int | None]:
    """log(m)/m at ``ms`` scaled to meet ``values`` at the first m where log(m)/m > 0 (m = 1
    has log(m)/m = 0), and that m; (None, None) where there is none or the value there is missing."""
    ref = [cons.reference_rate(m) for m in ms]
    at = next((k for k, f in enumerate(ref) if f > 0 and values[k] is not None and values[k] > 0), None)
    if at is None:
        return None, None
    return [values[at] / ref[at] * f for f in ref], ms[at]


def flat_note(ms) -> str | None:
    """Why every curve is flat from m = 2 to m = 4 (it looks like a bug): log(m)/m, and so
    c = c_scale log(m)/m, is the same at both; None where ms holds not both."""
    if 2 in ms and 4 in ms:
        return "flat from m = 2 to 4: log(m)/m, hence c = c_scale log(m)/m, is the same at both (log 2 / 2 = log 4 / 4)"
    return None


def agreement(curves: list[list[float]]) -> float:
    """max over blocks i >= 2 of (largest / smallest) of the maps' ||h_i - W_i||_L, curves
    (maps, m) (1.0 for one map; nan where a value is not positive or the lengths differ)."""
    if len({len(c) for c in curves}) != 1:
        return float("nan")
    a = np.asarray(curves, dtype=float)[:, 1:]
    return float((a.max(0) / a.min(0)).max()) if a.size and np.all(a > 0) else float("nan")


def _last(values) -> float:
    """The last value, inf where it is missing (the map that decays most is the least)."""
    return float("inf") if values[-1] is None else float(values[-1])


def draw(summary: dict, run_dir: Path) -> list[str]:
    from matplotlib.lines import Line2D

    from ..plots import loglog_rates, plain_log_labels, plt, savefig

    files = []
    for name, res in summary["maps"].items():
        rows = res["rows"]
        ms = [r["m"] for r in rows]
        gap_label, rest_label = GAP_STYLES
        gaps = [r["lipschitz_gap"] for r in rows]
        ref, at = reference(ms, gaps)
        fig, ax = plt.subplots(figsize=(5.5, 5.2), layout="constrained")
        loglog_rates(
            ax, ms,
            {
                "composition error (units of x)": [r["composition_error"] for r in rows],
                gap_label: gaps,
                rest_label: [r["lipschitz_gap_rest"] for r in rows],
                "max_i ||I - W_i||": [r["identity_distance"] for r in rows],
            },
            reference=ref,
            reference_label=f"log(m)/m (scaled to meet {GAP} at m = {at})",
            styles=GAP_STYLES,
        )
        h = res["h"]
        ax.set_title(f"{name}: ||Dh(0) - I|| = {h['dh0_identity_distance']:.3g}, eps = {h['eps']:g}", fontsize=10)
        ax.set_xlabel("number of blocks m")
        ax.set_ylabel(NORM_LABEL)
        handles, labels = ax.get_legend_handles_labels()
        if flat_note(ms):  # below the legend, as a line of it (a figure text would overlap it)
            handles.append(Line2D([], [], linestyle="none"))
            labels.append(flat_note(ms))
        fig.legend(handles, labels, loc="outside lower center", ncols=1, fontsize="small")
        files.append(savefig(fig, run_dir / f"theorem_{name}.png").name)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    lowest, per_block = None, []
    for k, (name, res) in enumerate(summary["maps"].items()):
        ms = [r["m"] for r in res["rows"]]
        gaps = [r["lipschitz_gap"] for r in res["rows"]]
        style = MAP_STYLES[k % len(MAP_STYLES)]
        loglog_rates(ax1, ms, {name: gaps}, styles={name: {"color": f"C{k}"}})
        blocks = res["per_block"]
        ax2.plot(range(1, blocks["m"] + 1), blocks["lipschitz_gap"], label=name, color=f"C{k}", **style)
        per_block.append(blocks["lipschitz_gap"])
        if lowest is None or _last(gaps) < _last(lowest[1]):
            lowest = (name, gaps, ms)
    name, gaps, ms = lowest
    ref, at = reference(ms, gaps)
    if ref is not None:  # as in the per-map figures: through the map that decays, at its first m
        ax1.plot(ms, ref, "--", color="0.5", label=f"log(m)/m (scaled to meet {name} at m = {at})")
    ax1.set_xlabel("number of blocks m")
    ax1.set_ylabel(f"{GAP} (no unit)")
    ax1.set_title(f"{GAP} against m")
    ax1.legend(fontsize="small")
    ax2.set_yscale("log")
    ax2.set_xscale("log")
    plain_log_labels(ax2, "xy")
    ax2.set_xlabel("block i")
    ax2.set_ylabel("||h_i - W_i||_L (no unit)")
    m = max(summary["ms"])
    agree = agreement(per_block)
    ax2.set_title(f"||h_i - W_i||_L per block, m = {m}")
    ax2.grid(True, which="both", linestyle=":", linewidth=0.5)
    ax2.legend(fontsize="small", title=(f"from block 2 on within ×/÷ {agree:.2g}\nof one another: only block 1 carries Dh(0)"
                                        if len(per_block) > 1 and agree < 1.5 else None), title_fontsize="small")
    if flat_note(summary["ms"]):
        fig.supxlabel(flat_note(summary["ms"]), fontsize=7, color="0.35", x=0.01, ha="left")
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
            "composition error: max over the sample points of ||h_m o ... o h_1 (x) - h(x)||, a length in the "
            "units of x",
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
        "captions": {f: ("all maps at once: the gap max_i ||h_i - W_i||_L of each map against m, beside log(m)/m "
                         "(left), and ||h_i - W_i||_L per block i at m = " + str(m) + " (right). Only block 1 carries "
                         "Dh(0), so a map far from I near 0 keeps a gap there that no depth removes")
                     if f == "theorem_lipschitz_gap.png" else
                     (f"one map h ({f[len('theorem_'):-len('.png')]}): its errors against m on log-log axes "
                      "beside log(m)/m; the theorem's rate holds where a curve falls at least as fast as the "
                      "dashed line") for f in figures},
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
