"""What the apps share when reading their configs and run dirs (app layer: the only
layer that reads omegaconf configs)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import DictConfig

from ..runs import UserError
from ..train.classifier import TrainConfig

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")




def config_number(cfg, key: str, low: float, integer: bool = False, strict: bool = False) -> float | int:
    """``cfg[key]``, checked to be a finite number (an integer if asked) >= low (> low if
    ``strict``); else a one-line UserError naming the key."""
    value = cfg[key]
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low)
    if not ok:
        what = "an integer" if integer else "a number"
        raise UserError(f"{key} must be {what} {'>' if strict else '>='} {low}; got {value!r}")
    return int(value) if integer else float(value)


def train_config_from(cfg: DictConfig) -> TrainConfig:
    """The training keys every small-model app shares, read from the top level of its
    config: epochs, batch_size, optimizer, lr, momentum, weight_decay, schedule,
    warmup_epochs, grad_clip, progress. Wrong values are one-line UserErrors."""
    if cfg.optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {cfg.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    if cfg.schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {cfg.schedule!r}; allowed: {', '.join(SCHEDULES)}")
    if not isinstance(cfg.progress, bool):
        raise UserError(f"progress must be true or false; got {cfg.progress!r}")
    tcfg = TrainConfig(
        epochs=config_number(cfg, "epochs", 1, integer=True),
        batch_size=config_number(cfg, "batch_size", 1, integer=True),
        optimizer=cfg.optimizer,
        lr=config_number(cfg, "lr", 0, strict=True),
        momentum=config_number(cfg, "momentum", 0),
        weight_decay=config_number(cfg, "weight_decay", 0),
        schedule=cfg.schedule,
        warmup_epochs=config_number(cfg, "warmup_epochs", 0),
        grad_clip=config_number(cfg, "grad_clip", 0),
        milestones=list(int_list(cfg, "milestones", 0)) if cfg.get("milestones") else [],
        gamma=config_number(cfg, "gamma", 0, strict=True) if "gamma" in cfg else 0.1,
        progress=cfg.progress,
    )
    tcfg.validate()
    return tcfg


def check_fresh_run_dir(run_dir: Path) -> None:
    """Never overwrite a finished result: a run dir holding summary.json is refused."""
    if (Path(run_dir) / "summary.json").exists():
        raise UserError(f"{run_dir} already holds a finished run (summary.json); choose another hydra.run.dir")


def int_list(cfg, key: str, low: int) -> list[int]:
    """A non-empty list of integers >= low at ``cfg[key]``, sorted, duplicates dropped."""
    from omegaconf import OmegaConf

    value = cfg[key]
    if not OmegaConf.is_list(value) or len(value) == 0:
        raise UserError(f"{key} must be a non-empty list of integers >= {low}; got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise UserError(f"every entry of {key} must be an integer >= {low}; got {v!r}")
    return sorted(set(value))


def skip_kind_list(cfg, key: str = "skip_kinds") -> list[str]:
    """A non-empty list of skip kinds at ``cfg[key]``, in order, duplicates dropped."""
    from omegaconf import OmegaConf

    from ..skips import SKIP_KINDS

    kinds = cfg[key]
    if not OmegaConf.is_list(kinds) or len(kinds) == 0 or any(k not in SKIP_KINDS for k in kinds):
        raise UserError(f"{key} must be a non-empty list of: {', '.join(SKIP_KINDS)}; got {kinds!r}")
    return list(dict.fromkeys(kinds))


def seed_list(cfg: DictConfig) -> list[int]:
    """The seeds of a stack from the keys ``seed`` (first) and ``seeds`` (how many):
    seed, seed + 1, ..., seed + seeds - 1."""
    first = config_number(cfg, "seed", 0, integer=True)
    return list(range(first, first + config_number(cfg, "seeds", 1, integer=True)))


def residual_mlp_factory(cfg: DictConfig, dim: int, depth: int, num_classes: int, skip_kind: str):
    """``make_model()`` for :meth:`SeedStack.build`: a ResidualMLP classifier whose ``depth``
    blocks act on R^dim itself (no embedding), then a linear head, built from the shared
    model keys ``hidden_mult``, ``activation`` and ``skip.{method, init, special, lr_scale}``.
    One model is built here to check the options (a mistake is one line, before any run)."""
    from ..models.mlp import ResidualMLP

    hidden_mult = config_number(cfg, "hidden_mult", 0, strict=True)
    skip = cfg.skip
    options = {"method": skip.method, "init": skip.init, "special": skip.special, "lr_scale": skip.lr_scale}
    if not isinstance(skip.special, bool):
        raise UserError(f"skip.special must be true or false; got {skip.special!r}")

    def make_model():
        return ResidualMLP(dim, depth, hidden_mult=hidden_mult, skip_kind=skip_kind, num_classes=num_classes,
                           activation=cfg.activation, **options)

    with torch.random.fork_rng(devices=[]):
        try:
            make_model()
        except (TypeError, ValueError) as err:
            raise UserError(str(err)) from None
    return make_model
