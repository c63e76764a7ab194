"""Config parts that several apps share (the small-model apps' training keys, the
ResidualMLP apps' ``skip.*``) and the model factory they build from them. No Hydra, no
omegaconf: plain dataclasses, checked with :mod:`._checks`."""

from __future__ import annotations

import dataclasses

from ..runs import UserError
from ._checks import choice, number, one_of, require

__all__ = ["SmallTraining", "SkipOptions", "residual_mlp_factory", "skip_kinds", "check_synthetic_data",
           "check_residual_mlp_memory"]


@dataclasses.dataclass
class SmallTraining:
    """The training keys the small-model apps share, at the top level of their configs."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    upkeep_adaptive: bool
    weight_decay: float
    schedule: str
    milestones: list[int]
    gamma: float
    warmup_epochs: float
    grad_clip: float
    progress: bool

    def check_training(self) -> None:
        from ..optim import OPTIMIZERS, SCHEDULES

        choice("optimizer", self.optimizer, OPTIMIZERS)
        choice("schedule", self.schedule, SCHEDULES)
        require(self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)
        require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        number("lr", self.lr, 0, strict=True)
        number("momentum", self.momentum, 0)
        number("weight_decay", self.weight_decay, 0)
        number("gamma", self.gamma, 0, strict=True)
        number("warmup_epochs", self.warmup_epochs, 0)
        number("grad_clip", self.grad_clip, 0)
        require(not self.upkeep_adaptive or self.optimizer in ("adam", "adamw"), "upkeep_adaptive",
                "false with optimizer sgd (Adam's moments need adam or adamw)", self.upkeep_adaptive)
        for m in self.milestones:
            require(m >= 1, "milestones", "epochs >= 1", m)

    def training_text(self) -> str:
        """How the models were trained, for a report's "what is measured" list: epochs,
        optimiser, lr, schedule (a step schedule's milestones; milestones another schedule does
        not use), and whether retracted skips took Adam's step."""
        text = f"{self.epochs} epochs of batch {self.batch_size}, {self.optimizer} lr {self.lr:g}"
        if self.optimizer == "sgd" and self.momentum:
            text += f" momentum {self.momentum:g}"
        if self.weight_decay:
            text += f" weight decay {self.weight_decay:g}"
        text += f", {self.schedule} schedule"
        milestones = sorted(set(self.milestones))
        if self.schedule == "step":
            text += f" (lr x {self.gamma:g} at epochs {milestones})" if milestones else " (no milestones: lr constant)"
        elif milestones:  # (set for a sweep's step jobs, say): not silently dropped
            text += f" (milestones {milestones} not used: they apply to schedule=step)"
        if self.upkeep_adaptive:
            text += "; retracted skips by Adam's step in so(n) (upkeep_adaptive)"
        return text

    def train_config(self):
        """The :class:`TrainConfig` of the small-model trainer."""
        from ..train.classifier import TrainConfig

        tcfg = TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
                           momentum=self.momentum, upkeep_adaptive=self.upkeep_adaptive,
                           weight_decay=self.weight_decay, schedule=self.schedule,
                           milestones=sorted(set(self.milestones)), gamma=self.gamma,
                           warmup_epochs=self.warmup_epochs, grad_clip=self.grad_clip, progress=self.progress)
        tcfg.validate()
        return tcfg


@dataclasses.dataclass
class SkipOptions:
    """``skip.*`` of the ResidualMLP apps."""

    method: str
    init: str
    special: bool
    lr_scale: float

    def options(self) -> dict:
        return {"method": self.method, "init": self.init, "special": self.special, "lr_scale": self.lr_scale}


def residual_mlp_factory(cfg, dim: int, depth: int, num_classes: int, skip_kind: str):
    """``make_model()`` for :meth:`SeedStack.build`: a ResidualMLP classifier whose ``depth``
    blocks act on R^dim itself, then a linear head, from ``cfg.hidden_mult``,
    ``cfg.activation`` and ``cfg.skip``. One model is built here to check the options (a
    mistake is one line, before anything is written)."""
    import torch

    from ..models.mlp import ResidualMLP

    def make_model():
        return ResidualMLP(dim, depth, hidden_mult=cfg.hidden_mult, skip_kind=skip_kind, num_classes=num_classes,
                           activation=cfg.activation, **cfg.skip.options())

    with torch.random.fork_rng(devices=[]):
        try:
            make_model()
        except (TypeError, ValueError) as err:
            raise UserError(str(err)) from None
    return make_model


def check_residual_mlp_memory(where: str, dim: int, depth: int, hidden_mult: float, num_classes: int, seeds: int,
                              n_samples: int, grid_points: int = 0) -> None:
    """One line (before anything is built) when ``seeds`` ResidualMLPs of this size with
    their gradients (float32), ``n_samples`` data points in ``dim`` dimensions (made in
    float64) and ``grid_points`` points of a picture's grid (float32) cannot fit in this
    machine's memory: a lower bound (skips, optimiser state and activations not counted)."""
    from ..models.mlp import residual_mlp_min_parameters
    from ..runs import check_memory

    try:
        params = residual_mlp_min_parameters(dim, depth, hidden_mult, num_classes)
    except ValueError as err:
        raise UserError(str(err)) from None
    check_memory(f"{where}: {seeds} model(s) of {params:.3g} weights and {n_samples * dim:.3g} data values",
                 8 * seeds * params + 8 * n_samples * dim + 4 * grid_points * dim)


def check_synthetic_data(where: str, dataset_type: str, **args) -> None:
    """One line (a UserError starting with ``where``) for synthetic-data arguments the
    library refuses (:func:`~orthogonal_skip_connections.data.synthetic.check_synthetic`);
    for ``Config.check``, so that they are refused before Hydra makes a run dir. No data
    is made."""
    from ..data.synthetic import check_synthetic

    try:
        check_synthetic(dataset_type, **args)
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: {err}") from None


def skip_kinds(key: str, kinds: list[str]) -> list[str]:
    from ..skips import SKIP_KINDS

    return one_of(key, kinds, SKIP_KINDS)
