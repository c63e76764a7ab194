"""`osc construction_validity`: do the blocks of a trained residual net act like orthogonal
maps, as in the theorem's construction?

The construction (paper Theorem 1, after Bartlett, Evans & Long 2018, arXiv 1804.05012)
writes a map as h_m o ... o h_1 with every block h_i close to an orthogonal W_i. For a
trained net the question is empirical: take block i's inputs Z_i (N, d) on data and its
outputs h_i(Z_i), and fit the best orthogonal map Q_i (Procrustes, Schoenemann 1966). The
relative residual ||h_i(Z_i) - Z_i Q_i^T||_F / ||h_i(Z_i)||_F is 0 exactly when the block is
orthogonal on the data. Next to it, the residual of the best *linear* map (least squares)
says how much of the misfit is non-linearity rather than non-orthogonality, and
||Q_i - W_i||_F says whether the fitted map is the block's own skip.

Over a grid of (dimension d, classes, depth m) and skip kinds, ``seeds`` models per grid
point are trained at once (:mod:`~orthogonal_skip_connections.train.small`).

    python -m orthogonal_skip_connections.experiments.construction_validity
    osc construction_validity dims=[2,8,32] n_blocks=[2,4,8,16] skip_kinds=[learnable_orth]

Writes config.yaml, summary.json and figures into the run dir.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..analysis.blocks import by_kind, fit_blocks, verdict
from ..analysis.stats import seed_sd
from ..data.synthetic import make_synthetic
from ..models.stack import SeedStack
from ..rundir import RunDir, column
from ..runs import progress_bar, resolve_device
from ..skips import variant_label
from ..train.classifier import Diverged
from ..train.small import train_small_classifier
from ._app import (MAX_SEED, App, SkipOptions, SmallTraining, check_residual_mlp_memory, check_seed,
                   check_synthetic_data, choice, ints_at_least, require, residual_mlp_factory, skip_kinds)

DATASETS = ("blobs", "classification", "parity", "moons", "circles")
FIT_ON = ("test", "train")


@dataclass
class Config(SmallTraining):
    dataset_type: str
    dims: list[int]
    num_classes: list[int]
    n_blocks: list[int]
    skip_kinds: list[str]
    seeds: int
    seed: int
    n_samples: int
    test_fraction: float
    noise: Optional[float]
    separation: float
    clusters_per_class: int
    fit_on: str
    hidden_mult: float
    activation: str
    skip: SkipOptions
    device: str

    def check(self) -> None:
        self.check_training()
        choice("dataset_type", self.dataset_type, DATASETS)
        choice("fit_on", self.fit_on, FIT_ON)
        self.skip_kinds = skip_kinds("skip_kinds", self.skip_kinds)
        self.dims = ints_at_least("dims", self.dims, 1)
        self.num_classes = ints_at_least("num_classes", self.num_classes, 2)
        self.n_blocks = ints_at_least("n_blocks", self.n_blocks, 1)
        require(self.seeds >= 1, "seeds", "an integer >= 1", self.seeds)
        check_seed("seed", self.seed, MAX_SEED - (self.seeds - 1))  # seeds seed .. seed + seeds - 1
        require(self.hidden_mult > 0, "hidden_mult", "a number > 0", self.hidden_mult)
        # what the library would refuse at run time, refused here (before Hydra makes a run dir)
        resolve_device(self.device)
        d, k, m = self.dims[-1], self.num_classes[-1], self.n_blocks[-1]  # the largest, before any model is built
        check_residual_mlp_memory(f"dims up to {d}, num_classes up to {k}, n_blocks up to {m}, seeds={self.seeds}, "
                                  f"n_samples={self.n_samples}", d, m, self.hidden_mult, k, self.seeds, self.n_samples)
        for d in self.dims:
            for k in self.num_classes:
                check_synthetic_data(f"{self.dataset_type} with d={d}, num_classes={k}", self.dataset_type,
                                     **self.data_args(d, k))
                for kind in self.skip_kinds:  # the model options (one small model per grid point: cheap)
                    residual_mlp_factory(self, d, self.n_blocks[0], k, kind)

    def data_args(self, d: int, k: int) -> dict:
        """make_synthetic's arguments but the type, for d dimensions and k classes."""
        return dict(n_samples=self.n_samples, dim=d, num_classes=k, test_fraction=self.test_fraction,
                    noise=self.noise, separation=self.separation, clusters_per_class=self.clusters_per_class,
                    seed=self.seed)


def prepare(cfg: Config) -> dict:
    """Every dataset built, before anything is written (the options were checked by ``Config.check``)."""
    c = {"kinds": cfg.skip_kinds, "dims": cfg.dims, "classes": cfg.num_classes, "depths": cfg.n_blocks,
         "seeds": list(range(cfg.seed, cfg.seed + cfg.seeds)), "train": cfg.train_config(),
         "device": resolve_device(cfg.device), "data": {}}
    for d in c["dims"]:
        for k in c["classes"]:
            c["data"][(d, k)] = make_synthetic(cfg.dataset_type, **cfg.data_args(d, k))
    c["factory"] = lambda d, m, k, kind: residual_mlp_factory(cfg, d, m, k, kind)
    # each kind as run_experiments labels its runs (learnable_orth/<method>[/haar]): its colour in every figure
    c["labels"] = {kind: variant_label(kind, cfg.skip.method, cfg.skip.init) for kind in c["kinds"]}
    return c


def run_point(c: dict, cfg: Config, kind: str, d: int, k: int, m: int) -> dict:
    """Train the seeds of one grid point; fit every block before and after training."""
    data = c["data"][(d, k)]
    stack = SeedStack.build(c["factory"](d, m, k, kind), c["seeds"]).to(c["device"])
    X = data.X_test if cfg.fit_on == "test" else data.X_train
    at_init = [fit_blocks(stack.model(s).cpu().eval(), X)["procrustes_residual"] for s in range(len(stack))]
    try:
        result = train_small_classifier(stack, data.X_train, data.y_train, c["train"], data.X_test, data.y_test,
                                        desc=f"{kind} d={d} k={k} m={m}")
    except Diverged as err:
        raise err.within(f"{kind} d={d} num_classes={k} m={m}") from None
    fits = [fit_blocks(stack.model(s).cpu().eval(), X) for s in range(len(stack))]
    per_seed = {key: [f[key] for f in fits] for key in fits[0]}  # key -> (S, m)
    per_seed["procrustes_residual_at_init"] = at_init
    resid = np.asarray(per_seed["procrustes_residual"])  # (S, m)
    return {
        "kind": kind, "dim": d, "num_classes": k, "n_blocks": m, "seeds": result["seeds"],
        "test_acc": result["test_acc"], "train_acc": result["train_acc"],
        "procrustes_residual_mean": float(resid.mean()),
        "procrustes_residual_seed_sd": seed_sd(resid.mean(1)),
        "procrustes_residual_max": float(resid.max()),
        "linear_residual_mean": float(np.mean(per_seed["linear_residual"])),
        "procrustes_residual_at_init_mean": float(np.mean(at_init)),
        "procrustes_identity_distance_mean": float(np.mean(per_seed["procrustes_identity_distance"])),
        "per_block": per_seed,
        "train_time_s": result["train_time_s"],
    }


def draw(c: dict, rows: list[dict], run_dir: Path) -> list[str]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from ..plots import plt, savefig, ticks_at, variant_colors

    kinds, classes, dims, depths = c["kinds"], c["classes"], c["dims"], c["depths"]
    at = {(r["kind"], r["dim"], r["num_classes"], r["n_blocks"]): r for r in rows}
    labels = c["labels"]
    colors = {kind: variant_colors(labels.values())[labels[kind]] for kind in kinds}  # as in the other figures
    files = []

    # one panel per (d, classes): the kinds the verdict compares side by side on one axis, each its colour;
    # its references (the residual at initialisation, the best linear fit's) thin, in a paler shade of it
    fig, axes = plt.subplots(len(dims), len(classes), figsize=(4.4 * len(classes), 3.0 * len(dims) + 1.0),
                             squeeze=False, sharex=True, sharey=True, layout="constrained")
    spread = "band" if len(depths) > 1 else "bar"
    top = 0.0  # the panels' common top: their y axis starts at 0, the residual of an orthogonal map
    for i, d in enumerate(dims):
        for j, k in enumerate(classes):
            ax = axes[i, j]
            for kind in kinds:
                rs = [at[(kind, d, k, m)] for m in depths]
                per_seed = np.stack([np.asarray(r["per_block"]["procrustes_residual"]).mean(1) for r in rs], 1)  # (S, M)
                mid, sd = per_seed.mean(0), np.nan_to_num(seed_sd(per_seed, axis=0))  # one seed: no band
                color = colors[kind]
                top = max([top, *(mid + sd)] + [r[key] for r in rs for key in ("procrustes_residual_at_init_mean",
                                                                               "linear_residual_mean")])
                # small markers on the references too, so a grid of one depth still shows both values
                ax.plot(depths, [r["procrustes_residual_at_init_mean"] for r in rs], linestyle="--", marker="x",
                        markersize=4, linewidth=0.9, color=color, alpha=0.45)
                ax.plot(depths, [r["linear_residual_mean"] for r in rs], linestyle=":", marker=".", linewidth=1.1,
                        color=color, alpha=0.6)
                ax.plot(depths, mid, marker="o", linewidth=2.0, color=color, zorder=3)
                if len(depths) > 1:
                    ax.fill_between(depths, mid - sd, mid + sd, color=color, alpha=0.18, linewidth=0)
                else:  # a band over one depth is a line too thin to see
                    ax.errorbar(depths, mid, yerr=sd, color=color, capsize=3, linestyle="none", zorder=3)
            ax.set_xscale("log", base=2)
            ticks_at(ax.xaxis, depths)  # 2, 8 rather than 2^1, 2^3
            ax.set_title(f"d = {d}, {k} classes", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if i == len(dims) - 1:
                ax.set_xlabel("number of blocks m")
            if j == 0:
                ax.set_ylabel("residual (mean over blocks)\n0 = orthogonal on the data")
    axes[0, 0].set_ylim(0, 1.05 * top)  # (shared by every panel)
    handles = [Patch(color=colors[kind], label=labels[kind]) for kind in kinds] + [
        Line2D([], [], color="0.2", marker="o", linewidth=2.0,
               label=f"Procrustes residual after training ({spread}: std over seeds)"),
        Line2D([], [], color="0.2", linestyle="--", marker="x", markersize=4, linewidth=0.9, alpha=0.45,
               label="Procrustes residual at initialisation"),
        Line2D([], [], color="0.2", linestyle=":", marker=".", linewidth=1.1, alpha=0.6,
               label="best linear fit's residual (a floor: no orthogonal fit beats it)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3 if len(classes) > 1 else 1),
               fontsize="x-small")
    fig.suptitle("relative residual of the best orthogonal fit of each block, per skip kind (colour),\n"
                 "mean over blocks; thin lines: the same at initialisation and the best linear fit's", fontsize=9)
    files.append(savefig(fig, run_dir / "construction_validity_grid.png").name)

    return files


def report(cfg: Config, rows: list[dict], table: dict, figures: list[str]) -> dict:
    kinds = [{"kind": k, **t} for k, t in table.items()]
    return {
        "title": f"Are trained blocks close to orthogonal maps? ({cfg.dataset_type}, fitted on {cfg.fit_on} data)",
        "question": "is each trained block h_i close to an orthogonal map (relative Procrustes residual near 0)?",
        "measures": [
            f"model: ResidualMLP blocks h_i(z) = W_i z + f_i(z) on R^d, f_i = Linear(d, {cfg.hidden_mult:g} d) -> "
            f"{cfg.activation} -> Linear, {cfg.seeds} seed(s) per grid point, {cfg.training_text()} on "
            f"{cfg.dataset_type}",
            f"Procrustes residual: with Z_i the inputs of block i on the {cfg.fit_on} data and Q_i the best "
            "orthogonal map (Schoenemann 1966), ||h_i(Z_i) - Z_i Q_i^T||_F / ||h_i(Z_i)||_F: 0 when the block is "
            "orthogonal on the data, no unit; averaged over blocks and seeds",
            "linear-fit residual: the same with the best linear map (least squares): the part of the misfit that "
            "no linear map removes is non-linearity, the rest is non-orthogonality",
            "||Q_i - I||_F: how far the fitted orthogonal map is from the identity",
        ],
        "tables": [
            {"caption": "per skip kind: means over the grid", "columns": [
                column("kind", "skip kind"), column("procrustes_residual_mean", "Procrustes residual after training"),
                column("procrustes_residual_seed_sd", "its std over seeds"),
                column("procrustes_residual_at_init_mean", "Procrustes residual at initialisation"),
                column("procrustes_residual_change", "change by training (per seed, mean)"),
                column("procrustes_residual_change_lo", "its 95% interval: low"),
                column("procrustes_residual_change_hi", "high"),
                column("linear_residual_mean", "linear-fit residual"), column("test_acc", "test accuracy", "%")],
             "rows": kinds},
            {"caption": "per grid point: means over seeds and blocks", "columns": [
                column("kind", "skip kind"), column("dim", "dimension d"), column("num_classes", "classes"),
                column("n_blocks", "blocks m"), column("procrustes_residual_mean", "Procrustes residual"),
                column("procrustes_residual_seed_sd", "std over seeds"),
                column("linear_residual_mean", "linear-fit residual"),
                column("procrustes_identity_distance_mean", "||Q_i - I||_F")],
             "rows": rows},
        ],
        "verdict": verdict(table),
        "figures": figures,
        "captions": {f: "one panel per (dimension d, classes), the skip kinds side by side in their colours of the "
                        "report's other figures: thick line with its band, the Procrustes residual after training "
                        "(mean over blocks, band: std over seeds); thin dashed, the same at initialisation; thin "
                        "dotted, the best linear fit's residual, below which no orthogonal fit can go; the y axis "
                        "starts at 0, an orthogonal map. Is a kind's line detectably lower than another's?"
                     for f in figures},
    }


def run(cfg: Config, rd: RunDir) -> dict:
    c = prepare(cfg)
    rd.start(cfg)
    rd.device = c["device"]
    grid = [(kind, d, k, m) for kind in c["kinds"] for d in c["dims"] for k in c["classes"] for m in c["depths"]]
    rows = [run_point(c, cfg, *point) for point in progress_bar(grid, enabled=cfg.progress, desc="grid")]
    table = by_kind(rows, c["kinds"])
    summary = {
        "question": "is each trained block h_i close to an orthogonal map (relative Procrustes residual near 0)?",
        "dataset_type": cfg.dataset_type,
        "fit_on": cfg.fit_on,
        "by_kind": {kind: {**{k: v for k, v in t.items() if k != "test_acc"}, "test_acc_mean": t["test_acc"]}
                    for kind, t in table.items()},
        "grid": rows,
        "train_time_s": sum(r["train_time_s"] for r in rows),
    }
    summary["figures"] = draw(c, rows, rd.path)
    summary["report"] = report(cfg, rows, table, summary["figures"])
    return summary


main = App("construction_validity", Config, run)

if __name__ == "__main__":
    sys.exit(main())
