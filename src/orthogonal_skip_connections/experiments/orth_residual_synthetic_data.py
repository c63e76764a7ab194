"""`osc orth_residual_synthetic_data`: what each block of a 2-D residual classifier does, for
any skip kinds (the original project's figure).

One ResidualMLP per skip kind, its blocks y = W x + f(x) acting on R^2 itself and a linear
head on top, trained on a 2-D set (:mod:`~orthogonal_skip_connections.train.small`).
Per block the figure shows a grid over the block's inputs and the data carried by the
skip (x -> W x), by the residual branch (x -> f(x)) and by the whole block; the last
panel of each row shows the decision regions and accuracies. summary.json holds the
accuracies and, per block, ||W - I||_F, sign det W, the branch's Lipschitz estimates and
the Procrustes fit of the block.

    python -m orthogonal_skip_connections.experiments.orth_residual_synthetic_data dataset_type=circles
    osc orth_residual_synthetic_data skip_kinds=[identity,learnable_orth,zero] skip.init=haar
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..data.synthetic import make_synthetic
from ..diagnostics import block_inputs, block_procrustes, branch_lipschitz, skip_diagnostics
from ..models.stack import SeedStack
from ..rundir import RunDir, column
from ..runs import progress_bar, resolve_device
from ..train.classifier import Diverged
from ..train.small import train_small_classifier
from ._app import (App, SkipOptions, SmallTraining, check_residual_mlp_memory, check_seed, check_synthetic_data, choice,
                   require, residual_mlp_factory, skip_kinds)

DATASETS = ("moons", "circles", "blobs", "classification")


@dataclass
class Config(SmallTraining):
    dataset_type: str
    skip_kinds: list[str]
    n_blocks: int
    n_samples: int
    test_fraction: float
    noise: Optional[float]
    num_classes: int
    seed: int
    hidden_mult: float
    activation: str
    skip: SkipOptions
    grid_lines: int
    region_grid: int
    device: str

    def check(self) -> None:
        self.check_training()
        choice("dataset_type", self.dataset_type, DATASETS)
        self.skip_kinds = skip_kinds("skip_kinds", self.skip_kinds)
        require(self.n_blocks >= 1, "n_blocks", "an integer >= 1", self.n_blocks)
        check_seed("seed", self.seed)
        require(2 <= self.grid_lines <= 1000, "grid_lines", "an integer from 2 to 1000 (lines per direction drawn in "
                "each panel: 1e5 drew for minutes)", self.grid_lines)
        require(self.region_grid >= 2, "region_grid", "an integer >= 2", self.region_grid)
        require(self.hidden_mult > 0, "hidden_mult", "a number > 0", self.hidden_mult)
        # what the library would refuse at run time, refused here (before Hydra makes a run dir)
        resolve_device(self.device)
        check_residual_mlp_memory(f"n_blocks={self.n_blocks}, n_samples={self.n_samples}, "
                                  f"region_grid={self.region_grid}",
                                  2, self.n_blocks, self.hidden_mult, self.num_classes, 1, self.n_samples,
                                  self.region_grid ** 2)
        check_synthetic_data(f"dataset_type={self.dataset_type}", self.dataset_type, **self.data_args())
        for kind in self.skip_kinds:
            residual_mlp_factory(self, 2, self.n_blocks, self.num_classes, kind)

    def data_args(self) -> dict:
        """make_synthetic's arguments but the type: 2-D data."""
        return dict(n_samples=self.n_samples, dim=2, num_classes=self.num_classes, test_fraction=self.test_fraction,
                    noise=self.noise, seed=self.seed)


def prepare(cfg: Config) -> dict:
    """The data, the model factories and the training config, built before anything is
    written (the options were checked by ``Config.check``)."""
    c = {"kinds": cfg.skip_kinds, "n_blocks": cfg.n_blocks, "seed": cfg.seed, "grid_lines": cfg.grid_lines,
         "region_grid": cfg.region_grid, "train": cfg.train_config(), "device": resolve_device(cfg.device)}
    c["data"] = make_synthetic(cfg.dataset_type, **cfg.data_args())
    c["factories"] = {k: residual_mlp_factory(cfg, 2, c["n_blocks"], c["data"].num_classes, k) for k in c["kinds"]}
    return c


def run_kind(c: dict, kind: str) -> tuple[dict, torch.nn.Module]:
    """Train the model of one skip kind; its summary row and the trained model (CPU, eval)."""
    data = c["data"]
    stack = SeedStack.build(c["factories"][kind], [c["seed"]]).to(c["device"])
    try:
        result = train_small_classifier(stack, data.X_train, data.y_train, c["train"], data.X_test, data.y_test,
                                        desc=kind)
    except Diverged as err:
        raise err.within(f"{kind}") from None
    model = stack.model(0).cpu().eval()
    blocks = [
        {**{k: v for k, v in skip.items() if k != "name"}, **lip, **fit}
        for skip, lip, fit in zip(skip_diagnostics(model), branch_lipschitz(model, data.X_train),
                                  block_procrustes(model, data.X_train))
    ]
    row = {
        "kind": kind,
        "train_acc": result["train_acc"][0],
        "test_acc": result["test_acc"][0],
        "train_loss": result["train_loss"][0],
        "test_loss": result["test_loss"][0],
        "steps": result["steps"],
        "train_time_s": result["train_time_s"],
        "blocks": blocks,
    }
    return row, model


def _image(fn, x: torch.Tensor) -> torch.Tensor:
    """fn(x) for points x (N, 2), broadcast to (N, 2) (the zero skip returns a 0-d zero)."""
    return torch.broadcast_to(fn(x), x.shape)


@torch.no_grad()
def draw(c: dict, rows: list[dict], models: dict, run_dir: Path) -> list[str]:
    from matplotlib.ticker import MaxNLocator

    from ..plots import class_legend, decision_regions, draw_morphed, grid_lines, padded_box, plane_grid, plt, savefig

    data, L = c["data"], c["n_blocks"]
    X, y = data.X_test, data.y_test.numpy()
    # one row per (kind, block), four columns: skip, branch, whole block, and the decision
    # regions beside each kind's first block, so the figure fits a page's width at any depth
    nrows = len(rows) * L
    fig, axes = plt.subplots(nrows, 4, figsize=(11, 2.6 * nrows + 0.5), squeeze=False, layout="constrained")
    for k, row in enumerate(rows):
        model = models[row["kind"]]
        for i, (block, Z) in enumerate(zip(model.blocks, block_inputs(model, X))):  # Z: (N, 2)
            ax_row = axes[k * L + i]
            lines = grid_lines(*padded_box(Z.numpy()), n_lines=c["grid_lines"])  # (K, P, 2)
            G = torch.as_tensor(lines.reshape(-1, 2), dtype=torch.float32)
            maps = (("skip: W x", block.skip), ("branch: f(x)", block.branch), ("block: W x + f(x)", block))
            images = [(_image(fn, G).numpy().reshape(lines.shape), _image(fn, Z).numpy()) for _, fn in maps]
            for j, ((name, _), (grid_image, data_image)) in enumerate(zip(maps, images)):
                draw_morphed(ax_row[j], grid_image, data_image, y, title=f"{row['kind']}, block {i + 1}: {name}")
            # one scale for the row's three maps, with ticks: how big f(x) is beside W x is the point
            lo = np.min([np.min(a, axis=tuple(range(a.ndim - 1))) for im in images for a in im], axis=0)
            hi = np.max([np.max(a, axis=tuple(range(a.ndim - 1))) for im in images for a in im], axis=0)
            pad = 0.05 * float(np.max(hi - lo)) + 1e-6
            for ax in ax_row[:3]:
                ax.set_aspect("equal", adjustable="box")
                ax.set_xlim(lo[0] - pad, hi[0] + pad)
                ax.set_ylim(lo[1] - pad, hi[1] + pad)
                for axis in (ax.xaxis, ax.yaxis):
                    axis.set_major_locator(MaxNLocator(4))
                ax.tick_params(labelsize=7)
            ax_row[0].set_ylabel(f"{row['kind']}\nblock {i + 1}", fontsize=10)
            if i > 0:
                ax_row[3].set_visible(False)
        xx, yy, P = plane_grid(*padded_box(X.numpy()), n=c["region_grid"])
        pred = model(torch.as_tensor(P, dtype=torch.float32)).argmax(-1).numpy().reshape(xx.shape)
        decision_regions(axes[k * L, 3], xx, yy, pred, X.numpy(), y, data.num_classes,
                         title=f"{row['kind']}: train {row['train_acc']:.1f}%, test {row['test_acc']:.1f}%")
    class_legend(fig, data.num_classes, loc="outside lower center", ncols=min(data.num_classes, 5))
    fig.suptitle(f"{data.dataset_type}: the grid and the test data carried by each block's skip, branch and whole\n"
                 f"map, on one scale per row (inputs of block i = outputs of block i - 1); right: decision regions",
                 fontsize=10)
    return [savefig(fig, run_dir / "synthetic_blocks.png").name]


def report(cfg: Config, rows: list[dict], figures: list[str], data) -> dict:
    table = [{"kind": r["kind"], "train_acc": r["train_acc"], "test_acc": r["test_acc"],
              "test_loss": r["test_loss"],
              "identity_distance": None if r["blocks"][0].get("identity_distance") is None else
              sum(b["identity_distance"] for b in r["blocks"]) / len(r["blocks"]),
              "procrustes": sum(b["procrustes_residual"] for b in r["blocks"]) / len(r["blocks"])} for r in rows]
    n_test = len(data.y_test)
    best = max(table, key=lambda t: t["test_acc"])
    worst = min(table, key=lambda t: t["test_acc"])
    gap = best["test_acc"] - worst["test_acc"]
    accs = ", ".join(f"{t['kind']} {t['test_acc']:.1f}%" for t in table)
    if len(table) == 1:
        verdict = f"one skip kind, nothing to compare: {accs} on {n_test} test points"
    elif gap == 0:
        verdict = f"every skip kind reaches the same test accuracy ({best['test_acc']:.1f}% of {n_test} points)"
    else:
        verdict = (f"cannot tell which skip kind is better from one seed: test accuracies {accs} differ by "
                   f"{'' if len(table) == 2 else 'at most '}{gap:.1f} points ({round(gap * n_test / 100)} of {n_test} "
                   "test points)")
    # one seed ranks nothing: the residuals as measured (construction_validity compares them over seeds)
    residuals = ", ".join(f"{t['kind']} {t['procrustes']:.2f}" for t in table)
    verdict += (f"; how far the blocks are from orthogonal maps in this one seed, as the mean relative Procrustes "
                f"residual (0 = orthogonal on the data): {residuals}.")
    return {
        "title": f"What each block of a 2-D residual classifier does ({cfg.dataset_type})",
        "question": "how do the skip, the residual branch and the whole block move the data, per skip kind, and "
                    "does the skip kind change the accuracy?",
        "measures": [
            f"model: {cfg.n_blocks} block(s) y = W x + f(x) on R^2 (f = Linear(2, {2 * cfg.hidden_mult:g}) -> "
            f"{cfg.activation} -> Linear), then a linear head; one seed ({cfg.seed}) per skip kind, "
            f"{cfg.training_text()}; {n_test} test points ({100 / n_test:.2g} accuracy points each)",
            "||W_i - I||_F: distance of each skip matrix from the identity, mean over blocks (– for kinds without a "
            "matrix)",
            "relative Procrustes residual: ||h_i(Z) - Z Q^T||_F / ||h_i(Z)||_F for the best orthogonal Q on the "
            "block's training inputs Z (0: the block acts as an orthogonal map), mean over blocks",
        ],
        "tables": [{"caption": "per skip kind (one seed)",
                    "columns": [column("kind", "skip kind"), column("train_acc", "train accuracy", "%"),
                                column("test_acc", "test accuracy", "%"), column("test_loss", "test loss", "nats"),
                                column("identity_distance", "mean ||W_i - I||_F"),
                                column("procrustes", "mean relative Procrustes residual")],
                    "rows": table}],
        "verdict": verdict,
        "figures": figures,
        "captions": {f: "one row per (skip kind, block): the grid and the test points as carried by the skip "
                        "x -> W x, the branch x -> f(x) and the whole block, each row on one scale; right: the "
                        "decision regions. Does each block act as its skip (a near-orthogonal map) plus a small "
                        "branch?" for f in figures},
    }


def run(cfg: Config, rd: RunDir) -> dict:
    c = prepare(cfg)
    rd.start(cfg)
    rd.device = c["device"]
    rows, models = [], {}
    for kind in progress_bar(c["kinds"], enabled=cfg.progress, desc="skip kinds"):
        row, models[kind] = run_kind(c, kind)
        rows.append(row)
    summary = {
        "dataset_type": cfg.dataset_type,
        "n_blocks": c["n_blocks"],
        "accuracy": {r["kind"]: {"train_acc": r["train_acc"], "test_acc": r["test_acc"]} for r in rows},
        "kinds": rows,
    }
    summary["figures"] = draw(c, rows, models, rd.path)
    summary["report"] = report(cfg, rows, summary["figures"], c["data"])
    return summary


main = App("orth_residual_synthetic_data", Config, run)

if __name__ == "__main__":
    sys.exit(main())
