"""Training small vector classifiers, several seeds at once: the one routine behind the
synthetic-data apps (``orth_residual_synthetic_data``, ``orth_to_id``,
``construction_validity``).

The image-scale loop (:func:`~orthogonal_skip_connections.train.classifier.train_classifier`)
trains one model at a time. The models here are tiny (a few residual blocks of width 2 to
64), so one model per step leaves the machine idle in Python overhead; instead the S models
of S seeds are *stacked* and trained as one:

- :class:`~orthogonal_skip_connections.models.stack.SeedStack` holds S copies of one
  architecture with every parameter stacked along a new leading seed axis, evaluated
  with ``torch.func.vmap``.
- :func:`train_small_classifier` is the loop: the optimiser of
  :func:`~orthogonal_skip_connections.optim.build_optimizer` (same groups and options,
  with the seed axis discounted when telling weight matrices from biases), the schedule of
  :func:`~orthogonal_skip_connections.optim.lr_factor`, and
  the retraction inside the optimiser's step, which moves all retracted skips of all seeds
  as one batch through the ``(..., n, n)`` maths of
  :mod:`~orthogonal_skip_connections.maths.orthogonal`.

Why stacking is exact. The loss is the sum over seeds of each seed's mean cross-entropy,
so the gradient of the stacked parameter at seed s is seed s's own gradient; SGD, AdamW,
weight decay and the retraction all act entry-wise or per matrix; gradient clipping is done
per seed; and each seed draws its initial weights (``torch.manual_seed(seed)``) and its
minibatch order (``epoch_generator(seed, epoch)``) from its own stream. So seed s follows
the trajectory it would follow alone, up to float round-off: a batched matmul may sum in
another order than an unbatched one (the tests compare a stacked run with single runs).

Measurements of stacked models live in :mod:`~orthogonal_skip_connections.diagnostics`.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.vision import epoch_generator
from ..maths import orthogonal as orth
from ..models.stack import SeedStack
from ..optim import build_optimizer, lr_scheduler
from ..runs import UserError, progress_bar
from .classifier import TrainConfig
from .divergence import Diverged, DivergenceGuard  # noqa: F401  (Diverged: raised from here)

__all__ = ["train_small_classifier", "steps_per_epoch", "evaluate_stack"]


# --------------------------------------------------------------------------- the loop


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
    norms = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.reshape(len(g), -1), dim=1) for g in grads]), dim=0)
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
    per-seed clipping (``grad_clip``) -> optimiser step (retraction included) -> schedule
    (:func:`~orthogonal_skip_connections.optim.lr_factor`). A step whose loss or
    gradient is non-finite for any seed is skipped for all seeds (the stack is one run);
    the run diverges (:class:`~orthogonal_skip_connections.train.divergence.Diverged`) by
    the rule of :mod:`~orthogonal_skip_connections.train.divergence`, checked at the end
    of every epoch on each seed's mean training loss (an epoch whose every step was skipped
    has none: the skipped steps in a row judge it), with reference loss log C.

    Fields of :class:`TrainConfig` used: epochs, batch_size, optimizer, lr, momentum,
    nesterov, weight_decay, decay_norms_and_biases, betas, schedule, warmup_epochs,
    milestones, gamma, label_smoothing, grad_clip, upkeep_momentum, upkeep_adaptive, progress. Not
    supported: mixup_alpha > 0; amp, channels_last, eval_every and seed do not apply (the
    seeds are the stack's).

    ``measure(stack)`` (optional) returns a dict of tensors or numbers; it is called
    before the first step, every ``log_every`` steps (0: never in between) and after the
    last step, under ``torch.no_grad``; the results are returned as ``history``, a list
    of ``{"step": k, **measure(stack)}``.

    Returns ``{"seeds", "steps", "skipped_steps", "epochs", "train_time_s", "train_loss", "train_acc",
    "test_loss", "test_acc", "history"}``, per-seed values as lists of length S (test
    values None without test data). CPU work runs on one thread (see
    :func:`~orthogonal_skip_connections.maths.orthogonal.one_thread`).
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
    # batch_dims=1: a stacked bias is (S, out), a matrix (S, out, in)
    opt = build_optimizer(stack, cfg.optim(), batch_dims=1)
    sched = lr_scheduler(opt, cfg.optim(), per_epoch, cfg.epochs)
    history: list[dict] = []
    n_classes = int(y_train.max()) + 1 if len(y_train) else 2
    guard = DivergenceGuard(trivial_loss=math.log(max(2, n_classes)))

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
            epoch_loss, epoch_steps = torch.zeros(len(stack.seeds), dtype=torch.float64), 0
            for idx in _batches(n, cfg.batch_size, stack.seeds, epoch, device):
                if idx is None:
                    logits, y = stack(X_train), y_train  # (S, N, C), (N,)
                else:
                    logits, y = stack(X_train[idx]), y_train[idx]  # (S, B, C), (S, B)
                losses = _per_seed_loss(logits, y, cfg.label_smoothing)  # (S,)
                opt.zero_grad(set_to_none=True)
                finite = bool(torch.isfinite(losses).all())
                if finite:
                    losses.sum().backward()
                    finite = bool(torch.isfinite(_clip_per_seed(stack, cfg.grad_clip)).all())
                if finite:
                    guard.optimizer_step(opt, step + 1)  # retracted skips of every seed included
                    epoch_loss += losses.detach().double().cpu()
                    epoch_steps += 1
                else:  # skipped for every seed; the schedule moves on
                    opt.zero_grad(set_to_none=True)
                sched.step(skipped=not finite)
                step += 1
                guard.step(step, losses.detach(), finite)  # raises Diverged after too many skipped
                if log_every and step % log_every == 0 and step != total_steps:
                    t_train += time.perf_counter() - t0
                    log(step)
                    t0 = time.perf_counter()
            t_train += time.perf_counter() - t0
            mean_loss = epoch_loss / epoch_steps if epoch_steps else torch.full_like(epoch_loss, float("nan"))
            # an epoch whose every step was skipped has no loss to judge (not a nan of its own): rule 1,
            # the skipped steps in a row, judges it
            guard.check(step, {f"training loss (seed {s})": float(v) if epoch_steps else None
                               for s, v in zip(stack.seeds, mean_loss)})
            if cfg.progress:
                bar.set_postfix(loss=f"{float(mean_loss.mean()):.3f}")
        bar.close()
        log(step)
        train = evaluate_stack(stack, X_train, y_train)
        # a last check point on the final weights: the epochs' losses were those before each step,
        # so the last update (all of a one-step run's) would otherwise go unjudged
        guard.check(step, {f"final training loss (seed {s})": v for s, v in zip(stack.seeds, train["loss"])})
        test = evaluate_stack(stack, X_test.to(device), y_test.to(device)) if X_test is not None else None
    return {
        "seeds": list(stack.seeds),
        "steps": step,
        "skipped_steps": guard.skipped_steps,  # (non-finite for some seed: skipped for every seed)
        "epochs": cfg.epochs,
        "train_time_s": t_train,
        "train_loss": train["loss"],
        "train_acc": train["acc"],
        "test_loss": None if test is None else test["loss"],
        "test_acc": None if test is None else test["acc"],
        "history": history,
    }
