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

from pathlib import Path

import torch
from omegaconf import DictConfig

from ..data.synthetic import make_synthetic
from ..diagnostics import block_inputs, block_procrustes, branch_lipschitz, skip_diagnostics
from ..runs import UserError, hydra_app, progress_bar, resolve_device, save_config, write_json
from ..models.stack import SeedStack
from ._common import check_fresh_run_dir, config_number, residual_mlp_factory, skip_kind_list, train_config_from
from ..train.small import train_small_classifier
from ..train.classifier import Diverged

DATASETS = ("moons", "circles", "blobs", "classification")


def check_config(cfg: DictConfig) -> dict:
    """Every value checked, and the data built, before anything is written."""
    if cfg.dataset_type not in DATASETS:
        raise UserError(f"unknown dataset_type {cfg.dataset_type!r}; allowed: {', '.join(DATASETS)} (2-D data)")
    c = {
        "kinds": skip_kind_list(cfg),
        "n_blocks": config_number(cfg, "n_blocks", 1, integer=True),
        "seed": config_number(cfg, "seed", 0, integer=True),
        "grid_lines": config_number(cfg, "grid_lines", 2, integer=True),
        "region_grid": config_number(cfg, "region_grid", 2, integer=True),
        "train": train_config_from(cfg),
        "device": resolve_device(cfg.device),
    }
    try:
        c["data"] = make_synthetic(cfg.dataset_type, n_samples=cfg.n_samples, dim=2, num_classes=cfg.num_classes,
                                   test_fraction=cfg.test_fraction, noise=cfg.noise, seed=c["seed"])
    except (TypeError, ValueError) as err:
        raise UserError(f"dataset_type={cfg.dataset_type}: {err}") from None
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
        raise UserError(f"{kind}: {err}") from None
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
    from ..plots import decision_regions, draw_morphed, grid_lines, padded_box, plane_grid, plt, savefig

    data, L = c["data"], c["n_blocks"]
    X, y = data.X_test, data.y_test.numpy()
    ncols = 3 * L + 1
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.3 * ncols, 2.5 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows):
        model = models[row["kind"]]
        for i, (block, Z) in enumerate(zip(model.blocks, block_inputs(model, X))):  # Z: (N, 2)
            lines = grid_lines(*padded_box(Z.numpy()), n_lines=c["grid_lines"])  # (K, P, 2)
            G = torch.as_tensor(lines.reshape(-1, 2), dtype=torch.float32)
            maps = (("skip: W x", block.skip), ("branch: f(x)", block.branch), ("block: W x + f(x)", block))
            for j, (name, fn) in enumerate(maps):
                draw_morphed(ax_row[3 * i + j], _image(fn, G).numpy().reshape(lines.shape), _image(fn, Z).numpy(), y,
                             title=f"block {i + 1} {name}")
        xx, yy, P = plane_grid(*padded_box(X.numpy()), n=c["region_grid"])
        pred = model(torch.as_tensor(P, dtype=torch.float32)).argmax(-1).numpy().reshape(xx.shape)
        decision_regions(ax_row[-1], xx, yy, pred, X.numpy(), y, data.num_classes,
                         title=f"train {row['train_acc']:.1f}%, test {row['test_acc']:.1f}%")
        ax_row[0].set_ylabel(row["kind"], fontsize=10)
    fig.suptitle(f"{data.dataset_type}: the grid and the test data carried by each block's skip, branch and whole "
                 f"map (inputs of block i = outputs of block i - 1); right: decision regions", fontsize=10)
    fig.tight_layout()
    return [savefig(fig, run_dir / "synthetic_blocks.png").name]


@hydra_app("orth_residual_synthetic_data")
def main(cfg: DictConfig, run_dir: Path) -> dict:
    c = check_config(cfg)
    check_fresh_run_dir(run_dir)
    save_config(cfg, run_dir)
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
    summary["figures"] = draw(c, rows, models, run_dir)
    write_json(run_dir / "summary.json", summary)  # last: its presence means a finished run
    return summary


if __name__ == "__main__":
    main()
