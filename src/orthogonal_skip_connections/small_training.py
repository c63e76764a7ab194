"""Training small vector classifiers, several seeds at once: the one routine behind the
synthetic-data apps (``orth_residual_synthetic_data``, ``orth_to_id``,
``construction_validity``).

The image-scale loop (:func:`~orthogonal_skip_connections.training.train_classifier`) trains
one model at a time. The models here are tiny (a few residual blocks of width 2 to 64),
so one model per step leaves the machine idle in Python overhead; instead the S models of
S seeds are *stacked* and trained as one:

- :class:`SeedStack` holds S copies of one architecture with every parameter and buffer
  stacked along a new leading seed axis, ``(S, *shape)`` (``torch.func.stack_module_state``),
  and evaluates them with ``torch.func.vmap`` over ``torch.func.functional_call``: the
  "model ensembling" recipe of the torch.func documentation. Every skip kind works:
  retracted orthogonal matrices are stacked ``(S, n, n)``, parametrized ones keep their
  parametrization (its unconstrained ``original`` and its ``base`` are stacked instead).
- :func:`train_small_classifier` is the loop: the optimiser of
  :func:`~orthogonal_skip_connections.training.build_optimizer` (same groups and options,
  with the seed axis discounted when telling weight matrices from biases), the schedule of
  :func:`~orthogonal_skip_connections.training.lr_factor`, and
  :class:`~orthogonal_skip_connections.skips.OrthogonalUpkeep` after every optimiser step,
  which steps all retracted skips of all seeds as one batch through the ``(..., n, n)``
  maths of :mod:`~orthogonal_skip_connections.orthogonal`.

Why stacking is exact. The loss is the sum over seeds of each seed's mean cross-entropy,
so the gradient of the stacked parameter at seed s is seed s's own gradient; SGD, AdamW,
weight decay and the upkeep all act entry-wise or per matrix; gradient clipping is done
per seed; and each seed draws its initial weights (``torch.manual_seed(seed)``) and its
minibatch order (``epoch_generator(seed, epoch)``) from its own stream. So seed s follows
the trajectory it would follow alone, up to float round-off: a batched matmul may sum in
another order than an unbatched one (the tests compare a stacked run with single runs).

Measurements of stacked ResidualMLP-like models (``blocks`` with ``skip`` and ``branch``)
are here too, vectorised over seeds: :func:`skip_matrices`, :func:`stacked_block_inputs`,
:func:`branch_lipschitz_bounds`, :func:`branch_lipschitz_empirical`. For anything else,
:meth:`SeedStack.model` gives seed s as an ordinary module for the per-model diagnostics
of :mod:`~orthogonal_skip_connections.diagnostics`.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from . import orthogonal as orth
from .data.vision import epoch_generator
from .diagnostics import jacobian_spectral_norms, lipschitz_upper_bound_stacked
from .runs import UserError, progress_bar
from .skips import OrthogonalUpkeep, split_parameters
from .training import Diverged, TrainConfig, lr_factor

__all__ = [
    "SeedStack",
    "build_stacked_optimizer",
    "train_small_classifier",
    "steps_per_epoch",
    "evaluate_stack",
    "skip_matrices",
    "stacked_block_inputs",
    "branch_lipschitz_bounds",
    "branch_lipschitz_empirical",
    "train_config_from",
    "config_number",
    "int_list",
    "seed_list",
    "residual_mlp_factory",
    "check_fresh_run_dir",
]


class _Runner(nn.Module):
    """Holds the stacked template as ``model`` and runs ``fn(model, *args)``: lets
    ``functional_call`` (which only calls ``forward``) evaluate any function of the model
    (its logits, its block inputs, a block's branch Jacobians) with one seed's parameters."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable, *args):
        return fn(self.model, *args)


def _set_tensor(root: nn.Module, name: str, value: Tensor, is_param: bool) -> None:
    """Replace parameter/buffer ``name`` (dotted) of ``root`` by ``value`` (any shape)."""
    *path, leaf = name.split(".")
    module = root
    for part in path:
        module = getattr(module, part)
    if is_param:
        module._parameters[leaf] = nn.Parameter(value)
    else:
        module._buffers[leaf] = value


class SeedStack(nn.Module):
    """S models of one architecture, one per seed, stacked for vectorised training.

    ``SeedStack.build(make_model, seeds)`` calls ``make_model()`` once per seed with torch's
    global RNG seeded by that seed (the caller's RNG state is restored afterwards), so seed s
    starts from the same weights whether it is built alone or beside others.

    Every parameter and buffer of the stored template has shape (S, *shape of one model).
    The template is never called directly; ``stack(X)`` and :meth:`apply` run it with
    ``vmap`` over seeds. :func:`~orthogonal_skip_connections.skips.split_parameters` and
    :class:`~orthogonal_skip_connections.skips.OrthogonalUpkeep` see the stacked skips as
    ordinary skips whose matrices have a leading batch axis, which both already handle.
    """

    def __init__(self, models: Sequence[nn.Module], seeds: Sequence[int]):
        super().__init__()
        if len(models) == 0 or len(models) != len(seeds):
            raise ValueError(f"need one model per seed; got {len(models)} models and {len(seeds)} seeds")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct; got {list(seeds)}")
        self.seeds = [int(s) for s in seeds]
        # one unstacked copy, the mould for :meth:`model`
        self._single = [copy.deepcopy(models[0])]  # in a list: not a registered submodule
        params, buffers = stack_module_state(list(models))  # name -> (S, *shape)
        template = copy.deepcopy(models[0])
        for name, value in params.items():
            _set_tensor(template, name, value.detach().clone(), is_param=True)
        for name, value in buffers.items():
            _set_tensor(template, name, value.detach().clone(), is_param=False)
        self.runner = _Runner(template)
        self._named = None

    def _apply(self, fn, *args, **kwargs):  # .to(), .double(), ...: tensors may be replaced
        self._named = None
        self._single[0]._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    @classmethod
    def build(cls, make_model: Callable[[], nn.Module], seeds: Sequence[int]) -> "SeedStack":
        models = []
        for seed in seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                models.append(make_model())
        return cls(models, seeds)

    @property
    def template(self) -> nn.Module:
        """The architecture with stacked (S, ...) tensors: for its structure and parameters."""
        return self.runner.model

    def __len__(self) -> int:
        return len(self.seeds)

    def apply(self, fn: Callable, *args, in_dims=None):
        """``fn(model_s, *args_s)`` for every seed s, stacked along a new leading axis.

        ``in_dims``: per argument, 0 if it carries a seed axis (S, ...), None if shared by
        all seeds (default: every argument shared). ``fn`` may return a tensor or a
        tuple/list of tensors. Gradients flow to the stacked parameters."""
        if self._named is None:  # the same tensors every call; rebuilt after .to() (see _apply)
            self._named = (dict(self.runner.named_parameters()), dict(self.runner.named_buffers()))
        params, buffers = self._named
        arg_dims = (None,) * len(args) if in_dims is None else tuple(in_dims)
        if len(arg_dims) != len(args):
            raise ValueError(f"in_dims has {len(arg_dims)} entries for {len(args)} arguments")

        def one_seed(p, b, *a):
            return functional_call(self.runner, (p, b), (fn, *a), tie_weights=False)

        return vmap(one_seed, in_dims=(0, 0, *arg_dims))(params, buffers, *args)

    def forward(self, X: Tensor) -> Tensor:
        """Logits of every seed: X (N, d) shared or (S, N, d) per seed -> (S, N, classes)."""
        return self.apply(lambda m, x: m(x), X, in_dims=(0 if X.ndim == 3 else None,))

    @torch.no_grad()
    def model(self, s: int) -> nn.Module:
        """Seed number s (an index into ``seeds``) as an ordinary, independent module."""
        m = copy.deepcopy(self._single[0])
        state = {k.removeprefix("model."): v[s].clone() for k, v in self.runner.state_dict().items()}
        m.load_state_dict(state)
        return m


# --------------------------------------------------------------------------- the loop


def build_stacked_optimizer(stack: SeedStack, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, OrthogonalUpkeep]:
    """:func:`~orthogonal_skip_connections.training.build_optimizer` for a stack.

    Same groups and options; the only difference is how weight matrices are told from
    biases and scalars: a stacked parameter has one more axis (a bias is (S, out)), so
    weight decay applies when ``p.ndim - 1 >= 2``. Retracted skip matrices stay out of
    the optimiser; the returned upkeep steps them."""
    groups = split_parameters(stack)
    is_matrix = lambda p: p.ndim - 1 >= 2 or cfg.decay_norms_and_biases  # noqa: E731
    param_groups = [
        {"params": [p for p in groups["other"] if is_matrix(p)], "weight_decay": cfg.weight_decay},
        {"params": [p for p in groups["other"] if not is_matrix(p)] + groups["constrained"], "weight_decay": 0.0},
    ]
    param_groups = [g for g in param_groups if g["params"]]
    if not param_groups:  # nothing for the optimiser (e.g. only retracted skips): a placeholder
        param_groups = [{"params": [nn.Parameter(torch.zeros(()))], "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum,
                              nesterov=cfg.nesterov and cfg.momentum > 0, foreach=True)
    else:  # foreach: one kernel per group and operation, not per tensor (many small tensors here)
        opt = torch.optim.AdamW(param_groups, lr=cfg.lr, betas=tuple(cfg.betas), foreach=True)
    upkeep_momentum = cfg.momentum if cfg.upkeep_momentum is None else cfg.upkeep_momentum
    return opt, OrthogonalUpkeep(stack, momentum=upkeep_momentum, optimizer=opt)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps per epoch over n samples: n // batch_size (the last partial batch
    is dropped), or 1 full-batch step when batch_size >= n."""
    return max(1, n // batch_size)


def _batches(n: int, batch_size: int, seeds: list[int], epoch: int, device) -> list[Tensor | None]:
    """Index batches of one epoch: a list of (S, B) index tensors, one row per seed, each
    seed's order drawn from ``epoch_generator(seed, epoch)``; the last partial batch is
    dropped. ``[None]`` (the whole set, no shuffling) when one batch holds everything."""
    if batch_size >= n:
        return [None]
    perms = torch.stack([torch.randperm(n, generator=epoch_generator(s, epoch)) for s in seeds]).to(device)
    steps = n // batch_size
    return [perms[:, k * batch_size:(k + 1) * batch_size] for k in range(steps)]  # (S, B) each


def _per_seed_loss(logits: Tensor, y: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of each seed: logits (S, N, C), y (S, N) or (N,) -> (S,)."""
    S, N, C = logits.shape
    y = y.expand(S, N) if y.ndim == 1 else y
    ce = F.cross_entropy(logits.reshape(S * N, C).float(), y.reshape(S * N), reduction="none",
                         label_smoothing=label_smoothing)
    return ce.view(S, N).mean(1)


@torch.no_grad()
def _clip_per_seed(stack: SeedStack, max_norm: float) -> Tensor:
    """Clip each seed's gradient to global 2-norm <= max_norm (as clip_grad_norm_ does for
    one model: factor max_norm / (norm + 1e-6), capped at 1). Returns the norms (S,)."""
    grads = [p.grad for p in stack.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(len(stack))
    norms = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]), dim=0)
    if max_norm > 0:
        factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(factor.to(g.dtype).view(-1, *([1] * (g.ndim - 1))))
    return norms


@torch.no_grad()
def evaluate_stack(stack: SeedStack, X: Tensor, y: Tensor) -> dict:
    """Per-seed mean cross-entropy and accuracy (percent) on X (N, d), y (N,): lists of S."""
    logits = stack(X)  # (S, N, C)
    loss = _per_seed_loss(logits, y)
    acc = 100.0 * (logits.argmax(-1) == y).double().mean(1)
    return {"loss": loss.tolist(), "acc": acc.tolist()}


def train_small_classifier(
    stack: SeedStack,
    X_train: Tensor,
    y_train: Tensor,
    cfg: TrainConfig,
    X_test: Tensor | None = None,
    y_test: Tensor | None = None,
    log_every: int = 0,
    measure: Callable[[SeedStack], dict] | None = None,
    desc: str = "train",
) -> dict:
    """Train every seed of ``stack`` on (X_train (N, d), y_train (N,)); return a summary.

    Per step: per-seed minibatch (or the full set when ``batch_size >= N``) -> logits
    (S, B, C) -> loss = sum over seeds of each seed's mean cross-entropy -> backward ->
    per-seed clipping (``grad_clip``) -> optimiser step -> :class:`OrthogonalUpkeep` step
    at the same learning rate -> schedule (:func:`lr_factor`). A non-finite loss or
    gradient raises :class:`~orthogonal_skip_connections.training.Diverged`.

    Fields of :class:`TrainConfig` used: epochs, batch_size, optimizer, lr, momentum,
    nesterov, weight_decay, decay_norms_and_biases, betas, schedule, warmup_epochs,
    milestones, gamma, label_smoothing, grad_clip, upkeep_momentum, progress. Not
    supported: mixup_alpha > 0; amp, channels_last, eval_every and seed do not apply (the
    seeds are the stack's).

    ``measure(stack)`` (optional) returns a dict of tensors or numbers; it is called
    before the first step, every ``log_every`` steps (0: never in between) and after the
    last step, under ``torch.no_grad``; the results are returned as ``history``, a list
    of ``{"step": k, **measure(stack)}``.

    Returns ``{"seeds", "steps", "epochs", "train_time_s", "train_loss", "train_acc",
    "test_loss", "test_acc", "history"}``, per-seed values as lists of length S (test
    values None without test data). CPU work runs on one thread (see
    :func:`~orthogonal_skip_connections.orthogonal.one_thread`).
    """
    cfg.validate()
    if cfg.mixup_alpha > 0:
        raise UserError("mixup is not supported by the small-model trainer; set mixup_alpha=0")
    if X_train.ndim != 2 or y_train.shape != X_train.shape[:1]:
        raise ValueError(f"need X_train (N, d) and y_train (N,); got {tuple(X_train.shape)} and {tuple(y_train.shape)}")
    if log_every < 0:
        raise ValueError(f"log_every must be >= 0; got {log_every}")
    device = next(stack.parameters()).device
    X_train, y_train = X_train.to(device), y_train.to(device)
    n = len(X_train)
    per_epoch = steps_per_epoch(n, cfg.batch_size)
    total_steps = cfg.epochs * per_epoch
    opt, upkeep = build_stacked_optimizer(stack, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, per_epoch, cfg))
    history: list[dict] = []

    def log(step: int) -> None:
        if measure is not None:
            with torch.no_grad():
                history.append({"step": step, **measure(stack)})

    step, t_train = 0, 0.0
    with orth.one_thread(device.type == "cpu"):
        log(0)
        bar = progress_bar(range(cfg.epochs), enabled=cfg.progress, desc=desc, leave=False)
        for epoch in bar:
            t0 = time.perf_counter()
            for idx in _batches(n, cfg.batch_size, stack.seeds, epoch, device):
                if idx is None:
                    logits, y = stack(X_train), y_train  # (S, N, C), (N,)
                else:
                    logits, y = stack(X_train[idx]), y_train[idx]  # (S, B, C), (S, B)
                losses = _per_seed_loss(logits, y, cfg.label_smoothing)  # (S,)
                if not bool(torch.isfinite(losses).all()):
                    bad = [stack.seeds[i] for i in torch.nonzero(~torch.isfinite(losses)).flatten().tolist()]
                    raise Diverged(f"loss became non-finite for seed(s) {bad} at step {step + 1}; try a lower lr")
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                norms = _clip_per_seed(stack, cfg.grad_clip)
                if not bool(torch.isfinite(norms).all()):
                    raise Diverged(f"a gradient became non-finite at step {step + 1}; try a lower lr")
                opt.step()
                upkeep.step(opt.param_groups[0]["lr"])
                sched.step()
                step += 1
                if log_every and step % log_every == 0 and step != total_steps:
                    t_train += time.perf_counter() - t0
                    log(step)
                    t0 = time.perf_counter()
            t_train += time.perf_counter() - t0
            if cfg.progress:
                bar.set_postfix(loss=f"{float(losses.mean()):.3f}")
        bar.close()
        log(step)
        train = evaluate_stack(stack, X_train, y_train)
        test = evaluate_stack(stack, X_test.to(device), y_test.to(device)) if X_test is not None else None
    return {
        "seeds": list(stack.seeds),
        "steps": step,
        "epochs": cfg.epochs,
        "train_time_s": t_train,
        "train_loss": train["loss"],
        "train_acc": train["acc"],
        "test_loss": None if test is None else test["loss"],
        "test_acc": None if test is None else test["acc"],
        "history": history,
    }


# --------------------------------------------------------------------------- measurements
# Of stacked models shaped like models.mlp.ResidualMLP: ``embed`` (maybe nn.Identity), then
# ``blocks``, each y = skip(x) + branch(x). Every function returns a leading seed axis S.


def _blocks(stack: SeedStack):
    blocks = getattr(stack.template, "blocks", None)
    if blocks is None or not all(hasattr(b, "skip") and hasattr(b, "branch") for b in blocks):
        raise ValueError("these measurements need a model shaped like ResidualMLP (blocks with skip and branch)")
    return blocks


@torch.no_grad()
def skip_matrices(stack: SeedStack) -> Tensor | None:
    """The skip matrix W_i of every block and seed, (S, L, n, n) in float64, or None when
    the skips carry no matrix (identity, zero). Read off as skip(I)^T (a skip maps a row
    x to x W^T), so parametrized kinds are evaluated through their parametrization."""
    blocks = _blocks(stack)
    if len(blocks) == 0 or blocks[0].skip.weight is None:
        return None
    n = blocks[0].skip.channels
    eye = torch.eye(n, device=next(stack.parameters()).device)

    def fn(model, I):
        return torch.stack([b.skip(I).mT for b in model.blocks])  # (L, n, n)

    return stack.apply(fn, eye).double()


@torch.no_grad()
def stacked_block_inputs(stack: SeedStack, X: Tensor) -> list[Tensor]:
    """The input of each block for every seed when the models see X (N, d): a list of L
    tensors (S, N, n)."""
    _blocks(stack)

    def fn(model, x):
        z, inputs = model.embed(x), []
        for block in model.blocks:
            inputs.append(z)
            z = block(z)
        return tuple(inputs)

    return list(stack.apply(fn, X))


@torch.no_grad()
def branch_lipschitz_bounds(stack: SeedStack) -> Tensor:
    """Product-of-spectral-norms bound on Lip(f_i) for every seed and block: (S, L) float64
    (:func:`~orthogonal_skip_connections.diagnostics.lipschitz_upper_bound_stacked`)."""
    blocks = _blocks(stack)
    S = len(stack)
    cols = [lipschitz_upper_bound_stacked(b.branch).double().expand(S) for b in blocks]
    return torch.stack(cols, dim=1) if cols else torch.zeros(S, 0, dtype=torch.float64)


def branch_lipschitz_empirical(stack: SeedStack, X: Tensor, chunk_size: int = 256) -> Tensor:
    """Largest Jacobian spectral norm of each branch f_i over its inputs from X (N, d):
    (S, L) float64. The per-seed version of
    :func:`~orthogonal_skip_connections.diagnostics.empirical_lipschitz`: Jacobians from
    ``vmap(jacrev(f_i))`` per seed, all seeds at once."""
    blocks = _blocks(stack)
    inputs = stacked_block_inputs(stack, X)  # L x (S, N, n)
    cols = []
    for i in range(len(blocks)):
        norms = stack.apply(lambda m, z, i=i: jacobian_spectral_norms(m.blocks[i].branch, z, chunk_size),
                            inputs[i], in_dims=(0,))  # (S, N)
        cols.append(norms.amax(1).double())
    return torch.stack(cols, dim=1) if cols else torch.zeros(len(stack), 0, dtype=torch.float64)


# --------------------------------------------------------------------------- app helpers
# What the small-model apps share when reading their configs and run dirs.

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

    from .skips import SKIP_KINDS

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
    from .models.mlp import ResidualMLP

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
