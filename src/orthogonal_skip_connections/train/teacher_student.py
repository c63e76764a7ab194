"""Layer 4, training loop: teacher-student regression, every architecture and every
seed at once (the models and their hand-written gradients are
:mod:`orthogonal_skip_connections.models.teacher_student`, the distances and verdicts
:mod:`orthogonal_skip_connections.analysis.teacher_student`).

Each step computes the loss gradients by hand (``loss_and_grads``), writes them into
``p.grad`` of the :class:`~orthogonal_skip_connections.models.teacher_student.Student`
parameters and calls ``step()`` of the one optimiser of
:func:`orthogonal_skip_connections.optim.optimizer`: ``sgd`` is ``torch.optim.SGD``
(heavy-ball momentum if ``momentum > 0``), ``nesterov`` the same with ``nesterov=True``,
``adam`` ``torch.optim.Adam`` (betas (0.9, 0.999), eps 1e-8). Every rule acts on each
entry (or, for Q, each seed's matrix) separately, so seeds never mix.

orth_resnet's Q is a retracted orthogonal matrix, moved on O(d) inside the same
``step()``: ``orth_update=polar`` is the ``svd`` retraction (the Riemannian gradient W
skew(W^T G), then the polar factor; Absil et al. 2008, sec. 4.1), ``steepest`` the
spectral-norm steepest step of length lr (modula). Q's momentum follows the library-wide
rule of :mod:`~orthogonal_skip_connections.optim`: a heavy-ball buffer of the Euclidean
gradient, m <- mu m + G, then the retraction along m, with mu = ``momentum`` (sgd,
nesterov) or beta1 = 0.9 (adam); with adam and ``upkeep_adaptive``, Adam's step in so(d)
instead (``retraction_adaptive`` of :func:`~orthogonal_skip_connections.optim.optimizer`).
This is a deliberate change from the first version of this loop, which fed the Riemannian gradient (polar) or the Euclidean one (steepest)
through its own SGD / Nesterov / Adam and retracted along the result: with
``momentum=0`` and sgd (the default) both give the same step; with momentum, Nesterov or
Adam, Q now moves by heavy-ball on the Euclidean gradient, as every other retracted
matrix in the library does. Measured on orth_resnet, 8 seeds, 50,000 steps, uniform
teacher, summed output, d = 10 unless said: the blog's optimiser (sgd, lr 1e-4, no
momentum) moves by round-off only (final losses within 5e-4 relative per seed, same
verdicts); Nesterov (lr 1e-3, momentum 0.9, the runs of
``notes/teacher_student_findings.md``) fits 0/8 seeds instead of 1/8 (mean aligned
distance 6.24 instead of 5.34: the one seed that reached zero loss now stays on a
plateau, the other seven end where they did, one of them a third higher in loss); Adam
(lr 1e-3, d = 5, vector output) fits 3/8 instead of 4/8 (one fitting seed now stalls;
the plateaus sit elsewhere, up to 5x higher in loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .. import optim
from ..analysis.teacher_student import (
    aligned_distances,
    closest_unit_angle,
    population_loss,
    weight_distance,
    zero_student_aligned_norm,
)
from ..maths.orthogonal import ORTH_INITS
from ..models.teacher_student import (
    ARCHS,
    OUTPUTS,
    Arch,
    Student,
    as_arch,
    init_weights,
    loss_and_grads,
    mse,
    predict,
    sample_inputs,
    seed_generator,
)
from ..runs import progress_bar
from .divergence import DivergenceGuard

__all__ = [
    "OPTIMIZERS",
    "TEACHER_INITS",
    "STUDENT_INITS",
    "ORTH_UPDATES",
    "DTYPES",
    "TeacherStudentConfig",
    "Trajectory",
    "build_optimizer",
    "check_start",
    "train",
]

OPTIMIZERS = ("sgd", "nesterov", "adam")
TEACHER_INITS = ("uniform", "gaussian")
STUDENT_INITS = ("small", "zero", "teacher")
ORTH_UPDATES = {"polar": "svd", "steepest": "steepest"}  # orth_update -> retraction method of Q
ADAM_BETAS = (0.9, 0.999)  # optimizer=adam (eps 1e-8)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class TeacherStudentConfig:
    """Everything one study needs, checked on construction (ValueError, one line)."""

    d: int = 10
    output: str = "sum"
    n_train: int = 100_000  # 0: fresh samples every step
    n_test: int = 10_000
    data_draw: int = 0  # which sample of inputs per seed: 0 the seed's own, k > 0 another (same teachers, starts)
    start_draw: int = 0  # which student start per seed: 0 the seed's own, k > 0 another (same teachers, data)
    batch_size: int = 200
    teacher_init: str = "uniform"
    teacher_scale: float = 1.0
    student_init: str = "small"
    student_scale: float = 1.0
    orth_init: str = "identity"
    orth_update: str = "polar"
    optimizer: str = "sgd"
    upkeep_adaptive: bool = False  # adam: Q retracted along Adam's step in so(d) (optim.retraction_adaptive)
    lr: float = 1e-4
    momentum: float = 0.0
    epochs: int = 100
    steps: int | None = None  # overrides epochs
    log_every: int = 500
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self):
        def need(ok, msg):
            if not ok:
                raise ValueError(msg)

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        need(is_int(self.d) and self.d >= 1, f"d must be an integer >= 1; got {self.d!r}")
        need(self.output in OUTPUTS, f"unknown output {self.output!r}; allowed: {', '.join(OUTPUTS)}")
        need(is_int(self.n_train) and self.n_train >= 0, f"n_train must be an integer >= 0 (0: fresh samples every step); got {self.n_train!r}")
        need(is_int(self.n_test) and self.n_test >= 2, "n_test must be an integer >= 2 (Var(y) on the test set, which "
             f"the relative losses divide by, needs two); got {self.n_test!r}")
        need(is_int(self.data_draw) and self.data_draw >= 0,
             f"data_draw must be an integer >= 0 (0: each seed's own inputs); got {self.data_draw!r}")
        need(is_int(self.start_draw) and self.start_draw >= 0,
             f"start_draw must be an integer >= 0 (0: each seed's own start); got {self.start_draw!r}")
        need(self.start_draw == 0 or self.student_init != "teacher",
             "start_draw draws another student start; student init 'teacher' starts at the teacher, with nothing to draw")
        need(is_int(self.batch_size) and self.batch_size >= 1, f"batch_size must be an integer >= 1; got {self.batch_size!r}")
        need(
            self.n_train == 0 or self.batch_size <= self.n_train,
            f"batch_size={self.batch_size} is larger than the training set (n_train={self.n_train}); allowed: 1..n_train",
        )
        need(self.teacher_init in TEACHER_INITS, f"unknown teacher init {self.teacher_init!r}; allowed: {', '.join(TEACHER_INITS)}")
        need(_finite(self.teacher_scale) and self.teacher_scale > 0, f"teacher scale must be > 0; got {self.teacher_scale!r}")
        need(self.student_init in STUDENT_INITS, f"unknown student init {self.student_init!r}; allowed: {', '.join(STUDENT_INITS)}")
        need(_finite(self.student_scale) and self.student_scale >= 0, f"student scale must be >= 0; got {self.student_scale!r}")
        need(self.orth_init in ORTH_INITS, f"unknown orth_init {self.orth_init!r}; allowed: {', '.join(ORTH_INITS)}")
        need(self.orth_update in ORTH_UPDATES, f"unknown orth_update {self.orth_update!r}; allowed: {', '.join(ORTH_UPDATES)}")
        need(self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        need(_finite(self.lr) and self.lr > 0, f"lr must be > 0; got {self.lr!r}")
        need(_finite(self.momentum) and 0 <= self.momentum < 1, f"momentum must be in [0, 1); got {self.momentum!r}")
        need(self.optimizer != "nesterov" or self.momentum > 0, "optimizer=nesterov needs momentum > 0")
        need(isinstance(self.upkeep_adaptive, bool), f"upkeep_adaptive must be true or false; got {self.upkeep_adaptive!r}")
        need(not self.upkeep_adaptive or self.optimizer == "adam",
             f"upkeep_adaptive=true needs optimizer=adam (Adam's moments); got optimizer={self.optimizer}")
        if self.steps is None:
            need(self.n_train > 0, "n_train=0 (fresh samples every step) needs steps=N, not epochs")
            need(is_int(self.epochs) and self.epochs >= 1, f"epochs must be an integer >= 1; got {self.epochs!r}")
        else:
            need(is_int(self.steps) and self.steps >= 1, f"steps must be an integer >= 1 (or null to use epochs); got {self.steps!r}")
        need(is_int(self.log_every) and self.log_every >= 1, f"log_every must be an integer >= 1; got {self.log_every!r}")
        need(self.dtype in DTYPES, f"unknown dtype {self.dtype!r}; allowed: {', '.join(DTYPES)}")

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per pass over the training set (the remainder is dropped)."""
        return self.n_train // self.batch_size if self.n_train else 0

    @property
    def total_steps(self) -> int:
        return self.steps if self.steps is not None else self.epochs * self.steps_per_epoch

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)



@dataclass
class Trajectory:
    """One architecture's runs, seeds stacked: metrics (S, T) at ``steps`` (T,)."""

    arch: str
    seeds: np.ndarray  # (S,)
    steps: np.ndarray  # (T,)
    train_loss: np.ndarray  # (S, T)
    test_loss: np.ndarray  # (S, T)
    population_loss: np.ndarray  # (S, T) the test loss on infinitely many inputs, exact (analysis.population_loss)
    distance: np.ndarray  # (S, T) sum of ||W - W*||_F
    aligned_distance: np.ndarray  # (S, T)
    label_variance: np.ndarray  # (S,) Var(y) on the test set, the loss of the best constant
    teacher_norm: np.ndarray  # (S,) sum of ||W*||_F (the unaligned distance of a zero student)
    teacher_aligned_norm: np.ndarray  # (S,) aligned distance of the zero student: sqrt(||W1*||^2 (+ ||V*||^2 + ||skip_weights(Q*)||^2))
    teacher_closest_angle: np.ndarray  # (S,) degrees between the teacher's two closest hidden units (analysis.closest_unit_angle)
    teacher: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (S, d, d)
    student: dict[str, np.ndarray] = field(default_factory=dict)  # final weights

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat ``{"<arch>.<key>": array}`` for ``np.savez``."""
        out = {
            f"{self.arch}.{k}": getattr(self, k)
            for k in ("seeds", "steps", "train_loss", "test_loss", "population_loss", "distance", "aligned_distance",
                      "label_variance", "teacher_norm", "teacher_aligned_norm", "teacher_closest_angle")
        }
        out.update({f"{self.arch}.teacher.{n}": w for n, w in self.teacher.items()})
        out.update({f"{self.arch}.student.{n}": w for n, w in self.student.items()})
        return out



def build_optimizer(students: nn.Module, cfg: TeacherStudentConfig) -> torch.optim.Optimizer:
    """The optimiser of ``cfg.optimizer`` over the weights of ``students`` (one
    :class:`Student` or a module holding several), from
    :func:`orthogonal_skip_connections.optim.optimizer` (seed axis first: ``batch_dims=1``;
    no weight decay); Q's retraction is stepped inside its ``step()``."""
    if cfg.optimizer == "adam":
        return optim.optimizer(students, torch.optim.Adam, lr=cfg.lr, betas=ADAM_BETAS, eps=1e-8,
                               retraction_adaptive=cfg.upkeep_adaptive, batch_dims=1, foreach=True)
    return optim.optimizer(students, torch.optim.SGD, lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.optimizer == "nesterov", batch_dims=1, foreach=True)


class _Run:
    """Teacher, student, labels and metric log of one architecture."""

    def __init__(self, arch: Arch, cfg: TeacherStudentConfig, seeds, X_train, X_test, start=None):
        dtype, device, d = cfg.torch_dtype, X_test.device, cfg.d
        self.arch, self.cfg = arch, cfg
        gens = [seed_generator(s, "model") for s in seeds]  # teacher first, then student
        self.teacher = init_weights(arch, d, gens, cfg.teacher_init, cfg.teacher_scale, "haar", dtype, device)
        if start is not None:
            weights = _start_weights(arch, start, self.teacher)
        elif cfg.student_init == "teacher":
            weights = self.teacher
        else:
            if cfg.start_draw:  # another start for the same teacher: the student from its own stream
                gens = [seed_generator(s, f"start{cfg.start_draw}") for s in seeds]
            weights = init_weights(arch, d, gens, cfg.student_init, cfg.student_scale, cfg.orth_init, dtype, device)
        self.module = Student(arch, weights, orth_method=ORTH_UPDATES[cfg.orth_update])
        self.student = self.module.tensors()  # {name: nn.Parameter (S, d, d)}, stepped in place
        self.Y_train = predict(arch, self.teacher, X_train, cfg.output) if X_train is not None else None  # (S, k, N)
        self.Y_test = predict(arch, self.teacher, X_test, cfg.output)  # (S, k, n_test)
        self.log: dict[str, list] = {
            k: [] for k in ("step", "train_loss", "test_loss", "population_loss", "distance", "aligned_distance")
        }
        self.batch_losses = torch.zeros(len(seeds), dtype=dtype, device=device)  # since the last log
        self.batch_count = 0

    def labels(self, X: Tensor, index: Tensor | None) -> Tensor:
        """Teacher outputs (S, k, B) of the batch X, whose columns are ``index`` of the
        training set (None: fresh samples, labelled now)."""
        if index is None:
            return predict(self.arch, self.teacher, X, self.cfg.output)
        S, k, B = self.Y_train.shape[0], self.Y_train.shape[1], index.shape[1]
        return torch.gather(self.Y_train, 2, index[:, None, :].expand(S, k, B))

    @torch.no_grad()
    def gradients(self, X: Tensor, Y: Tensor) -> None:
        """Set ``p.grad`` of every student weight to the gradient of the batch loss."""
        fresh = self.Y_train is None  # then the batch losses are the training loss
        loss, grads = loss_and_grads(self.arch, self.student, X, Y, self.cfg.output, with_loss=fresh)
        if fresh:
            self.batch_losses += loss
            self.batch_count += 1
        for name, g in grads.items():
            # a summed output gives W2's and Q's gradients as broadcast views: the optimiser's
            # buffers need memory of their own
            self.student[name].grad = g if g.is_contiguous() else g.contiguous()

    @torch.no_grad()
    def record(self, step: int, X_train: Tensor | None, X_test: Tensor) -> None:
        cfg = self.cfg
        if X_train is not None:  # loss on the whole (fixed) training set
            train = mse(predict(self.arch, self.student, X_train, cfg.output), self.Y_train)
        elif self.batch_count:  # fresh samples: mean of the batch losses since the last log
            train = self.batch_losses / self.batch_count
        else:
            train = torch.full_like(self.batch_losses, float("nan"))
        self.batch_losses.zero_()
        self.batch_count = 0
        test = mse(predict(self.arch, self.student, X_test, cfg.output), self.Y_test)
        self.log["step"].append(step)
        self.log["train_loss"].append(train.double().cpu().numpy())
        self.log["test_loss"].append(test.double().cpu().numpy())
        self.log["distance"].append(weight_distance(self.student, self.teacher).double().cpu().numpy())
        finite = all(bool(torch.isfinite(w).all()) for w in self.student.values())
        self.log["population_loss"].append(
            population_loss(self.arch, self.student, self.teacher, cfg.output).cpu().numpy()
            if finite
            else np.full(len(test), np.nan)
        )
        self.log["aligned_distance"].append(
            aligned_distances(self.arch, self.student, self.teacher, cfg.output)
            if finite
            else np.full(len(test), np.nan)
        )

    def trajectory(self, seeds) -> Trajectory:
        cfg, arch = self.cfg, self.arch
        Y = self.Y_test  # (S, k, n_test)
        var = (Y - Y.mean(2, keepdim=True)).square().mean((1, 2))  # (S,) per-output variance, averaged
        stack = lambda k: np.stack(self.log[k], axis=1)  # noqa: E731  (S, T)
        np_ = lambda t: t.detach().cpu().double().numpy()  # noqa: E731
        return Trajectory(
            arch=arch.name,
            seeds=np.asarray(seeds),
            steps=np.asarray(self.log["step"]),
            train_loss=stack("train_loss"),
            test_loss=stack("test_loss"),
            population_loss=stack("population_loss"),
            distance=stack("distance"),
            aligned_distance=stack("aligned_distance"),
            label_variance=np_(var),
            teacher_norm=np_(sum(torch.linalg.matrix_norm(w) for w in self.teacher.values())),
            teacher_aligned_norm=np_(zero_student_aligned_norm(arch, self.teacher, cfg.output)),
            teacher_closest_angle=np_(closest_unit_angle(arch, self.teacher)),
            teacher={n: np_(w) for n, w in self.teacher.items()},
            student={n: np_(w) for n, w in self.student.items()},
        )


def _start_weights(arch: Arch, start: dict, teacher: dict[str, Tensor]) -> dict[str, Tensor]:
    """The student weights of ``start`` ({"teacher": {name: (S, d, d)}, "student": ...}, as
    a :class:`Trajectory` holds them) as tensors like ``teacher``'s, after checking that
    they were trained against this very teacher (ValueError otherwise)."""
    for key in ("teacher", "student"):
        names = sorted(start.get(key, {}))
        if names != sorted(arch.params):
            raise ValueError(f"start weights of {arch.name}: {key} has {', '.join(names) or 'nothing'}; "
                             f"expected {', '.join(arch.params)}")
    for name, w in teacher.items():
        saved = torch.as_tensor(np.asarray(start["teacher"][name]), dtype=torch.float64)
        # the saved teacher is this one rounded to the dtype it was trained in (float32 or float64)
        if saved.shape != w.shape or not torch.allclose(saved, w.double().cpu(), rtol=1e-6, atol=1e-7):
            raise ValueError(f"start weights of {arch.name} were trained against another teacher ({name} differs: "
                             "seeds, d, teacher.init and teacher.scale must be those of the run started from)")
    return {n: torch.as_tensor(np.asarray(start["student"][n])).to(dtype=teacher[n].dtype, device=teacher[n].device)
            for n in arch.params}


def check_start(archs: Sequence[str], cfg: TeacherStudentConfig, seeds: Sequence[int], start: dict[str, dict]) -> None:
    """Raise ValueError (one line) unless ``start`` holds weights for exactly ``archs``,
    trained against the teachers that ``cfg`` and ``seeds`` draw (what :func:`train` checks
    too, here without drawing any data)."""
    if set(start) != {as_arch(a).name for a in archs}:
        raise ValueError(f"start weights for {', '.join(sorted(start))}; expected {', '.join(map(str, archs))}")
    for a in archs:
        arch = as_arch(a)
        gens = [seed_generator(int(s), "model") for s in seeds]  # each architecture draws its teacher first
        teacher = init_weights(arch, cfg.d, gens, cfg.teacher_init, cfg.teacher_scale, "haar", cfg.torch_dtype)
        _start_weights(arch, start[arch.name], teacher)


def train(
    archs: Sequence[str],
    cfg: TeacherStudentConfig,
    seeds: Sequence[int],
    progress: bool = False,
    start: dict[str, dict] | None = None,
) -> dict[str, Trajectory]:
    """Train a student of every architecture in ``archs`` for every seed, all at once.

    ``start`` ({arch: {"teacher": {name: (S, d, d)}, "student": {...}}}, rows in the order
    of ``seeds``) warm-starts each student from given weights, e.g. the final weights of an
    earlier run (``Trajectory.teacher`` / ``.student``), instead of ``cfg.student_init``; the
    teachers must be the ones this config and these seeds draw (checked). A warm start, not
    a resume: the optimiser's state and the epochs' shuffles start afresh.

    Per seed s, the generator ``seed_generator(s, "data")`` (``"data<k>"`` for
    ``cfg.data_draw`` = k > 0) draws the training inputs,
    the test inputs, then each epoch's shuffle (or each chunk of fresh samples), and
    ``seed_generator(s, "model")`` the teacher, then the student (the student from
    ``seed_generator(s, "start<k>")`` for ``cfg.start_draw`` = k > 0). All architectures see
    the same inputs. Metrics are logged at step 0, every ``log_every`` steps and at the
    end.

    Divergence follows the rule of :mod:`~orthogonal_skip_connections.train.divergence`:
    a step with a non-finite gradient (any architecture, any seed) is skipped for all; the
    check points are the metric logs, where the training loss of every architecture and
    seed is judged (not the test loss: the rule judges the optimisation), the reference
    loss max(training loss at step 0, E[y^2] (the zero predictor's)); a failed
    retraction of Q diverges at once. Raises
    :class:`~orthogonal_skip_connections.train.divergence.Diverged`.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("need at least one seed")
    arch_list = [as_arch(a) for a in archs]
    if not arch_list:
        raise ValueError(f"need at least one architecture; allowed: {', '.join(ARCHS)}")
    dtype, device = cfg.torch_dtype, torch.device(cfg.device)
    S, B, d = len(seeds), cfg.batch_size, cfg.d
    if start is not None:  # the architectures and their teachers, before any data is drawn
        check_start(archs, cfg, seeds, start)
    # draw k > 0: another stream of inputs for the same seed, its teacher and start unchanged
    gens = [seed_generator(s, "data" if cfg.data_draw == 0 else f"data{cfg.data_draw}") for s in seeds]
    X_train = sample_inputs(gens, cfg.n_train, d, dtype=dtype).to(device) if cfg.n_train else None  # (S, d, N)
    X_test = sample_inputs(gens, cfg.n_test, d, dtype=dtype).to(device)  # (S, d, n_test)
    runs = [_Run(a, cfg, seeds, X_train, X_test, None if start is None else start[a.name]) for a in arch_list]
    # one optimiser over every architecture: torch's per-step overhead (tens of us, as
    # much as the maths of one small architecture) is paid once per step, and the update
    # of all weights is one foreach call
    opt = build_optimizer(nn.ModuleDict({r.arch.name: r.module for r in runs}), cfg)
    total = cfg.total_steps
    for r in runs:
        r.record(0, X_train, X_test)
    guard = DivergenceGuard(trivial_loss=max(float(r.Y_test.double().square().mean((1, 2)).max()) for r in runs))
    guard.initial_loss = max(float(np.nanmax(r.log["train_loss"][0])) if np.isfinite(r.log["train_loss"][0]).any()
                             else 0.0 for r in runs)
    guard.last_finite_loss, guard.last_finite_step = guard.initial_loss, 0  # the losses logged at step 0

    def check(step: int) -> None:
        losses = {}
        for r in runs:  # training losses only: the rule judges the optimisation, not generalisation
            losses[f"{r.arch.name} training loss"] = r.log["train_loss"][-1]
        guard.check(step, losses)
        guard.last_finite_loss = max(float(np.max(v)) for v in losses.values())
        guard.last_finite_step = step

    grads = [p for r in runs for p in r.student.values()]

    chunk_steps = 64  # fresh samples are drawn this many steps at a time, per seed
    order = chunk = None
    for t in progress_bar(range(total), enabled=progress, desc="teacher-student", unit="step"):
        if X_train is not None:
            k = t % cfg.steps_per_epoch
            if k == 0:  # a new epoch: each seed shuffles its own training set
                order = torch.stack([torch.randperm(cfg.n_train, generator=g) for g in gens]).to(device)  # (S, N)
            index = order[:, k * B : (k + 1) * B]  # (S, B)
            X = torch.gather(X_train, 2, index[:, None, :].expand(S, d, B))  # (S, d, B)
        else:
            k = t % chunk_steps
            if k == 0:
                chunk = sample_inputs(gens, B, d, min(chunk_steps, total - t), dtype=dtype).to(device)  # (S, n, d, B)
            index, X = None, chunk[:, k]
        for r in runs:
            r.gradients(X, r.labels(X, index))
        # one fused max-|g| per tensor: finite or not, without the overflow of a sum
        finite = bool(torch.isfinite(torch.stack(torch._foreach_norm([p.grad for p in grads], float("inf")))).all())
        if finite:
            guard.optimizer_step(opt, t + 1)  # SGD / Nesterov / Adam on W, W1, W2; the retraction on Q
        guard.step(t + 1, None, finite)
        if (t + 1) % cfg.log_every == 0 or t + 1 == total:
            for r in runs:
                r.record(t + 1, X_train, X_test)
            check(t + 1)
    return {r.arch.name: r.trajectory(seeds) for r in runs}

