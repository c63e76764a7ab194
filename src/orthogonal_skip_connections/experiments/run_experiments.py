"""Train an image classifier with any skip kind: the original project's main experiment.

    python -m orthogonal_skip_connections.experiments.run_experiments \
        model.skip_kind=learnable_orth dataset=cifar100
    osc run_experiments dataset=digits model.model_type=resnet20 scheduler.epochs=2

Writes config.yaml, metrics.jsonl, checkpoint.pt and summary.json into the run dir.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..data.vision import load_image_data
from ..models import get_model
from ..runs import UserError, hydra_app, read_json, resolve_device, save_config
from ..train.classifier import (
    CHECKPOINT,
    SUMMARY,
    Diverged,
    TensorBoardSink,
    TrainConfig,
    WandbSink,
    train_classifier,
)

WANDB_MODES = ("disabled", "offline", "online")


def train_config(cfg: DictConfig) -> TrainConfig:
    o, s = cfg.optimizer, cfg.scheduler
    return TrainConfig(
        epochs=int(s.epochs), batch_size=int(cfg.batch_size), optimizer=o.name, lr=float(o.lr),
        momentum=float(o.momentum), nesterov=bool(o.nesterov), weight_decay=float(o.weight_decay),
        decay_norms_and_biases=bool(o.decay_norms_and_biases), schedule=s.name,
        warmup_epochs=float(s.warmup_epochs), milestones=[int(m) for m in s.milestones], gamma=float(s.gamma),
        label_smoothing=float(cfg.label_smoothing), mixup_alpha=float(cfg.mixup_alpha),
        grad_clip=float(cfg.grad_clip),
        upkeep_momentum=None if o.upkeep_momentum is None else float(o.upkeep_momentum),
        amp=cfg.amp, channels_last=bool(cfg.channels_last), eval_every=int(cfg.eval_every),
        seed=int(cfg.seed), progress=bool(cfg.progress),
    )


def skip_options(m: DictConfig) -> dict:
    """The model's skip options; None means "the kind's default"."""
    opts = {
        "method": m.method, "update_rule": m.update_rule, "update_rule_iters": m.update_rule_iters,
        "init": m.init, "special": m.special, "rank_fraction": m.rank_fraction, "lr_scale": m.lr_scale,
    }
    return {k: v for k, v in opts.items() if v is not None}


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Never overwrite a saved result: a dir with a summary or checkpoint is only resumed."""
    summary, ckpt = run_dir / SUMMARY, run_dir / CHECKPOINT
    if resume:
        return
    if summary.exists() or ckpt.exists():
        what = "a finished run" if summary.exists() else "an unfinished run (resume=true continues it)"
        raise UserError(f"{run_dir} already holds {what}; choose another hydra.run.dir")


def run(cfg: DictConfig, run_dir: Path) -> dict:
    tcfg = train_config(cfg)
    tcfg.validate()
    if cfg.wandb.mode not in WANDB_MODES:
        raise UserError(f"unknown wandb.mode {cfg.wandb.mode!r}; allowed: {', '.join(WANDB_MODES)}")
    check_run_dir(run_dir, bool(cfg.resume))
    if cfg.resume and (run_dir / SUMMARY).exists():
        done = read_json(run_dir / SUMMARY)
        if done.get("status") == "completed":
            print(f"{run_dir} is already completed (test_acc {done.get('test_acc')}); nothing to resume")
            return done
    device = resolve_device(cfg.device)
    if cfg.num_threads is not None:
        if int(cfg.num_threads) < 1:
            raise UserError(f"num_threads must be >= 1 or null; got {cfg.num_threads}")
        torch.set_num_threads(int(cfg.num_threads))
    torch.manual_seed(int(cfg.seed))
    data = load_image_data(cfg.dataset.name, cfg.data.root, bool(cfg.data.download), bool(cfg.data.augment))
    m = cfg.model
    model = get_model(m.model_type, data.num_classes, m.skip_kind, in_channels=data.in_channels, stem=m.stem,
                      zero_init_residual=bool(m.zero_init_residual), **skip_options(m))
    save_config(cfg, run_dir)
    sinks = []
    if cfg.tensorboard:
        sinks.append(TensorBoardSink(run_dir / "tensorboard"))
    if cfg.wandb.mode != "disabled":
        sinks.append(WandbSink(cfg.wandb.mode, cfg.wandb.project, OmegaConf.to_container(cfg, resolve=True),
                               run_dir, name=run_dir.name))
    opts = skip_options(m)
    method = opts.get("method", opts.get("update_rule", "steepest")) if m.skip_kind == "learnable_orth" else None
    extra = {"dataset": data.name, "model_type": m.model_type, "skip_kind": m.skip_kind, "method": method,
             "seed": int(cfg.seed)}
    try:
        summary = train_classifier(model, data, tcfg, run_dir, device, sinks, resume=bool(cfg.resume),
                                   extra_summary=extra)
    except Diverged as err:
        print(f"error: training diverged: {err}; summary in {run_dir / SUMMARY}", file=sys.stderr)
        sys.exit(1)
    print(f"test accuracy {summary['test_acc']:.2f}% (best {summary['best_test_acc']:.2f}%) "
          f"after {summary['epochs']} epochs; run dir {run_dir}")
    return summary


main = hydra_app("run_experiments")(run)

if __name__ == "__main__":
    main()
