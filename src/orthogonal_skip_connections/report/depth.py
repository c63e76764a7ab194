"""Skip distance vs depth: the OrthResNet theorem's question asked of image classifiers.

The theorem's construction puts each skip W_i at ||I - W_i|| = O(log m / m) from I in a net
of m blocks (paper Theorem 1, after Bartlett, Evans & Long 2018, arXiv 1804.05012), so in a
deep enough net learned orthogonal skips "should" approach I. When the classifier runs of
one dataset differ only in the depth of one CIFAR ResNet family (resnet20/32/44/56/110, or
their preact_ versions; same settings, run.json's labels), ``depth_tables`` lays out, per
skip variant: the final mean ||W_i - I||_F over the blocks (per seed, then its 95%
t-interval over seeds) at each depth, with the accuracy beside it (a distance trend from a
net that did not train means nothing), and the per-seed log-log slope of that mean against
the number of blocks m, with its t-interval over seeds (and the same for the spectral
||W_i - I||_2 of the eval records, the theorem's norm), next to the slope of log(m)/m over
the same m (-0.67 over all five depths, m = 9, 15, 21, 27, 54; a rate of m^-p has slope
-p). ``profile_rows`` gives the per-block profile: first and last block, and the mean per
stage (a stage's blocks share one width n, and ||W - I||_F of an n x n matrix grows like
sqrt(n), so stages are compared only among themselves across depths).

m is the number of skips a run's last evaluation lists (metrics.jsonl's ``skips``, read by
``find_runs`` into ``RunRecord.skips``: one per residual block, 3 (depth - 2) / 6 for the CIFAR
ResNets).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ..maths.construction import ZERO_DISTANCE, loglog_slope, reference_rate
from ..models.resnet import CIFAR_DEPTHS, PREACT_CIFAR_DEPTHS
from ..plots import loglog_rates, plt, savefig
from ..analysis.stats import t_interval, t_interval_within
from .classification import RunRecord, _variant_order, interval

__all__ = ["depth_groups", "depth_tables", "profile_rows", "depth_markdown", "depth_figure"]

_FAMILY = {**{k: ("resnet", v) for k, v in CIFAR_DEPTHS.items()},
           **{k: ("preact_resnet", v) for k, v in PREACT_CIFAR_DEPTHS.items()}}


def depth_groups(runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Completed ``add`` runs grouped by (dataset, CIFAR ResNet family, settings): the groups
    whose runs come at two or more depths. The key names them: "digits/resnet{20,32,56}"
    (plus the task's settings suffix, if any)."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        fam = _FAMILY.get(r.labels.get("model_type"))
        if fam is None or r.status != "completed" or r.residual_mode != "add":
            continue
        suffix = r.task.split(" ", 1)[1] if " " in r.task else ""  # "[optimizer.name=adamw]" from _split_by_settings
        groups.setdefault((r.labels["dataset"], fam[0], suffix), []).append(r)
    out = {}
    for (dataset, family, suffix), rs in sorted(groups.items()):
        depths = sorted({_FAMILY[r.labels["model_type"]][1] for r in rs})
        if len(depths) >= 2:
            key = f"{dataset}/{family}{{{','.join(map(str, depths))}}}" + (f" {suffix}" if suffix else "")
            out[key] = rs
    return out


def _per_run(r: RunRecord) -> dict | None:
    """m, the per-block distances (None for a block without a matrix) and the accuracy of one run."""
    skips = r.skips  # read with the run (find_runs)
    if not skips:
        return None
    return {"m": len(skips), "seed": r.labels["seed"], "acc": r.summary.get("test_acc"),
            "names": [s.get("name", "") for s in skips],
            "dist": [s.get("identity_distance") for s in skips],
            "spectral": [s.get("identity_distance_spectral") for s in skips]}


def _seed_means(ps: list[dict], key: str) -> dict[int, dict]:
    """m -> {seed: mean over the blocks of ``key``} for runs whose every block has it (or the
    run's ``key`` itself where it is a number, the accuracy); runs of one seed and depth (a
    sweep over a setting the variant ignores) are averaged: one sample per seed."""
    runs: dict[int, dict] = {}
    for p in ps:
        v = p[key]
        if isinstance(v, list):
            d = [x for x in v if x is not None]
            v = float(np.mean(d)) if d and len(d) == len(v) else None
        if v is not None:
            runs.setdefault(p["m"], {}).setdefault(p["seed"], []).append(v)
    return {m: {seed: float(np.mean(v)) for seed, v in by_seed.items()} for m, by_seed in runs.items()}


def _zero_at(dist: dict[int, dict]) -> list[int]:
    """The depths m at which some seed's distance is 0 (at most ZERO_DISTANCE)."""
    return [m for m in sorted(dist) if any(v <= ZERO_DISTANCE for v in dist[m].values())]


def _slopes(dist: dict[int, dict]) -> list[float]:
    """The per-seed log-log slopes of the distance against m, for the seeds present at every m;
    none where the distance is 0 at some depth (a slope over the other depths would hide it)."""
    ms = sorted(dist)
    if len(ms) < 2 or _zero_at(dist):
        return []
    seeds = sorted(set.intersection(*[set(dist[m]) for m in ms]))
    slopes = [loglog_slope(ms, [dist[m][seed] for m in ms]) for seed in seeds]
    return [x for x in slopes if x is not None]


def depth_tables(groups: dict[str, list[RunRecord]]) -> dict[str, list[dict]]:
    """Per group, one row per skip variant: ``ms`` (blocks per depth), per depth the mean over
    seeds and 95% t-interval of the per-seed mean ||W_i - I||_F (NaN for variants without
    a skip matrix; the interval clipped at 0, ``dist_ci_clipped`` saying which end was cut,
    (low, high) as the classification table's) and of the accuracy (clipped to [0, 100],
    ``acc_ci_clipped``), the seeds; the mean log-log slope of the per-seed distance against m (seeds present at every depth), its t-interval, and the slope of
    log(m)/m over the same m; ``zero_at``, the depths where a seed's distance is 0 (then no
    slope is taken)."""
    out = {}
    for key, rs in groups.items():
        per = [(r.variant, p) for r in rs if (p := _per_run(r)) is not None]
        ms = sorted({p["m"] for _, p in per})
        rows = []
        for variant in _variant_order([v for v, _ in per]):
            ps = [p for v, p in per if v == variant]
            dist = _seed_means(ps, "dist")  # m -> {seed: mean distance}
            acc = _seed_means(ps, "acc")
            has = bool(dist)
            cells = []
            for m in ms:
                # a distance is never negative, an accuracy within [0, 100]: say where an interval was cut
                dm, dlo, dhi, clipped = t_interval_within(list(dist.get(m, {}).values()) if has else [], 0.0)
                am, alo, ahi, acc_clipped = t_interval_within(list(acc.get(m, {}).values()), 0.0, 100.0)
                cells.append({"m": m, "seeds": len(acc.get(m, {})), "dist_mean": dm, "dist_lo": dlo, "dist_hi": dhi,
                              "dist_ci_clipped": clipped, "acc_mean": am, "acc_lo": alo, "acc_hi": ahi,
                              "acc_ci_clipped": acc_clipped})
            dms = [m for m in ms if m in dist]
            slopes = _slopes(dist)
            sm, slo, shi = t_interval(slopes) if slopes else (math.nan,) * 3
            zero_at = _zero_at(dist)
            spectral = _slopes(_seed_means(ps, "spectral"))  # ||I - W_i||_2, the theorem's own norm
            pm, plo, phi = t_interval(spectral) if spectral else (math.nan,) * 3
            rows.append({"group": key, "variant": variant, "ms": ms, "cells": cells, "has_matrix": has,
                         "zero_at": zero_at, "slope": sm, "slope_lo": slo, "slope_hi": shi, "slope_seeds": len(slopes),
                         "spectral_slope": pm, "spectral_slope_lo": plo, "spectral_slope_hi": phi,
                         "reference_slope": loglog_slope(dms, [reference_rate(m) for m in dms]) if len(dms) >= 2
                         else None})
        out[key] = rows
    return out


# accuracy points below the variant's best depth from which a depth counts as not trained
UNTRAINED_GAP = 10.0


def _untrained_depths(t: dict) -> dict[int, float]:
    """m -> mean accuracy of the depths UNTRAINED_GAP points or more below the best depth's."""
    accs = {c["m"]: c["acc_mean"] for c in t["cells"] if not math.isnan(c["acc_mean"])}
    best = max(accs.values(), default=math.nan)
    return {m: a for m, a in accs.items() if a <= best - UNTRAINED_GAP}


def _untrained(t: dict) -> str:
    """'; m = 27 trained to 44% (best depth 98%): read the trend with care' for the depths whose
    mean accuracy is UNTRAINED_GAP points or more below the best depth's, else ''."""
    low = _untrained_depths(t)
    if not low:
        return ""
    best = max(c["acc_mean"] for c in t["cells"] if not math.isnan(c["acc_mean"]))
    return f"; {', '.join(f'm = {m} trained to {a:.0f}%' for m, a in low.items())} (best depth {best:.0f}%): " \
           "read the trend with care"


def _stages(names: list[str]) -> list[str]:
    """Each skip's stage: its name up to its block index ('stages.1.0.skip' -> 'stages.1'), so
    the per-block figure does not join blocks of 16 and 32 channels into one curve."""
    out = []
    for name in names:
        parts = name.split(".")
        idx = [k for k, x in enumerate(parts) if x.isdigit()]
        out.append(".".join(parts[:idx[-1]]) if idx else "")
    return out


def _trend(t: dict) -> str:
    """falls / rises with depth where the slope's interval excludes 0, else no clear trend;
    with a caveat where a depth trained far worse than the best (:func:`_untrained`)."""
    return _direction(t) + (_untrained(t) if t["has_matrix"] else "")


def _direction(t: dict) -> str:
    if not t["has_matrix"]:
        return "no skip matrix"
    if t.get("zero_at"):
        return f"cannot tell: the distance is 0 at m = {', '.join(map(str, t['zero_at']))}: no log-log slope"
    if math.isnan(t["slope_hi"]):
        return "cannot tell (fewer than two seeds at two depths)"
    if t["slope_hi"] < 0:
        ref = t["reference_slope"]
        rate = "" if ref is None else (" at least as fast as log(m)/m" if t["slope_hi"] <= ref else
                                       " but slower than log(m)/m" if t["slope_lo"] > ref else
                                       ", its interval holding log(m)/m's slope")
        return "falls with depth" + rate
    if t["slope_lo"] > 0:
        return "rises with depth (away from I)"
    return "no clear trend (the slope's interval holds 0)"


def profile_rows(groups: dict[str, list[RunRecord]]) -> dict[str, list[dict]]:
    """Per group, per (variant with a matrix, m): mean over seeds of the first and the last
    block's ||W_i - I||_F and of each stage's mean (stages named ``stages.<k>.`` in the
    skips' names); runs of one seed (a sweep over a setting the variant ignores) are averaged
    first, one sample per seed, as in :func:`depth_tables`."""
    out = {}
    for key, rs in groups.items():
        per = [(r.variant, p) for r in rs if (p := _per_run(r)) is not None]
        rows = []
        for variant in _variant_order([v for v, _ in per]):
            for m in sorted({p["m"] for v, p in per if v == variant}):
                ps = [p for v, p in per if v == variant and p["m"] == m and all(x is not None for x in p["dist"])]
                if not ps:
                    continue
                by_seed: dict = {}  # seed -> [{"first", "last", stage k: its mean}] per run
                for p in ps:
                    by: dict[int, list[float]] = {}
                    for name, x in zip(p["names"], p["dist"]):
                        hit = re.search(r"stages\.(\d+)\.", name)
                        if hit:
                            by.setdefault(int(hit.group(1)), []).append(x)
                    run = {"first": p["dist"][0], "last": p["dist"][-1], **{k: float(np.mean(xs)) for k, xs in by.items()}}
                    by_seed.setdefault(p["seed"], []).append(run)
                seeds = [{k: float(np.mean([run[k] for run in runs])) for k in runs[0]} for runs in by_seed.values()]
                stages = sorted(k for k in seeds[0] if isinstance(k, int))
                rows.append({"variant": variant, "m": m, "seeds": len(seeds),
                             "first": float(np.mean([sd["first"] for sd in seeds])),
                             "last": float(np.mean([sd["last"] for sd in seeds])),
                             "stages": {k: float(np.mean([sd[k] for sd in seeds if k in sd])) for k in stages}})
        out[key] = rows
    return out


def _ci(mean, lo, hi, spec=".2f", clipped=(False, False)) -> str:
    """'mean [lo, hi]', an end cut at the scale's limit marked † (``clipped``: low, high)."""
    if math.isnan(mean):
        return "–"
    return f"{mean:{spec}}" + ("" if math.isnan(lo) else " " + interval(lo, hi, spec, clipped))


def depth_markdown(key: str, table: list[dict], profile: list[dict]) -> list[str]:
    """The section's tables: distance and accuracy per depth, slope vs log(m)/m's, the verdict
    per variant; then the per-block profile."""
    ms = table[0]["ms"]
    lines = ["| skip | " + " | ".join(f"m = {m}: ‖W − I‖_F [95% CI] · acc % [95% CI]" for m in ms)
             + " | log-log slope vs m [95% CI] | spectral ‖W − I‖₂'s slope | log(m)/m's slope | with depth |",
             "|---|" + "---|" * len(ms) + "---|---|---|---|"]
    for t in table:
        cells = [f"{_ci(c['dist_mean'], c['dist_lo'], c['dist_hi'], clipped=c['dist_ci_clipped'])} · "
                 f"{_ci(c['acc_mean'], c['acc_lo'], c['acc_hi'], '.1f', c['acc_ci_clipped'])}"
                 f" (n={c['seeds']})" for c in t["cells"]]
        ref = "–" if t["reference_slope"] is None else f"{t['reference_slope']:+.2f}"
        slope = _ci(t["slope"], t["slope_lo"], t["slope_hi"], "+.2f") if t["has_matrix"] else "–"
        spectral = _ci(t["spectral_slope"], t["spectral_slope_lo"], t["spectral_slope_hi"], "+.2f")
        lines.append(f"| {t['variant']} | " + " | ".join(cells) + f" | {slope} | {spectral} | {ref} | {_trend(t)} |")
    if any(c["dist_ci_clipped"][0] for t in table for c in t["cells"]):
        lines += ["", "† the t-interval reached below 0 and is clipped there: a distance is never negative."]
    if any(any(c["acc_ci_clipped"]) for t in table for c in t["cells"]):
        lines += ["", "† by an accuracy: its t-interval reached past 100% (or below 0%) and is clipped there."]
    if profile:
        n_stages = max(len(p["stages"]) for p in profile)
        lines += ["", "Per-block profile (mean over seeds of ||W_i - I||_F; a stage's blocks share one width, "
                      "so compare a stage across depths, not stages with each other):", "",
                  "| skip | m | first block | last block | " + " | ".join(f"stage {k} mean" for k in range(n_stages))
                  + " |", "|---|---|---|---|" + "---|" * n_stages]
        for p in profile:
            st = [f"{p['stages'][k]:.2f}" if k in p["stages"] else "–" for k in range(n_stages)]
            lines.append(f"| {p['variant']} | {p['m']} | {p['first']:.2f} | {p['last']:.2f} | " + " | ".join(st) + " |")
    return lines


def depth_figure(key: str, table: list[dict], groups: dict[str, list[RunRecord]], out_dir: Path) -> Path | None:
    """Left: mean ||W - I||_F against m (log-log, error bars the 95% t-interval over seeds)
    per variant with a matrix, and log(m)/m scaled through the first variant's first point.
    Depths that did not train (:func:`_untrained_depths`) get hollow markers. Right: the
    per-block distance against the block's place in the net (i / m), one line per depth and
    stage (mean over seeds), one panel per variant."""
    rows = [t for t in table if t["has_matrix"]]
    if not rows:
        return None
    per = [(r.variant, p) for r in groups[key] if (p := _per_run(r)) is not None]
    fig, axes = plt.subplots(1, 1 + len(rows), figsize=(4.2 * (1 + len(rows)), 3.6), squeeze=False,
                             layout="constrained")
    ax = axes[0, 0]
    ms = rows[0]["ms"]
    first = rows[0]["cells"][0]["dist_mean"]
    ref = [first * reference_rate(m) / reference_rate(ms[0]) for m in ms] if first > 0 else None
    loglog_rates(ax, ms, {t["variant"]: [c["dist_mean"] for c in t["cells"]] for t in rows}, reference=ref,
                 reference_label="log(m)/m (scaled)")
    for line, t in zip(ax.get_lines(), rows):
        c = t["cells"]
        y = np.array([x["dist_mean"] for x in c])
        lo = np.array([x["dist_lo"] for x in c])
        hi = np.array([x["dist_hi"] for x in c])
        if np.all(np.isfinite(lo)):
            ax.errorbar(ms, y, yerr=[y - lo, hi - y], fmt="none", ecolor=line.get_color(), capsize=2)
        low = _untrained_depths(t)  # a depth that did not train: its distance says nothing of depth
        if low:
            ax.scatter([m for m in ms if m in low], [y[k] for k, m in enumerate(ms) if m in low], s=40,
                       facecolors="white", edgecolors=line.get_color(), zorder=3)
    if any(_untrained_depths(t) for t in rows):
        ax.scatter([], [], s=40, facecolors="white", edgecolors="0.3", label="did not train (read with care)")
    ax.set_xlabel("blocks m")
    ax.set_ylabel("mean ||W_i - I||_F at the end")
    ax.legend(fontsize=7)
    ax.set_title(f"{key}\nskip distance vs depth", fontsize=9)
    cmap = plt.get_cmap("viridis")
    for ax, t in zip(axes[0, 1:], rows):
        for k, m in enumerate(ms):
            mine = [p for v, p in per if v == t["variant"] and p["m"] == m and None not in p["dist"]]
            if not mine:
                continue
            x, y, stages = (np.arange(m) + 0.5) / m, np.mean([p["dist"] for p in mine], 0), _stages(mine[0]["names"])
            # one curve per stage: the stages' matrices differ in size (16, 32, 64 channels), and a far
            # rotation is about sqrt(2 C) from I, so a line across a stage boundary would show a jump
            cuts = [0] + [i for i in range(1, m) if stages[i] != stages[i - 1]] + [m]
            for j, (a, b) in enumerate(zip(cuts, cuts[1:])):
                ax.plot(x[a:b], y[a:b], marker=".", markersize=3, color=cmap(k / max(1, len(ms) - 1)),
                        label=f"m = {m} (n={len(mine)})" if j == 0 else None)
            if k == len(ms) - 1:  # the boundaries, where every depth has them: at the same places i / m
                for a in cuts[1:-1]:
                    ax.axvline(a / m, color="0.6", linestyle=":", linewidth=0.8)
        ax.set_xlabel("block place in the net, i / m (dotted: stage boundaries)")
        ax.set_title(f"{t['variant']}: per block", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 1].set_ylabel("||W_i - I||_F (mean over seeds)")
    name = "skip_distance_vs_depth_" + re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_") + ".png"
    return savefig(fig, out_dir / name)
