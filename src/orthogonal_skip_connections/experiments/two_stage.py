"""`osc two_stage`: train with identity skips, swap each skip for the orthogonal matrix that
best explains its block, fine-tune with the orthogonal skips constrained. Does it beat
identity throughout, or orthogonal skips from the start?

Per seed, four variants with the same total epochs and the same two learning-rate
schedules (stage 1: ``stage1_epochs`` at ``lr``, cosine with warm-up; stage 2:
``stage2_epochs`` at ``finetune_lr``, cosine, a fresh optimiser):

- ``two_stage``: identity skips in stage 1; then every skip becomes the Procrustes fit Q_i of
  its block (skip inputs -> residual sums on ``fit_images`` training images,
  :func:`~orthogonal_skip_connections.analysis.two_stage.fit_skips`) and stage 2 trains
  ``learnable_orth`` skips (``method``) starting from Q_i;
- ``identity``: the same stage-1 model, identity skips in stage 2 too (paired with two_stage);
- ``orth_identity`` and ``orth_haar``: ``learnable_orth`` skips through both stages,
  initialised at I or Haar-random.

Measured: test accuracy and loss, the test loss right before and right after the swap,
the fit's relative residual, and how far the orthogonal matrices move in stage 2,
mean ||W_end - W_start||_F over skips.

    osc two_stage seeds=3 stage1_epochs=10 stage2_epochs=5

A stopped run resumes seed by seed (``resume=true`` and its ``hydra.run.dir``): each finished
seed's rows are saved in the run dir's parts.json, kept on resume; a seed stopped half-way
is trained again from its start (its variants share the stage-1 model).
"""

from __future__ import annotations

import copy
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..analysis.two_stage import fit_skips, load_with_skips, skips_by_block
from ..landscape import eval_subset, evaluate_loss
from ..analysis.stats import geometric_interval, near_chance, t_interval, t_interval_within
from ..data.vision import fetch, fetch_each
from ..rundir import PARTS, RunDir, column
from ..runs import UserError, atomic_write_text, read_json, read_jsonl, resolve_device
from ..train.classifier import TrainConfig, train_classifier
from ..train.image import ClassifierSpec, build_classifier, check_batch_size
from ._app import MAX_SEED, App, check_seed, choice, number, require, threads

VARIANTS = ("two_stage", "identity", "orth_identity", "orth_haar")


@dataclass
class Config:
    dataset_name: str
    model_type: str
    n_train: Optional[int]
    seeds: int
    seed: int
    stage1_epochs: int
    stage2_epochs: int
    method: str
    fit_images: int
    batch_size: int
    lr: float
    finetune_lr: float
    momentum: float
    weight_decay: float
    warmup_epochs: float
    device: str
    num_threads: Optional[int]
    progress: bool
    resume: bool

    def check(self) -> None:
        from ..data.vision import DATASETS, TRAIN_SIZES
        from ..models.resnet import RESNETS
        from ..skips import ORTH_METHODS

        choice("dataset_name", self.dataset_name, DATASETS)
        choice("model_type", self.model_type, RESNETS)
        choice("method", self.method, ORTH_METHODS)
        size = TRAIN_SIZES[self.dataset_name]  # the standard split's training images
        require(self.n_train is None or 2 <= self.n_train <= size, "n_train",
                f"an integer from 2 to {size} ({self.dataset_name}'s training images) or null", self.n_train)
        require(self.seeds >= 1, "seeds", "an integer >= 1", self.seeds)
        check_seed("seed", self.seed, (MAX_SEED - 1) // 2 - (self.seeds - 1))  # stage seeds 2 s + 1, s < seed + seeds
        require(self.stage1_epochs >= 1, "stage1_epochs", "an integer >= 1", self.stage1_epochs)
        require(self.stage2_epochs >= 1, "stage2_epochs", "an integer >= 1", self.stage2_epochs)
        require(self.fit_images >= 1, "fit_images", "an integer >= 1", self.fit_images)
        number("finetune_lr", self.finetune_lr, 0, strict=True)
        threads(self.num_threads)
        for stage in (1, 2):
            self.train_config(stage, 0).validate()
        check_batch_size("batch_size", self.batch_size, self.dataset_name, self.n_train)
        resolve_device(self.device)

    def fitted_images(self) -> int:
        """How many training images the Procrustes fit uses: ``fit_images``, or all of a smaller
        training set (the standard split's, or n_train's)."""
        from ..data.vision import TRAIN_SIZES

        size = TRAIN_SIZES[self.dataset_name] if self.n_train is None else self.n_train
        return min(self.fit_images, size)

    def train_config(self, stage: int, seed: int) -> TrainConfig:
        return TrainConfig(
            epochs=self.stage1_epochs if stage == 1 else self.stage2_epochs, batch_size=self.batch_size,
            lr=self.lr if stage == 1 else self.finetune_lr, momentum=self.momentum, weight_decay=self.weight_decay,
            warmup_epochs=self.warmup_epochs if stage == 1 else 0.0, channels_last=True,
            seed=seed * 2 + stage - 1, progress=self.progress)

    def spec(self, kind: str, init: str = "identity") -> ClassifierSpec:
        options = {"method": self.method, "init": init} if kind == "learnable_orth" else {}
        return ClassifierSpec(self.dataset_name, self.model_type, kind, options, n_train=self.n_train)


def _evals(path: Path) -> list[dict]:
    """The eval records of a stage's metrics.jsonl (a damaged line is one UserError line)."""
    return [{"epoch": rec["epoch"], "test_acc": rec["test_acc"], "test_loss": rec["test_loss"]}
            for _, _, rec in read_jsonl(path / "metrics.jsonl") if rec.get("type") == "eval"]


def _drift(before: dict, after: dict) -> float | None:
    """Mean over skips of ||W_after - W_before||_F (None without matrices)."""
    if not before:
        return None
    return float(np.mean([float(torch.linalg.matrix_norm(after[k] - before[k])) for k in before]))


def _identity_distance(W: dict) -> float | None:
    if not W:
        return None
    return float(np.mean([float(torch.linalg.matrix_norm(w - torch.eye(len(w), dtype=w.dtype))) for w in W.values()]))


def run_seed(cfg: Config, seed: int, root: Path, device) -> list[dict]:
    """The four variants of one seed; one row each."""
    stage1 = {}
    for name, kind, init in (("identity", "identity", "identity"), ("orth_identity", "learnable_orth", "identity"),
                             ("orth_haar", "learnable_orth", "haar")):
        model, data = build_classifier(cfg.spec(kind, init), seed)
        start = skips_by_block(model)
        s = train_classifier(model, data, cfg.train_config(1, seed), root / f"seed{seed}" / f"{name}_stage1", device,
                             save_checkpoint=False)  # (the app resumes seed by seed: parts.json)
        stage1[name] = (model, data, s, start)
    rows = []
    x_fit, y_fit = eval_subset(stage1["identity"][1], cfg.fit_images, seed, "train", device)
    x_test, y_test = eval_subset(stage1["identity"][1], len(stage1["identity"][1].x_test), 0, "test", device)

    def finish(name, model, data, s1, start, swap=None):
        loss_before = evaluate_loss(model, x_test, y_test)[0] if swap is None else swap["loss_before"]
        W2 = skips_by_block(model)
        path = root / f"seed{seed}" / f"{name}_stage2"
        s2 = train_classifier(model, data, cfg.train_config(2, seed), path, device, save_checkpoint=False)
        W_end = skips_by_block(model)
        stage1_path = root / f"seed{seed}" / f"{'identity' if name == 'two_stage' else name}_stage1"
        swapped_point = [{"epoch": cfg.stage1_epochs, "test_acc": swap["acc_after"], "test_loss": swap["loss_after"]}] \
            if swap else []  # two_stage's curve jumps at the swap
        curve = _evals(stage1_path) + swapped_point + \
            [{**e, "epoch": e["epoch"] + cfg.stage1_epochs} for e in _evals(path)]
        row = {
            "variant": name, "seed": seed, "test_acc": s2["test_acc"], "test_loss": s2["test_loss"],
            "stage1_test_acc": s1["test_acc"], "stage1_test_loss": s1["test_loss"],
            "loss_before_swap": loss_before,
            "loss_after_swap": swap["loss_after"] if swap else None,  # no swap: nothing to show
            "fit_residual_mean": swap["residual_mean"] if swap else None,
            "fit_residual_max": swap["residual_max"] if swap else None,
            "fit_rank_deficient": swap["rank_deficient"] if swap else None,
            "drift_stage2": _drift(W2, W_end), "drift_total": _drift(start, W_end) if start else None,
            "start_identity_distance": _identity_distance(W2), "end_identity_distance": _identity_distance(W_end),
            "skip_orth_error_max": s2.get("skip_orth_error_max"), "curve": curve,
        }
        rows.append(row)

    # two_stage: the identity model of stage 1, its skips swapped for their Procrustes fits
    ident, data, s1, _ = stage1["identity"]
    fits = fit_skips(ident, x_fit)
    swapped, _ = build_classifier(cfg.spec("learnable_orth", "identity"), seed)
    load_with_skips(swapped, ident, {f["name"]: f["Q"] for f in fits})
    swapped.to(device)
    after = evaluate_loss(swapped, x_test, y_test)
    swap = {"loss_before": evaluate_loss(ident, x_test, y_test)[0], "loss_after": after[0], "acc_after": after[1],
            "residual_mean": float(np.mean([f["residual"] for f in fits])),
            "residual_max": float(np.max([f["residual"] for f in fits])),
            "rank_deficient": sum(f["rank_deficient"] for f in fits),
            "identity_distance": float(np.mean([f["identity_distance"] for f in fits]))}
    finish("two_stage", swapped, data, s1, None, swap)
    finish("identity", copy.deepcopy(ident), data, s1, None)
    for name in ("orth_identity", "orth_haar"):
        model, data, s1, start = stage1[name]
        finish(name, model, data, s1, start)
    return rows


# --------------------------------------------------------------------------- summary


def _ci(rows, key):
    return t_interval([r[key] for r in rows if r.get(key) is not None])


def _geometric_ci(rows, key) -> tuple[float, float, float]:
    # test losses after the swap span decades across seeds, where an arithmetic interval ran to -13
    return geometric_interval([r.get(key) for r in rows])


def by_variant(rows: list[dict]) -> list[dict]:
    base = {r["seed"]: r["test_acc"] for r in rows if r["variant"] == "identity"}
    out = []
    for v in VARIANTS:
        rs = [r for r in rows if r["variant"] == v]
        acc, lo, hi, _ = t_interval_within([r["test_acc"] for r in rs], 0.0, 100.0)  # an accuracy: in [0, 100]
        diffs = [r["test_acc"] - base[r["seed"]] for r in rs if r["seed"] in base]
        d, dlo, dhi = t_interval(diffs) if v != "identity" else (math.nan,) * 3
        after, alo, ahi = _geometric_ci(rs, "loss_after_swap")
        drift, drlo, drhi = _ci(rs, "drift_stage2")
        out.append({"variant": v, "seeds": len(rs), "test_acc": acc, "test_acc_lo": lo, "test_acc_hi": hi,
                    "diff": d, "diff_lo": dlo, "diff_hi": dhi, "stage1_test_loss": _ci(rs, "stage1_test_loss")[0],
                    "loss_before_swap": _geometric_ci(rs, "loss_before_swap")[0], "loss_after_swap": after,
                    "loss_after_swap_lo": alo, "loss_after_swap_hi": ahi, "drift_stage2": drift,
                    "drift_stage2_lo": drlo, "drift_stage2_hi": drhi,
                    "fit_residual_mean": _ci(rs, "fit_residual_mean")[0],
                    "end_identity_distance": _ci(rs, "end_identity_distance")[0]})
    return out


def verdict(table: list[dict]) -> str:
    t = {r["variant"]: r for r in table}
    two = t["two_stage"]
    parts = []
    for v in ("identity", "orth_identity", "orth_haar"):
        o = t[v]
        parts.append(f"{v} {o['test_acc']:.2f}%")
    d = two["diff"]
    if math.isnan(two["diff_lo"]):
        vs_id = f"cannot tell against identity ({two['seeds']} seed{'s' if two['seeds'] != 1 else ''}; need 2)"
    elif two["diff_lo"] <= 0 <= two["diff_hi"]:
        vs_id = (f"no detectable difference from identity throughout (paired difference {d:+.2f} points, 95% CI "
                 f"[{two['diff_lo']:+.2f}, {two['diff_hi']:+.2f}])")
    else:
        vs_id = (f"{'better' if d > 0 else 'worse'} than identity throughout by {abs(d):.2f} points (95% CI "
                 f"[{two['diff_lo']:+.2f}, {two['diff_hi']:+.2f}])")
    ratio = two["loss_after_swap"] / two["loss_before_swap"]
    interval = "" if math.isnan(two["loss_after_swap_lo"]) else \
        f", 95% CI after [{two['loss_after_swap_lo']:.3g}, {two['loss_after_swap_hi']:.3g}]"
    return (f"two_stage reaches {two['test_acc']:.2f}% test accuracy ({', '.join(parts)}): {vs_id}. The swap moves "
            f"the test loss from {two['loss_before_swap']:.3g} to {two['loss_after_swap']:.3g} (geometric means over "
            f"seeds, ×{ratio:.3g}{interval}; mean "
            f"Procrustes residual {two['fit_residual_mean']:.3g}); in fine-tuning its matrices move "
            f"{two['drift_stage2']:.3g} (mean ||W_end - Q||_F), against {t['orth_identity']['drift_stage2']:.3g} "
            f"and {t['orth_haar']['drift_stage2']:.3g} for orthogonal skips trained from I and from Haar in the same "
            "stage.")


def variant_styles(cfg: Config) -> dict[str, dict]:
    """Legend label and colour of each variant: a skip kind's colour in the report's other
    figures (:func:`~orthogonal_skip_connections.plots.variant_colors` of its run label:
    identity, learnable_orth/<method>, learnable_orth/<method>/haar); two_stage, no one skip
    kind, black."""
    from ..plots import variant_colors
    from ..train.image import run_variant

    runs = {"identity": "identity", "orth_identity": run_variant(cfg.spec("learnable_orth", "identity")),
            "orth_haar": run_variant(cfg.spec("learnable_orth", "haar"))}
    colors = variant_colors(runs.values())
    return {"two_stage": {"label": "two_stage (= identity until the swap: dashed)", "color": "black"},
            "identity": {"label": "identity", "color": colors[runs["identity"]]},
            "orth_identity": {"label": f"orth_identity ({runs['orth_identity']} from I)",
                              "color": colors[runs["orth_identity"]]},
            "orth_haar": {"label": f"orth_haar ({runs['orth_identity']} from Haar)",
                          "color": colors[runs["orth_haar"]]}}


def draw(cfg: Config, rows: list[dict], path: Path) -> str:
    from ..plots import band, integer_ticks, plain_log_labels, plt, savefig

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    styles = variant_styles(cfg)
    for v in ("identity", "orth_identity", "orth_haar", "two_stage"):  # two_stage last: on top of identity
        rs = [r for r in rows if r["variant"] == v]
        epochs = [e["epoch"] for e in rs[0]["curve"]]  # two_stage: the end of stage 1 twice, before and after
        for a, key, log in ((ax, "test_acc", False), (ax2, "test_loss", True)):  # the loss on a log axis: geometric band
            ys = [[e[key] for e in r["curve"]] for r in rs]
            if v != "two_stage":
                band(a, epochs, ys, label=styles[v]["label"], log=log, color=styles[v]["color"],
                     linewidth=2.6 if v == "identity" else 1.5)  # identity wide: two_stage's stage 1 shows over it
                continue
            # stage 1 is identity's own (one model): dashed over it, without a second band; from the end of stage
            # 1 on (the jump at the swap included), solid with its band
            swap = epochs.index(cfg.stage1_epochs)
            band(a, epochs[:swap + 1], [y[:swap + 1] for y in ys], log=log, color=styles[v]["color"], alpha=0,
                 linestyle=(0, (3, 2)), linewidth=1.1, zorder=3)
            band(a, epochs[swap:], [y[swap:] for y in ys], label=styles[v]["label"], log=log,
                 color=styles[v]["color"], linewidth=1.5, zorder=3)
    swaps = [r["loss_after_swap"] for r in rows if r["variant"] == "two_stage"]
    ax2.plot([cfg.stage1_epochs] * len(swaps), swaps, "x", color="black", zorder=4,
             label="two_stage right after the swap (each seed)")
    for a in (ax, ax2):
        a.axvline(cfg.stage1_epochs, color="grey", linestyle="--", linewidth=0.8)
        a.set_xlabel("epoch (dashed: end of stage 1, the swap)")
        integer_ticks(a.xaxis)
        a.grid(alpha=0.3)
    from ..data.vision import NUM_CLASSES

    ax.axhline(100.0 / NUM_CLASSES[cfg.dataset_name], color="grey", linestyle=":", linewidth=1.0, label="chance")
    ax.set_ylabel("test accuracy (%)")
    ax2.set_ylabel("test loss (cross-entropy)")
    plain_log_labels(ax2, "y")  # (band set the log scale)
    handles, labels = ax2.get_legend_handles_labels()  # two_stage first, as in the title; chance (left) last
    chance = ax.get_legend_handles_labels()
    handles, labels = handles + chance[0][-1:], labels + chance[1][-1:]
    order = sorted(range(len(labels)), key=lambda i: not labels[i].startswith("two_stage ("))
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center", ncols=3,
               fontsize="small")  # both panels draw the same variants; below them, not over the bands
    fig.suptitle(f"{cfg.model_type} on {cfg.dataset_name}: identity -> Procrustes-orthogonal swap vs. one skip kind "
                 f"throughout\n(line and band over {cfg.seeds} seeds: accuracy mean ± std, loss geometric mean ×/÷ "
                 "geometric std)", fontsize=10)
    return savefig(fig, path).name


def chance_note(cfg: Config, table: list[dict]) -> str:
    """What the verdict adds when variants ended near chance: they did not train, and the
    comparison (and the swap's numbers, for two_stage) says nothing about the skips. '' else."""
    from ..data.vision import NUM_CLASSES

    idle, said = near_chance([(t["variant"], t["test_acc"], 100.0 / NUM_CLASSES[cfg.dataset_name]) for t in table])
    if not idle:
        return ""
    return (f" Note: {said}: {'it' if len(idle) == 1 else 'they'} did not train (more epochs, or another lr), so "
            "this comparison says nothing about the skips.")


def report(cfg: Config, table: list[dict], figure: str) -> dict:
    return {
        "title": f"Two-stage training: identity, then Procrustes-fitted orthogonal skips ({cfg.model_type} on "
                 f"{cfg.dataset_name}, {cfg.stage1_epochs} + {cfg.stage2_epochs} epochs)",
        "question": "does training with identity skips, then swapping each for the orthogonal matrix that best fits "
                    "its block and fine-tuning it on O(n), beat identity throughout or orthogonal skips from the "
                    "start, at the same total epochs?",
        "measures": [
            f"variants, each {cfg.stage1_epochs} + {cfg.stage2_epochs} epochs with the same schedules (stage 1: lr "
            f"{cfg.lr:g}, cosine with warm-up; stage 2: lr {cfg.finetune_lr:g}, cosine, a fresh optimiser): two_stage "
            "= identity skips, then each skip W_i := Q_i, then learnable orthogonal skips; identity = identity "
            "throughout; orth_identity / orth_haar = learnable orthogonal skips from I / a Haar draw throughout",
            f"Q_i: the orthogonal Procrustes fit (Schoenemann 1966) of block i's skip inputs X to its residual sums "
            f"Y = X + f_i(X) on {cfg.fitted_images()} training images, one row per pixel: argmin ||Y - X Q^T||_F over "
            "O(C); Procrustes residual ||Y - X Q_i^T||_F / ||Y||_F, mean over blocks (0: the block is orthogonal)",
            "test loss after the swap: of the identity model with its skips replaced by the Q_i, before any "
            "fine-tuning; it and the loss at the end of stage 1 are geometric means over seeds (the losses span "
            "decades), their interval Student-t on the logs: the geometric mean times/divided by one factor; "
            "drift in stage 2: mean over skips of ||W_end - W_start||_F over stage 2",
        ],
        "tables": [{
            "caption": f"over {cfg.seeds} seeds, 95% Student-t intervals (accuracies' cut at 0 and 100 %; test "
                       "losses: geometric means, the interval on the logs, so it stays above 0); difference vs identity paired by seed "
                       "(two_stage and identity share their stage-1 model); drift: mean ||W_end - W_start||_F of "
                       f"the skips over stage 2 ({cfg.method} constraint)",
            "columns": [column("variant", "variant"), column("seeds", "seeds"),
                        column("test_acc", "test accuracy", "%"), column("test_acc_lo", "95% CI low", "%"),
                        column("test_acc_hi", "95% CI high", "%"), column("diff", "vs identity", "points"),
                        column("diff_lo", "95% CI low", "points"), column("diff_hi", "95% CI high", "points"),
                        column("loss_before_swap", "test loss end of stage 1 (geometric mean)"),
                        column("loss_after_swap", "test loss after the swap (geometric mean)"),
                        column("loss_after_swap_lo", "95% CI low (from the logs)"),
                        column("loss_after_swap_hi", "95% CI high (from the logs)"),
                        column("fit_residual_mean", "Procrustes residual"),
                        column("drift_stage2", "drift in stage 2"), column("drift_stage2_lo", "95% CI low"),
                        column("drift_stage2_hi", "95% CI high"),
                        column("end_identity_distance", "final ||W - I||_F")],
            "rows": table}],
        "verdict": verdict(table) + chance_note(cfg, table),
        "figures": [figure],
        "captions": {figure: "test accuracy (left; dotted: chance) and test loss (right) over both stages per "
                             "variant: where the two-stage arm's accuracy goes when its identity skips are swapped "
                             "for their fitted orthogonal matrices, and whether stage 2 brings it back to identity's "
                             "or beyond"},
    }


def kept_seeds(cfg: Config, rd: RunDir) -> dict[int, list[dict]]:
    """The rows of the seeds a stopped run finished, by seed (its parts.json; none unless
    ``resume=true``). A record that is not of this run, four rows of one of its seeds in
    :data:`VARIANTS`' order, is one UserError line."""
    path = rd.path / PARTS
    if not (rd.resume and path.is_file()):
        return {}
    seeds = read_json(path).get("seeds")  # (RunDir.claim refused a file that is not a JSON object)
    away = rd.remake_advice() or "move it away to train every seed again"
    if not isinstance(seeds, dict):
        raise UserError(f"{path} holds no rows by seed (its 'seeds'); {away}")
    kept = {}
    for key, rows in seeds.items():
        ok = key.isdigit() and cfg.seed <= int(key) < cfg.seed + cfg.seeds and isinstance(rows, list) and \
            all(isinstance(r, dict) for r in rows) and \
            [(r.get("variant"), r.get("seed")) for r in rows] == [(v, int(key)) for v in VARIANTS]
        if not ok:
            raise UserError(f"{path}: seed {key}'s record is not the four rows of a seed of this run; {away}")
        kept[int(key)] = rows
    return kept


def save_seeds(path: Path, rows: list[dict]) -> None:
    """parts.json: the rows of every finished seed, written whole (atomically) after each seed.
    NaN and inf are kept (Python's JSON reads them back): a loss the swap sent to inf must
    count on resume as it did in the run."""
    by_seed: dict[str, list[dict]] = {}
    for r in rows:
        by_seed.setdefault(str(r["seed"]), []).append(r)
    atomic_write_text(path / PARTS, json.dumps({"seeds": by_seed}, allow_nan=True))


def run(cfg: Config, rd: RunDir) -> dict:
    device = resolve_device(cfg.device)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    # data and options checked before any write; a dataset missing offline is one line naming the one way
    # this app takes a data root ($OSC_DATA_ROOT: it has no data.root)
    fetch(cfg.dataset_name, keys=(None, None))
    _, data = build_classifier(cfg.spec("learnable_orth", "haar"), cfg.seed)
    check_batch_size("batch_size", cfg.batch_size, cfg.dataset_name, cfg.n_train, loaded=data)
    kept = kept_seeds(cfg, rd)
    rd.start(cfg)
    rd.device = device
    rows = []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        done = kept.get(seed) or run_seed(cfg, seed, rd.path, device)
        rows += done
        if seed not in kept:
            save_seeds(rd.path, rows)
        print(f"seed {seed}{' (kept from ' + PARTS + ')' if seed in kept else ''}: "
              + ", ".join(f"{r['variant']} {r['test_acc']:.2f}%" for r in done))
    table = by_variant(rows)
    figure = draw(cfg, rows, rd.path / "two_stage.png")
    return {"runs": rows, "by_variant": table, "figures": [figure], "report": report(cfg, table, figure)}


def fetch_datasets(cfgs: list[Config]) -> None:
    """A sweep's datasets (from the default data root), found or downloaded once before its first
    job, as run_experiments' sweeps do (:func:`~.run_experiments.fetch_datasets`)."""
    fetch_each(((f"sweep: job {num}", cfg.dataset_name, None, True) for num, cfg in enumerate(cfgs)), what="job",
               keys=(None, None))


main = App("two_stage", Config, run, resume=True, prepare=fetch_datasets)

if __name__ == "__main__":
    sys.exit(main())
