"""Layer 4: when is a training run diverged? One rule, used by every training loop
(the image classifier, the seed-stacked small models, teacher-student).

The rule (:data:`RULE`):

1. **Skipped steps.** An optimiser step whose loss or gradient holds a non-finite number
   (NaN or +-inf) is skipped: the weights, the optimiser's state and the constrained skips
   stay as they were; the learning-rate schedule moves on. Every skipped step is counted
   (``skipped_steps`` in summary.json). The run is diverged when
   :data:`MAX_CONSECUTIVE_SKIPPED` = 10 steps in a row are skipped. Under float16 autocast
   with loss scaling, a step whose gradients overflowed at a loss scale above 1 while its
   loss was finite is skipped too, but counted apart (``overflow_steps``): the halved scale
   fixes it, so it says nothing of divergence.
2. **Checks.** At every check point (the end of each epoch; each metric log of
   teacher-student), the recorded training losses (every seed) must be finite
   and at most :data:`EXPLOSION_FACTOR` = 1000 times the reference loss
   ``L_ref = max(L_0, L_trivial)``: ``L_0`` the loss before the first step, ``L_trivial``
   the loss of a predictor that learnt nothing (cross-entropy: log C, the uniform
   prediction over C classes; squared error: E[y^2], the zero prediction). Otherwise the
   run is diverged.
3. **Failed upkeep.** A constrained matrix whose retraction fails on non-finite numbers
   (finite gradients whose step overflows the matrix: the SVD of ``svd`` refuses it)
   diverges the run at once (:meth:`DivergenceGuard.optimizer_step`). A retraction that
   returns NaN instead (``qr``, ``newton_schulz``) shows in the next step's loss (rule 1),
   and the small-model loop judges its final weights' loss as one more check point.

Why this rule: a single non-finite step (a bf16 overflow, a rare bad batch) is survivable
and is skipped, not fatal; ten in a row with unchanged weights means the weights or the
data keep producing non-finite numbers, which no later step can fix. A loss 1000 times
that of a model that learnt nothing is never a step of a healthy run (a cross-entropy of
2,300 nats over 10 classes; AdamW at lr 1e6 reaches 1e16 with finite gradients), so a
finite but exploded loss is divergence too, caught at the next check point. Test losses
are recorded, not judged: divergence is the optimisation failing, and a healthy run can show
a huge test loss (a plain resnet56, zero skips, on digits: training loss 2.32 after its
first epoch, test loss 7.2e6 in eval mode, where BatchNorm uses running statistics that
have not caught up; it trains on to ~45 % test accuracy).

A diverged run raises :class:`Diverged`, whose ``info`` (step, reason, last finite
loss and its step, skipped steps, the rule) the apps write into summary.json with
``status: diverged``; the command exits with code 1.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from ..maths.orthogonal import NonFiniteError

__all__ = ["Diverged", "DivergenceGuard", "RULE", "MAX_CONSECUTIVE_SKIPPED", "EXPLOSION_FACTOR"]

MAX_CONSECUTIVE_SKIPPED = 10
EXPLOSION_FACTOR = 1000.0
RULE = (f"a step with a non-finite loss or gradient is skipped; diverged after {MAX_CONSECUTIVE_SKIPPED} skipped "
        f"steps in a row, or when a training loss at a check point is non-finite or above {EXPLOSION_FACTOR:g} x "
        f"max(initial loss, trivial predictor's loss), or when a retraction fails on non-finite numbers")


class Diverged(RuntimeError):
    """Training diverged (see the module's rule); ``info`` says where and how, ``partial``
    holds the loop's results so far (may be empty)."""

    def __init__(self, message: str, info: dict | None = None, partial: dict | None = None):
        super().__init__(message)
        self.info = dict(info or {})
        self.info.setdefault("reason", message)
        self.partial = dict(partial or {})

    def within(self, context: str) -> "Diverged":
        """The same divergence, its reason prefixed by ``context`` (which run of several)."""
        info = {**self.info, "reason": f"{context}: {self.info.get('reason', str(self))}"}
        return Diverged(f"{context}: {self}", info, self.partial)


def _values(losses) -> list[float]:
    if hasattr(losses, "tolist"):
        losses = losses.tolist()
    if isinstance(losses, (int, float)):
        return [float(losses)]
    return [float(v) for v in losses]


class DivergenceGuard:
    """The rule's bookkeeping for one loop. ``state()`` / ``load_state()`` carry it
    through a checkpoint, so a resumed run counts as the uninterrupted one would."""

    def __init__(self, trivial_loss: float, max_skipped: int = MAX_CONSECUTIVE_SKIPPED,
                 factor: float = EXPLOSION_FACTOR):
        self.trivial_loss = float(trivial_loss)
        self.max_skipped = max_skipped
        self.factor = factor
        self.initial_loss: float | None = None
        self.skipped_steps = 0
        self.consecutive = 0
        self.last_finite_loss: float | None = None
        self.last_finite_step: int | None = None

    # -- checkpoints
    def state(self) -> dict:
        return {k: getattr(self, k) for k in ("initial_loss", "skipped_steps", "consecutive", "last_finite_loss",
                                              "last_finite_step")}

    def load_state(self, state: dict | None) -> None:
        for k, v in (state or {}).items():
            setattr(self, k, v)

    @property
    def reference(self) -> float:
        """L_ref = max(L_0, L_trivial)."""
        return max(self.initial_loss or 0.0, self.trivial_loss)

    def info(self, step: int, reason: str) -> dict:
        return {"step": step, "reason": reason, "last_finite_loss": self.last_finite_loss,
                "last_finite_step": self.last_finite_step, "skipped_steps": self.skipped_steps,
                "reference_loss": self.reference, "rule": RULE}

    def diverge(self, step: int, reason: str, partial: dict | None = None) -> Diverged:
        return Diverged(f"{reason} (step {step}; {self.skipped_steps} step(s) skipped)", self.info(step, reason),
                        partial)

    # -- per step
    def optimizer_step(self, opt, step: int) -> None:
        """``opt.step()`` for optimiser step ``step`` (1-based), a retraction that fails on
        non-finite numbers (rule 3: finite gradients times a huge learning rate can still
        overflow a matrix) raised as :class:`Diverged` instead of the optimiser's error."""
        try:
            opt.step()
        except (NonFiniteError, torch.linalg.LinAlgError) as err:
            raise self.diverge(step, f"a retraction failed on non-finite numbers ({str(err).splitlines()[0][:120]})") \
                from None

    def step(self, step: int, losses, finite: bool) -> bool:
        """Record optimiser step ``step`` (1-based) with batch ``losses`` (a number or a
        per-seed list/tensor); ``finite``: whether loss and gradients were finite (the
        step was taken). Raises :class:`Diverged` after too many skipped steps in a row."""
        values = [] if losses is None else _values(losses)  # None: the loop has no per-step loss
        if values and self.initial_loss is None and all(math.isfinite(v) for v in values):
            self.initial_loss = max(values)
        if finite:
            self.consecutive = 0
            if values:
                self.last_finite_loss, self.last_finite_step = max(values), step
            return True
        self.skipped_steps += 1
        self.consecutive += 1
        if self.consecutive >= self.max_skipped:
            raise self.diverge(step, f"{self.consecutive} optimiser steps in a row had a non-finite loss or gradient")
        return False

    # -- per check point
    def check(self, step: int, named_losses: dict[str, Iterable[float] | float | None],
              partial: dict | None = None) -> None:
        """Check point after step ``step``: every loss in ``named_losses`` (name -> value
        or per-seed values; None skipped) must be finite and <= factor x L_ref."""
        limit = self.factor * self.reference
        for name, losses in named_losses.items():
            if losses is None:
                continue
            values = _values(losses)
            bad = [v for v in values if not math.isfinite(v)]
            if bad:
                raise self.diverge(step, f"{name} became {bad[0]}", partial)
            worst = max(values) if values else 0.0
            if worst > limit:
                raise self.diverge(step, f"{name} {worst:.3g} exceeds {self.factor:g} x the reference loss "
                                         f"{self.reference:.3g}", partial)
