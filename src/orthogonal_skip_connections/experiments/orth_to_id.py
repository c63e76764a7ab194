"""`osc orth_to_id`: do the orthogonal skips W_i of a trained residual net approach I as
depth grows?

The theorem's construction (paper Theorem 1, after Bartlett, Evans & Long 2018, arXiv
1804.05012) puts its W_i at ||I - W_i|| = O(log m / m) from the identity; trained networks
need not. For every dataset, dimension d and depth m this app trains ``seeds`` ResidualMLP
classifiers at once (:mod:`~orthogonal_skip_connections.train.small`) and records, per
block i along training, ||W_i - I||_F, sign det W_i and the Lipschitz constant of the
residual branch f_i (the product-of-spectral-norms bound and the largest Jacobian norm over
training points). The summary answers per (dataset, d) about what training did: how far it
moved the W_i towards I (start - end, with its 95% interval over seeds) and whether the part
of the start distance left (end / start) falls with m at a rate comparable with log(m)/m's;
the end distances alone would inherit their depth trend from the Haar starting points.

    python -m orthogonal_skip_connections.experiments.orth_to_id
    osc orth_to_id dims=[2,16,64] n_blocks=[2,4,8,16] skip.init=identity

Writes config.yaml, summary.json, trajectories.npz and figures into the run dir.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..analysis.depth import answer, by_depth, measure_blocks, verdict
from ..analysis.stats import near_chance
from ..data.synthetic import make_synthetic
from ..diagnostics import skip_matrices
from ..models.stack import SeedStack
from ..rundir import RunDir, column
from ..skips import SKIP_KINDS
from ..runs import UserError, progress_bar, resolve_device, write_npz
from ..train.classifier import Diverged
from ..train.small import steps_per_epoch, train_small_classifier
from ._app import (MAX_SEED, App, SkipOptions, SmallTraining, check_residual_mlp_memory, check_seed,
                   check_synthetic_data, ints_at_least, number, one_of, require, residual_mlp_factory)

DATASETS = ("blobs", "parity")
MATRIX_KINDS = ("learnable_orth", "fixed_orth", "linear", "random", "scalar", "idempotent")
SERIES = ("identity_distance", "lipschitz_bound", "lipschitz_empirical", "orth_error", "det_sign")


@dataclass
class BlobsConfig:
    num_classes: int
    clusters_per_class: int
    separation: float
    noise: float


@dataclass
class ParityConfig:
    num_classes: int
    bits: int
    noise: float


@dataclass
class Skip(SkipOptions):
    kind: str


@dataclass
class Config(SmallTraining):
    datasets: list[str]
    dims: list[int]
    n_blocks: list[int]
    seeds: int
    seed: int
    n_samples: int
    test_fraction: float
    blobs: BlobsConfig
    parity: ParityConfig
    hidden_mult: float
    activation: str
    skip: Skip
    log_points: int
    lipschitz_points: int
    slope_fraction: float
    pca_grid: int
    device: str

    def check(self) -> None:
        self.check_training()
        self.datasets = one_of("datasets", self.datasets, DATASETS)
        if self.skip.kind not in MATRIX_KINDS:
            what = "has no matrix W_i to compare with I" if self.skip.kind in SKIP_KINDS else "is not a skip kind"
            raise UserError(f"skip.kind={self.skip.kind!r} {what}; "
                            f"allowed: {', '.join(MATRIX_KINDS)}")
        self.dims = ints_at_least("dims", self.dims, 2)
        self.n_blocks = ints_at_least("n_blocks", self.n_blocks, 1)
        require(self.seeds >= 1, "seeds", "an integer >= 1", self.seeds)
        check_seed("seed", self.seed, MAX_SEED - (self.seeds - 1))  # seeds seed .. seed + seeds - 1
        require(self.parity.bits >= 1, "parity.bits", "an integer >= 1", self.parity.bits)
        require(self.log_points >= 1, "log_points", "an integer >= 1", self.log_points)
        require(self.lipschitz_points >= 1, "lipschitz_points", "an integer >= 1", self.lipschitz_points)
        require(self.pca_grid >= 2, "pca_grid", "an integer >= 2", self.pca_grid)
        number("slope_fraction", self.slope_fraction, 0)
        require(self.hidden_mult > 0, "hidden_mult", "a number > 0", self.hidden_mult)
        # what the library would refuse at run time, refused here (before Hydra makes a run dir)
        resolve_device(self.device)
        for dataset in self.datasets:  # the largest models and data first, before any is built
            d, m = self.dims[-1], self.n_blocks[-1]
            check_residual_mlp_memory(f"{dataset} with dims up to {d}, n_blocks up to {m}, seeds={self.seeds}, "
                                      f"n_samples={self.n_samples}, pca_grid={self.pca_grid}", d, m, self.hidden_mult,
                                      data_args(self, dataset, d)["num_classes"], self.seeds, self.n_samples,
                                      self.pca_grid ** 2)
            for d in self.dims:
                args = data_args(self, dataset, d)
                check_synthetic_data(f"{dataset} (d={d})", dataset, **args)
                residual_mlp_factory(self, d, self.n_blocks[0], args["num_classes"], self.skip.kind)


def data_args(cfg: Config, dataset: str, dim: int) -> dict:
    """make_synthetic's arguments but the type, for ``dataset`` in ``dim`` dimensions."""
    common = dict(n_samples=cfg.n_samples, dim=dim, test_fraction=cfg.test_fraction, seed=cfg.seed)
    if dataset == "blobs":
        b = cfg.blobs
        return dict(num_classes=b.num_classes, clusters_per_class=b.clusters_per_class, separation=b.separation,
                    noise=b.noise, **common)
    p = cfg.parity
    return dict(num_classes=p.num_classes, parity_bits=min(p.bits, dim), noise=p.noise, **common)


def prepare(cfg: Config) -> dict:
    """The data of every (dataset, d), the model factory and the training config, built
    before anything is written (the options were checked by ``Config.check``)."""
    c = {
        "datasets": cfg.datasets, "dims": cfg.dims, "depths": cfg.n_blocks,
        "seeds": list(range(cfg.seed, cfg.seed + cfg.seeds)), "log_points": cfg.log_points,
        "lipschitz_points": cfg.lipschitz_points, "pca_grid": cfg.pca_grid, "slope_fraction": cfg.slope_fraction,
        "train": cfg.train_config(), "device": resolve_device(cfg.device),
    }
    c["data"] = {(ds, d): make_synthetic(ds, **data_args(cfg, ds, d)) for ds in c["datasets"] for d in c["dims"]}
    c["factory"] = lambda d, m, k: residual_mlp_factory(cfg, d, m, k, cfg.skip.kind)
    return c


def run_one(c: dict, dataset: str, dim: int, depth: int) -> tuple[dict, dict, SeedStack]:
    """Train the seeds of one (dataset, d, m); return its summary row, its trajectories
    {series: (T, S, L)} with "steps" (T,), and the trained stack."""
    data, tcfg = c["data"][(dataset, dim)], c["train"]
    stack = SeedStack.build(c["factory"](dim, depth, data.num_classes), c["seeds"]).to(c["device"])
    total = tcfg.epochs * steps_per_epoch(len(data.X_train), tcfg.batch_size)
    X_lip = data.X_train[: c["lipschitz_points"]].to(c["device"])
    W_init = skip_matrices(stack)  # (S, L, n, n)
    try:
        result = train_small_classifier(
            stack, data.X_train, data.y_train, tcfg, data.X_test, data.y_test,
            log_every=max(1, total // c["log_points"]), measure=lambda st: measure_blocks(st, X_lip),
            desc=f"{dataset} d={dim} m={depth}",
        )
    except Diverged as err:
        raise err.within(f"{dataset} d={dim} m={depth}") from None
    travelled = torch.linalg.matrix_norm(skip_matrices(stack) - W_init)  # ||W_end - W_init||_F, (S, L)
    hist = result["history"]
    traj = {"steps": np.array([h["step"] for h in hist])}
    for key in SERIES:
        traj[key] = np.stack([h[key].cpu().numpy() for h in hist])  # (T, S, L)
    first, last = ({k: v.cpu().numpy() for k, v in h.items() if k != "step"} for h in (hist[0], hist[-1]))
    row = {
        "dataset": dataset, "dim": dim, "n_blocks": depth, "num_classes": data.num_classes,
        "seeds": result["seeds"], "steps": result["steps"], "train_time_s": result["train_time_s"],
        "train_acc": result["train_acc"], "test_acc": result["test_acc"],
        # per seed (rows) and block (columns)
        "initial_identity_distance": first["identity_distance"],
        "final_identity_distance": last["identity_distance"],
        "final_lipschitz_bound": last["lipschitz_bound"],
        "final_lipschitz_empirical": last["lipschitz_empirical"],
        "initial_det_sign": first["det_sign"].astype(int),
        "final_det_sign": last["det_sign"].astype(int),
        "travelled": travelled.cpu().numpy(),
        "orth_error_max": float(traj["orth_error"].max()),
    }
    return row, traj, stack


def draw(c: dict, rows: list[dict], trajs: dict, table: list[dict], models: dict, run_dir: Path) -> list[str]:
    from matplotlib.lines import Line2D

    from ..analysis.depth import corrected_distance
    from ..analysis.stats import seed_sd, t_interval
    from ..maths.construction import reference_rate
    from ..plots import (block_colorbar, block_curves, class_legend, decision_regions, pca_plane, plain_log_labels,
                         plane_grid, plt, savefig, ticks_at)

    files = []
    depth = max(c["depths"])
    for ds in c["datasets"]:
        fig, axes = plt.subplots(len(c["dims"]), 4, figsize=(18, 3.3 * len(c["dims"])), squeeze=False,
                                 layout="constrained")
        for row_axes, d in zip(axes, c["dims"]):
            t = trajs[(ds, d, depth)]
            steps = t["steps"]
            ys = lambda k: np.moveaxis(t[k], 0, 1)  # noqa: E731  (T, S, L) -> (S, T, L)
            # what training did to each W_i: a seed's Haar start is a random sqrt(2d)-ish distance
            # from I, and averaging the distances themselves over seeds would show those draws; the
            # table's sign: start - now, > 0 towards I
            moved = ys("identity_distance")[:, :1] - ys("identity_distance")  # (S, T, L)
            scale = block_curves(row_axes[0], steps, moved)
            row_axes[0].axhline(0, color="0.4", linewidth=0.8, linestyle=":")
            row_axes[0].set_ylabel(f"d = {d}\nmoved towards I: its start\n- ||W_i - I||_F (> 0: towards I)")
            block_curves(row_axes[1], steps, ys("lipschitz_bound"), log=True)
            row_axes[1].set_ylabel("Lip(f_i): product bound")
            block_curves(row_axes[2], steps, ys("lipschitz_empirical"), log=True)
            row_axes[2].set_ylabel("Lip(f_i): max ||Df_i|| on data")
            mean_w, mean_l = moved.mean(0), t["lipschitz_empirical"].mean(1)  # (T, L) each
            colors = scale.cmap(np.arange(depth))
            for i in range(depth):
                row_axes[3].plot(mean_l[:, i], mean_w[:, i], color=colors[i], linewidth=1)
                row_axes[3].scatter(mean_l[0, i], mean_w[0, i], facecolors="none", edgecolors=colors[i], s=14)
                row_axes[3].scatter(mean_l[-1, i], mean_w[-1, i], color=colors[i], s=14)
            row_axes[3].axhline(0, color="0.4", linewidth=0.8, linestyle=":")
            for ax in row_axes[1:3]:
                plain_log_labels(ax, "y", sparse=True)
            row_axes[3].set_xlabel("Lip(f_i) on data (circle: start, dot: end)")
            row_axes[3].set_ylabel("moved towards I:\nits start - ||W_i - I||_F")
            row_axes[3].grid(True, alpha=0.3)
            for ax in row_axes[:3]:
                ax.set_xlabel("step")
        fig.suptitle(f"{ds}, m = {depth} blocks: per-block trajectories (coloured: each block's mean over "
                     f"{len(c['seeds'])} seeds; black: the mean over blocks, band: ± its std over seeds; on the "
                     "log axes of Lip(f_i), geometric means)")
        block_colorbar(fig, scale, axes)
        files.append(savefig(fig, run_dir / f"orth_to_id_trajectories_{ds}.png").name)

    # what the verdict judges: end / start per seed against m, beside the theorem's rate
    fig, axes = plt.subplots(2, len(c["datasets"]), figsize=(5.5 * len(c["datasets"]), 7.4), squeeze=False,
                             layout="constrained")
    for j, ds in enumerate(c["datasets"]):
        from_identity = False
        for d in c["dims"]:
            ms, y, from_identity = corrected_distance([r for r in rows if r["dataset"] == ds and r["dim"] == d])
            mid, lo, hi = np.array([t_interval(y[:, k]) for k in range(len(ms))]).T
            line = axes[0, j].plot(ms, mid, marker="o", label=f"d = {d}")[0]
            if len(y) > 1:
                axes[0, j].fill_between(ms, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
            at = [k for k, m in enumerate(ms) if m >= 2]  # log(m)/m is 0 at m = 1: anchored at the first m >= 2
            if len(at) >= 2:
                ref = np.array([reference_rate(ms[k]) for k in at])
                axes[0, j].plot([ms[k] for k in at], mid[at[0]] * ref / ref[0], linestyle="--", linewidth=1,
                                color=line.get_color())
            rs = sorted((r for r in rows if r["dataset"] == ds and r["dim"] == d), key=lambda r: r["n_blocks"])
            lip = np.stack([np.asarray(r["final_lipschitz_empirical"]).mean(1) for r in rs], 1)
            axes[1, j].plot(ms, lip.mean(0), marker="o", color=line.get_color(), label=f"d = {d}")
            if len(lip) > 1:  # mean +- the sample sd over seeds
                sd = seed_sd(lip, axis=0)
                axes[1, j].fill_between(ms, lip.mean(0) - sd, lip.mean(0) + sd, color=line.get_color(), alpha=0.2)
        if from_identity:
            axes[0, j].set_title(f"{ds}: final ||W_i - I||_F, mean over blocks (started at I)", fontsize=9)
        else:
            axes[0, j].set_title(f"{ds}: part of the start distance left, end / start of ||W_i - I||_F\n"
                                 "(mean over blocks; 1: training did not move them towards I)", fontsize=9)
            axes[0, j].axhline(1, color="0.4", linewidth=0.8, linestyle=":")
        axes[1, j].set_title(f"{ds}: mean over blocks of final Lip(f_i) on data", fontsize=9)
        for ax in axes[:, j]:
            ax.set_xscale("log", base=2)
            ticks_at(ax.xaxis, [r["n_blocks"] for r in rows if r["dataset"] == ds])  # 2, 4, 8 rather than 2^1
            ax.set_xlabel("number of blocks m")
            ax.grid(True, which="both", alpha=0.3)
        axes[1, j].set_yscale("log")
        plain_log_labels(axes[1, j], "y")
    # one legend for every panel (each d one colour throughout), below them: not over the bands
    rate = Line2D([], [], linestyle="--", color="0.4",
                  label="top, dashed in each d's colour: log(m)/m (the theorem's rate) through the first m >= 2")
    handles = axes[0, 0].get_legend_handles_labels()[0] + [rate]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize="small")
    fig.suptitle("lines: mean over seeds; bands: 95% interval of the mean (top), ± std (bottom)", fontsize=9)
    files.append(savefig(fig, run_dir / "orth_to_id_depth.png").name)

    fig, axes = plt.subplots(len(c["datasets"]), len(c["dims"]), figsize=(3.6 * len(c["dims"]),
                             3.6 * len(c["datasets"]) + 0.6), squeeze=False, layout="constrained")
    for i, ds in enumerate(c["datasets"]):
        for j, d in enumerate(c["dims"]):
            data, model = c["data"][(ds, d)], models[(ds, d)]
            X = data.X_test.numpy()
            mean, V = pca_plane(X)
            P = (X - mean) @ V  # (N, 2)
            lo, hi = P.min(0) - 0.5, P.max(0) + 0.5
            xx, yy, G = plane_grid(lo, hi, c["pca_grid"])
            lifted = torch.as_tensor(mean + G @ V.T, dtype=torch.float32)  # (n*n, d)
            with torch.no_grad():
                pred = model(lifted).argmax(-1).numpy().reshape(xx.shape)
                acc = 100 * float((model(data.X_test).argmax(-1) == data.y_test).double().mean())
            decision_regions(axes[i, j], xx, yy, pred, P, data.y_test.numpy(), data.num_classes,
                             title=f"{ds}, d = {d}, m = {depth}, seed {c['seeds'][0]}: test {acc:.1f}%")
            axes[i, j].set_xlabel("PC 1", fontsize=8)
            axes[i, j].set_ylabel("PC 2", fontsize=8)
    class_legend(fig, max(c["data"][(ds, d)].num_classes for ds in c["datasets"] for d in c["dims"]),
                 loc="outside lower center", ncols=5)
    fig.suptitle("decision regions on the plane of the first two principal components of the test data\n"
                 "(points: the test data projected onto that plane; for d > 2 they lie off it, so a correctly "
                 "classified\npoint can sit in another class's region)", fontsize=9)
    files.append(savefig(fig, run_dir / "orth_to_id_pca.png").name)
    return files


def notes(cfg: Config) -> list[str]:
    """The report's notes: with steepest skips from I, what their distance from I measures."""
    if (cfg.skip.kind, cfg.skip.method, cfg.skip.init) != ("learnable_orth", "steepest", "identity"):
        return []  # (from a Haar start the distance from I is the draw's, ~sqrt(2d), whatever the steps)
    return ["steepest steps have a fixed length, the learning rate (in the spectral norm), whatever the gradient's "
            "size: over a short run from an identity start, ||W_i - I|| measures the schedule's summed learning rate "
            "as much as the data or the depth (skip.method=svd takes gradient-sized steps)"]


def chance_note(cfg: Config, table: list[dict]) -> str:
    """What the verdict adds when nets of some (dataset, d, m) ended near chance: they did not
    learn the task, so where their W_i went says nothing about what learning it does. '' else."""
    idle, said = near_chance([(f"{t['dataset']} d = {t['dim']}, m = {t['n_blocks']}", t["test_acc_mean"],
                               100.0 / data_args(cfg, t["dataset"], t["dim"])["num_classes"]) for t in table])
    if not idle:
        return ""
    return (f" Note: the nets of {said}: they did not learn the task (more epochs, or another lr), "
            "so where their W_i went says nothing about what learning it does.")


def report(cfg: Config, table: list[dict], ans: dict, figures: list[str]) -> dict:
    rows = [{**t, "moved": f"{t['moved_towards_identity']:+.3g} ± {t['moved_towards_identity_sd']:.2g}"
             if math.isfinite(t["moved_towards_identity_sd"]) else f"{t['moved_towards_identity']:+.3g}",
             "moved_ci": "–" if math.isnan(t["moved_lo"]) else f"[{t['moved_lo']:+.3g}, {t['moved_hi']:+.3g}]"}
            for t in table]
    settings = []
    for key, a in ans.items():
        lo, hi = a["loglog_slope_ci"]
        settings.append({
            "setting": key, "n_blocks": a["n_blocks"], "seeds": a["seeds"], "measure": a["corrected_distance"],
            "moved": "cannot tell" if a["moved_towards_identity"] is None and not a["started_at_identity"]
            else a["moved_towards_identity"], "slope": a["loglog_slope_vs_depth"],
            "slope_ci": "–" if lo is None or math.isnan(lo) else f"[{lo:+.3g}, {hi:+.3g}]",
            "ref": a["reference_slope_log_m_over_m"],
            "falls": "cannot tell" if a["falls_with_depth"] is None else a["falls_with_depth"],
            "approaches": "cannot tell" if a["approaches_identity_with_depth"] is None
            else a["approaches_identity_with_depth"],
            "rho": a["spearman_identity_distance_vs_lipschitz"]})
    question = ("does training bring the skip matrices W_i of a residual net towards I, the more so the deeper the "
                "net (as the theorem's construction has them, ||I - W_i|| = O(log m / m))?")
    return {
        "title": f"Do trained {cfg.skip.kind} skips approach I as depth grows? ({cfg.skip.init} start)",
        "question": question,
        "measures": [
            f"model: a ResidualMLP with m blocks y = W_i x + f_i(x) on R^d, f_i = Linear(d, {cfg.hidden_mult:g} d) -> "
            f"{cfg.activation} -> Linear, then a linear head; W_i: {cfg.skip.kind} skips ({cfg.skip.method}, "
            f"{cfg.skip.init} start), {cfg.seeds} seed(s) per (dataset, d, m), "
            f"{cfg.training_text()}",
            "distance from I: ||W_i - I||_F (Frobenius norm, no unit), averaged over the m blocks of each seed; a "
            "Haar-random W starts sqrt(2d) from I in root mean square",
            "moved towards I: start - end of that distance per seed (> 0: towards I, < 0: away); mean ± std and "
            "95% Student-t interval over seeds; judged yes where the interval is above 0, no where it is at most 0, "
            "else cannot tell",
            "end / start: the part of the start distance left after training, which divides out where the random "
            "start was (with an identity start: the end distance itself)",
            f"falls with depth: the per-seed log-log slope of end / start against m has a 95% interval below 0 and a "
            f"mean at most {cfg.slope_fraction:g} x the slope of log(m)/m; no where the whole interval is above that, "
            "else cannot tell (also where log(m)/m does not fall over the depths, as over m = 2, 4)",
            "Lip(f_i): the largest Jacobian spectral norm of the branch f_i at training points",
        ],
        "tables": [
            {"caption": "per (dataset, d, m): distances from I of the W_i, means over seeds of the mean over blocks",
             "columns": [column("dataset", "dataset"), column("dim", "dimension d"), column("n_blocks", "blocks m"),
                         column("initial_identity_distance_mean", "distance from I at start"),
                         column("final_identity_distance_mean", "distance from I at end"),
                         column("moved", "moved towards I (mean ± std over seeds)"),
                         column("moved_ci", "moved towards I, 95% CI"),
                         column("distance_left", "end / start"),
                         column("final_lipschitz_empirical_mean", "Lip(f_i) on data"),
                         column("negative_det_count", "det W_i < 0", "blocks"),
                         column("test_acc_mean", "test accuracy", "%")],
             "rows": rows},
            {"caption": "per (dataset, d): the verdict's two conditions",
             "columns": [column("setting", "dataset, d"), column("n_blocks", "depths m"), column("seeds", "seeds"),
                         column("moved", "moved towards I at the largest m (CI > 0)"),
                         column("measure", "distance compared across depths"),
                         column("slope", "log-log slope vs m (mean over seeds)"),
                         column("slope_ci", "slope, 95% CI"), column("ref", "slope of log(m)/m"),
                         column("falls", "falls with depth"), column("approaches", "approaches I with depth"),
                         column("rho", "Spearman rho, distance vs Lip(f_i)")],
             "rows": settings},
        ],
        "notes": notes(cfg),
        "verdict": verdict(ans, cfg.slope_fraction) + chance_note(cfg, table),
        "figures": figures,
        "captions": {f: CAPTIONS["trajectories" if f.startswith("orth_to_id_trajectories_") else f]
                     .format(m=max(cfg.n_blocks)) for f in figures},
    }


CAPTIONS = {  # what each figure shows, and which part of the question it answers
    "trajectories": "per block of the m = {m} net, over training: how far each W_i moved towards I (above 0) or "
                    "away from it since its start, and the two Lipschitz estimates of its branch f_i; right, the "
                    "two against each other. Does a block whose skip moves towards I also carry a smaller branch?",
    "orth_to_id_depth.png": "what the verdict judges, against depth: the part of each seed's start distance left at "
                            "the end (1: training did not move the W_i towards I), beside the theorem's log(m)/m; a "
                            "net that approaches I with depth falls along the dashed line. Below: the branches' "
                            "Lipschitz constants, which the construction makes small in a deep net.",
    "orth_to_id_pca.png": "what the m = {m} net learnt, seed 0: its decision regions on the plane of the test data's "
                          "first two principal components.",
}


def run(cfg: Config, rd: RunDir) -> dict:
    c = prepare(cfg)
    rd.start(cfg)
    rd.device = c["device"]
    rows, trajs, models = [], {}, {}
    grid = [(ds, d, m) for ds in c["datasets"] for d in c["dims"] for m in c["depths"]]
    for ds, d, m in progress_bar(grid, enabled=cfg.progress, desc="orth_to_id"):
        row, traj, stack = run_one(c, ds, d, m)
        rows.append(row)
        trajs[(ds, d, m)] = traj
        if m == max(c["depths"]):
            models[(ds, d)] = stack.model(0).cpu().eval()
    table = by_depth(rows)
    write_npz(rd.path / "trajectories.npz", {
        f"{ds}/d={d}/m={m}/{k}": v for (ds, d, m), t in trajs.items() for k, v in t.items()}, compressed=True)
    ans = answer(table, rows, c["slope_fraction"])
    summary = {
        "question": "does training bring the skip matrices W_i towards I, the more so the deeper the net?",
        "skip": {"kind": cfg.skip.kind, "method": cfg.skip.method, "init": cfg.skip.init, "special": cfg.skip.special},
        "answer": ans,
        "by_depth": table,
        "runs": rows,
        "orth_error_max": max(r["orth_error_max"] for r in rows),
        "train_time_s": sum(r["train_time_s"] for r in rows),
    }
    summary["figures"] = draw(c, rows, trajs, table, models, rd.path)
    summary["report"] = report(cfg, table, ans, summary["figures"])
    return summary


main = App("orth_to_id", Config, run)

if __name__ == "__main__":
    sys.exit(main())
