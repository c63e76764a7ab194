"""Teacher-student regression with the Li & Yuan family of one-block networks,
vectorised over seeds.

Li & Yuan (2017, "Convergence analysis of two-layer neural networks with ReLU
activation", arXiv 1705.09886) prove that SGD recovers the teacher of

    li_yuan          f(x) = || ReLU((I + W)^T x) ||_1

from Gaussian inputs x ~ N(0, I_d) when the teacher W* has small spectral norm and the
student starts at the usual O(1/sqrt(d)) scale. The blog post that seeded this project
(``shared/seeds/modified_resnet_blog.md``) compared it with

    vanilla          f(x) = || ReLU(W^T x) ||_1              (Li & Yuan's contrast, no I)
    resnet_block     f(x) = W2^T ReLU(W1^T x) + x             (a one-block ResNet)
    sum_modified     f(x) = W2^T ReLU((W1 + I)^T x)
    modified_resnet  f(x) = W2^T ReLU((W1 + I)^T x) + x
    orth_resnet      f(x) = Q x + W2^T ReLU(W1^T x)           (Q learnable, on O(d))

With ``output="sum"`` the d-vector output of the last four is summed to a scalar, as the
blog did; with ``output="vector"`` the whole vector is regressed. The first two are
scalar by definition (the entries of ReLU(.) are >= 0, so the 1-norm is their sum).

Conventions. Every tensor has a leading seed dimension S. Weights are (S, d, d); a batch
of B inputs is X (S, d, B) with one sample per column, so the papers' A^T x is written
``A.mT @ X`` (this layout is also 2-3x faster than rows for these thin matrices).
Outputs are (S, k, B) with k = 1 for a scalar f and k = d for a vector. Every operation
acts on each seed separately (batched matmuls, element-wise optimisers, per-seed
losses) and every random draw comes from that seed's own ``torch.Generator``: seed s
follows the same trajectory whether it is trained alone or beside others, up to the
last bits of floating-point round-off (a BLAS kernel's summation order can depend on
the batch size and on memory alignment).

Gradients are written out by hand (``loss_and_grads``): every architecture is

    Z = A^T X,  A = W1 (+ I)         pre-activations of the d hidden units    (S, d, B)
    H = ReLU(Z)                                                                (S, d, B)
    out = V^T H + skip(X)            V = W2, or a column of ones for the 1-norm (S, k, B)
    f = out (vector), or its column sums (sum; computed as (W2 1)^T H + 1^T skip(X))

so one short chain rule serves all six, about three times faster than autograd at
these sizes (the tests check it against autograd).

Recovery is measured twice: ``distance`` = sum over weight matrices of ||W - W*||_F,
and ``aligned_distance``, which first divides out the symmetries that leave f
unchanged: hidden units can be permuted (Hungarian matching, Kuhn 1955, via
``scipy.optimize.linear_sum_assignment``) and, where an output layer follows, each unit
can be rescaled by c > 0 (a -> c a, v -> v / c) because ReLU is positively
homogeneous; with ``output="sum"`` only the row sums W2 1 of W2 (and the column sums
1^T Q of Q) reach the output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..maths import orthogonal as orth

__all__ = [
    "Arch",
    "ARCHS",
    "OUTPUTS",
    "OPTIMIZERS",
    "TEACHER_INITS",
    "STUDENT_INITS",
    "ORTH_INITS",
    "ORTH_UPDATES",
    "TeacherStudentConfig",
    "Trajectory",
    "seed_generator",
    "sample_inputs",
    "init_weights",
    "effective_first_layer",
    "output_weights",
    "skip_weights",
    "predict",
    "mse",
    "loss_and_grads",
    "SeedwiseOptimizer",
    "weight_distance",
    "hidden_unit_cost",
    "aligned_distance",
    "aligned_distances",
    "train",
    "summarize",
]


# --------------------------------------------------------------------------- architectures


@dataclass(frozen=True)
class Arch:
    """One member of the family: Z = A^T X with A = W1 (+ I), H = ReLU(Z),
    out = V^T H + skip(X)."""

    name: str
    formula: str
    params: tuple[str, ...]  # trainable weights, each (S, d, d)
    identity_in: bool  # A = W1 + I (True) or W1 (False)
    two_layer: bool  # V = W2 (True) or the 1-norm's column of ones (False)
    skip: str  # "none", "identity" (+ x) or "orth" (+ Q x)


ARCHS: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch("li_yuan", "||ReLU((I+W)^T x)||_1", ("W",), True, False, "none"),
        Arch("vanilla", "||ReLU(W^T x)||_1", ("W",), False, False, "none"),
        Arch("resnet_block", "W2^T ReLU(W1^T x) + x", ("W1", "W2"), False, True, "identity"),
        Arch("sum_modified", "W2^T ReLU((W1+I)^T x)", ("W1", "W2"), True, True, "none"),
        Arch("modified_resnet", "W2^T ReLU((W1+I)^T x) + x", ("W1", "W2"), True, True, "identity"),
        Arch("orth_resnet", "Q x + W2^T ReLU(W1^T x)", ("W1", "W2", "Q"), False, True, "orth"),
    )
}
OUTPUTS = ("sum", "vector")
OPTIMIZERS = ("sgd", "nesterov", "adam")
TEACHER_INITS = ("uniform", "gaussian")
STUDENT_INITS = ("small", "zero", "teacher")
ORTH_INITS = ("identity", "haar")
ORTH_UPDATES = ("polar", "steepest")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _arch(name: str | Arch) -> Arch:
    if isinstance(name, Arch):
        return name
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; allowed: {', '.join(ARCHS)}")
    return ARCHS[name]


def scalar_output(arch: str | Arch, output: str) -> bool:
    """Whether f is a scalar per sample: the 1-norm architectures always are."""
    return not _arch(arch).two_layer or output == "sum"


def effective_first_layer(arch: Arch, params: dict[str, Tensor]) -> Tensor:
    """A with Z = A^T X: column j holds hidden unit j's incoming weights. (S, d, d)"""
    W1 = params["W1" if arch.two_layer else "W"]
    return W1 + orth.eye_like(W1) if arch.identity_in else W1


def output_weights(arch: Arch, params: dict[str, Tensor], output: str) -> Tensor:
    """V with out = V^T H (+ skip): row j holds hidden unit j's outgoing weights.

    (S, d, d) for a vector output; (S, d, 1) when f is a scalar: W2 1 for the summed
    output (only W2's row sums reach f), ones for the 1-norm."""
    if not arch.two_layer:
        W = params["W"]
        return torch.ones(*W.shape[:-1], 1, dtype=W.dtype, device=W.device)
    W2 = params["W2"]
    return W2.sum(-1, keepdim=True) if output == "sum" else W2


def _forward(arch: Arch, params: dict[str, Tensor], X: Tensor, output: str):
    """Z, H, V and out = V^T H + skip(X), (S, k, B) with k = 1 for a scalar f."""
    W1 = params["W1" if arch.two_layer else "W"]
    # (W1 + I)^T X = X + W1^T X, one fused call
    Z = torch.baddbmm(X, W1.mT, X) if arch.identity_in else torch.bmm(W1.mT, X)  # (S, d, B)
    H = torch.relu(Z)
    V = output_weights(arch, params, output)  # (S, d, k)
    # ||ReLU(z)||_1 is the sum of the non-negative entries
    out = torch.bmm(V.mT, H) if arch.two_layer else H.sum(1, keepdim=True)  # (S, k, B)
    if arch.skip != "none":
        skip = X if arch.skip == "identity" else torch.bmm(params["Q"], X)  # (S, d, B)
        out = out + (skip.sum(1, keepdim=True) if scalar_output(arch, output) else skip)
    return Z, H, V, out


def predict(arch: str | Arch, params: dict[str, Tensor], X: Tensor, output: str = "sum") -> Tensor:
    """f for every seed and sample: X (S, d, B) -> (S, k, B), k = 1 for a scalar f."""
    return _forward(_arch(arch), params, X, output)[-1]


def mse(f: Tensor, y: Tensor) -> Tensor:
    """Mean squared error per seed (mean over samples and output entries): (S,)."""
    return (f - y).square().flatten(1).mean(1)


def loss_and_grads(
    arch: str | Arch,
    params: dict[str, Tensor],
    X: Tensor,
    Y: Tensor,
    output: str = "sum",
    with_loss: bool = True,
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """MSE per seed (S,) (None unless ``with_loss``) and its gradient with respect to
    each weight, {name: (S, d, d)}; for a summed output the W2 and Q gradients are
    broadcast views (their columns, resp. rows, repeat).

    X: (S, d, B) inputs, Y: (S, k, B) teacher outputs. Chain rule through Z = A^T X,
    H = ReLU(Z), out = V^T H + skip(X), with R = dL/d(out), (S, k, B).
    """
    arch = _arch(arch)
    Z, H, V, out = _forward(arch, params, X, output)
    resid = out - Y  # (S, k, B)
    loss = resid.square().flatten(1).mean(1) if with_loss else None  # (S,)
    R = resid * (2.0 / (resid.shape[1] * resid.shape[2]))  # dL/d(out) of the mean over k * B entries
    dH = torch.bmm(V, R) if arch.two_layer else R.expand_as(H)  # (S, d, B)
    # dZ = dH * ReLU'(Z) (subgradient 0 at 0), the fused kernel autograd uses for ReLU
    dZ = torch.ops.aten.threshold_backward(dH, Z, 0)
    gA = torch.bmm(X, dZ.mT)  # dL/dA = X dZ^T, (S, d, d); dA/dW1 is the identity, with or without + I
    if not arch.two_layer:
        return loss, {"W": gA}
    gV = torch.bmm(H, R.mT)  # dL/dV = H R^T, (S, d, k)
    scalar = scalar_output(arch, output)
    # summed output: V = W2 1, so dL/dW2 = dL/dV 1^T repeats it across W2's columns
    grads = {"W1": gA, "W2": gV.expand_as(params["W2"]) if scalar else gV}
    if arch.skip == "orth":
        gQ = torch.bmm(R, X.mT)  # skip = Q X: dL/dQ = R X^T, (S, k, d); summed: rows repeat
        grads["Q"] = gQ.expand_as(params["Q"]) if scalar else gQ
    return loss, grads


# --------------------------------------------------------------------------- randomness


def seed_generator(seed: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one seed and one named stream ("data", "model"), independent of
    every other seed and stream (NumPy's SeedSequence hashes [seed, stream])."""
    key = [int(seed), *stream.encode()]
    state = int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> np.uint64(1))
    return torch.Generator(device=device).manual_seed(state)


def sample_inputs(gens: Sequence[torch.Generator], n: int, d: int, *batch: int, dtype=torch.float64) -> Tensor:
    """n inputs x ~ N(0, I_d) per seed, drawn seed by seed on the CPU, as columns:
    (S, *batch, d, n)."""
    return torch.stack([torch.randn(*batch, n, d, generator=g, dtype=dtype).mT for g in gens]).contiguous()


def init_weights(
    arch: str | Arch,
    d: int,
    gens: Sequence[torch.Generator],
    init: str,
    scale: float = 1.0,
    orth_init: str = "identity",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """Weights for S seeds, one generator each: {name: (S, d, d)}.

    init: ``uniform`` entries U[0, 1) (the blog's teacher); ``gaussian`` a Gaussian
    matrix rescaled to spectral norm ``scale`` (Li & Yuan's small-norm teacher);
    ``small`` entries N(0, 1/d) times ``scale`` (the usual O(1/sqrt(d)) student);
    ``zero``. Q (orth_resnet) is I or Haar on SO(d) (``orth_init``; the teacher's Q
    is always Haar). Draws are made in a fixed order per generator.
    """
    arch = _arch(arch)
    per_seed = []
    for g in gens:
        ws = {}
        for name in arch.params:
            if name == "Q":
                if orth_init == "haar":
                    Q = orth.haar_orthogonal(d, generator=g, dtype=torch.float64)
                else:
                    Q = torch.eye(d, dtype=torch.float64)
                ws[name] = Q.to(dtype=dtype, device=device)
                continue
            if init == "uniform":
                W = torch.rand(d, d, generator=g, dtype=torch.float64)
            elif init == "gaussian":
                G = torch.randn(d, d, generator=g, dtype=torch.float64)
                W = G * (scale / torch.linalg.matrix_norm(G, ord=2))
            elif init == "small":
                W = torch.randn(d, d, generator=g, dtype=torch.float64) * (scale / math.sqrt(d))
            elif init == "zero":
                W = torch.zeros(d, d, dtype=torch.float64)
            else:
                raise ValueError(f"unknown init {init!r}; allowed: uniform, gaussian, small, zero")
            ws[name] = W.to(dtype=dtype, device=device)
        per_seed.append(ws)
    return {name: torch.stack([ws[name] for ws in per_seed]) for name in arch.params}


# --------------------------------------------------------------------------- optimisers


class SeedwiseOptimizer:
    """SGD (heavy-ball momentum), Nesterov SGD and Adam on (S, ...) tensors.

    ``direction(name, g)`` returns D for the update p <- p - lr D. Every rule is
    element-wise, so seeds never mix. Formulas as ``torch.optim.SGD`` (dampening 0;
    the first buffer is g) and ``torch.optim.Adam`` (Kingma & Ba 2015, betas
    (0.9, 0.999), eps 1e-8; ``momentum`` is not used by Adam)."""

    def __init__(self, kind: str, momentum: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
        if kind not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {kind!r}; allowed: {', '.join(OPTIMIZERS)}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); got {momentum}")
        if kind == "nesterov" and momentum == 0.0:
            raise ValueError("optimizer=nesterov needs momentum > 0")
        self.kind, self.momentum, self.betas, self.eps = kind, float(momentum), betas, eps
        self.state: dict[str, dict] = {}

    def direction(self, name: str, g: Tensor) -> Tensor:
        st = self.state.setdefault(name, {})
        if self.kind == "adam":
            b1, b2 = self.betas
            t = st["t"] = st.get("t", 0) + 1
            if t == 1:
                st["m"], st["v"] = (1 - b1) * g, (1 - b2) * g * g
            else:
                st["m"] = b1 * st["m"] + (1 - b1) * g
                st["v"] = b2 * st["v"] + (1 - b2) * g * g
            m, v = st["m"], st["v"]
            return (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + self.eps)
        if self.momentum == 0.0:
            return g
        st["buf"] = self.momentum * st["buf"] + g if "buf" in st else g.clone()
        buf = st["buf"]
        return g + self.momentum * buf if self.kind == "nesterov" else buf


# --------------------------------------------------------------------------- distances


def weight_distance(params: dict[str, Tensor], teacher: dict[str, Tensor]) -> Tensor:
    """sum over weight matrices of ||W - W*||_F, per seed: (S,)."""
    return sum(torch.linalg.matrix_norm(params[n] - teacher[n]) for n in teacher)


def hidden_unit_cost(A: np.ndarray, V: np.ndarray, A_star: np.ndarray, V_star: np.ndarray, rescale: bool) -> np.ndarray:
    """C[j, k]: squared distance between student unit j and teacher unit k. (m, m)

    A: (d, m) incoming weights (columns), V: (m, k) outgoing weights (rows). With
    ``rescale``, student unit j is first rescaled by c = ||a*_k|| / ||a_j|| > 0
    (a -> c a, v -> v / c leaves v ReLU(a^T x) unchanged), which matches its incoming
    norm to the teacher unit's; c = 1 where either norm is 0.
    """
    a = A.T[:, None, :]  # (m, 1, d) student j
    a_star = A_star.T[None, :, :]  # (1, m, d) teacher k
    v, v_star = V[:, None, :], V_star[None, :, :]
    if rescale:
        na = np.linalg.norm(a, axis=-1, keepdims=True)  # (m, 1, 1)
        na_star = np.linalg.norm(a_star, axis=-1, keepdims=True)  # (1, m, 1)
        ok = (na > 0) & (na_star > 0)
        c = np.where(ok, na_star / np.where(ok, na, 1.0), 1.0)  # (m, m, 1)
        a, v = c * a, v / c
    return ((a - a_star) ** 2).sum(-1) + ((v - v_star) ** 2).sum(-1)


def aligned_distance(
    A: np.ndarray,
    V: np.ndarray,
    A_star: np.ndarray,
    V_star: np.ndarray,
    rescale: bool = True,
    extra_sq: float = 0.0,
) -> tuple[float, np.ndarray]:
    """min over permutations pi (and per-unit rescalings) of the Frobenius distance
    between student and teacher hidden units, for one seed.

    Returns (sqrt(min_pi sum_k C[pi(k), k] + extra_sq), pi) with C from
    :func:`hidden_unit_cost` and pi[k] the student unit matched to teacher unit k.
    ``extra_sq`` adds squared distances of weights outside the hidden units (Q)."""
    C = hidden_unit_cost(A, V, A_star, V_star, rescale)
    rows, cols = linear_sum_assignment(C)  # Hungarian algorithm (Kuhn 1955)
    pi = np.empty_like(rows)
    pi[cols] = rows
    return float(math.sqrt(max(C[rows, cols].sum() + extra_sq, 0.0))), pi


def skip_weights(arch: str | Arch, params: dict[str, Tensor], output: str) -> Tensor | None:
    """The part of Q (orth_resnet) that reaches f: Q, or its column sums 1^T Q for a
    summed output (sum(Q x) = (1^T Q) x), (S, k, d); None for the other architectures."""
    if "Q" not in params:
        return None
    Q = params["Q"]
    return Q.sum(-2, keepdim=True) if scalar_output(arch, output) else Q


def aligned_distances(arch: str | Arch, params: dict[str, Tensor], teacher: dict[str, Tensor], output: str) -> np.ndarray:
    """``aligned_distance`` for every seed: (S,). Units are compared through
    A = W1 (+ I) and V = W2 (or W2 1 for a summed output), Q through
    :func:`skip_weights`; one-layer (1-norm) architectures have no rescaling symmetry
    (their output weights are fixed at 1)."""
    arch = _arch(arch)
    A = effective_first_layer(arch, params).double().cpu().numpy()  # (S, d, d)
    A_s = effective_first_layer(arch, teacher).double().cpu().numpy()
    V = output_weights(arch, params, output).double().cpu().numpy()  # (S, d, k)
    V_s = output_weights(arch, teacher, output).double().cpu().numpy()
    if "Q" in params:
        dQ = skip_weights(arch, params, output) - skip_weights(arch, teacher, output)
        extra = torch.linalg.matrix_norm(dQ).square().double().cpu().numpy()
    else:
        extra = np.zeros(A.shape[0])
    return np.array(
        [aligned_distance(A[s], V[s], A_s[s], V_s[s], arch.two_layer, extra[s])[0] for s in range(A.shape[0])]
    )


# --------------------------------------------------------------------------- training


@dataclass
class TeacherStudentConfig:
    """Everything one study needs, checked on construction (ValueError, one line)."""

    d: int = 10
    output: str = "sum"
    n_train: int = 100_000  # 0: fresh samples every step
    n_test: int = 10_000
    batch_size: int = 200
    teacher_init: str = "uniform"
    teacher_scale: float = 1.0
    student_init: str = "small"
    student_scale: float = 1.0
    orth_init: str = "identity"
    orth_update: str = "polar"
    optimizer: str = "sgd"
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
        need(is_int(self.n_test) and self.n_test >= 1, f"n_test must be an integer >= 1; got {self.n_test!r}")
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
    distance: np.ndarray  # (S, T) sum of ||W - W*||_F
    aligned_distance: np.ndarray  # (S, T)
    label_variance: np.ndarray  # (S,) Var(y) on the test set, the loss of the best constant
    teacher_norm: np.ndarray  # (S,) sum of ||W*||_F (the unaligned distance of a zero student)
    teacher_aligned_norm: np.ndarray  # (S,) aligned distance of the zero student: sqrt(||W1*||^2 (+ ||V*||^2 + ||skip_weights(Q*)||^2))
    teacher: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (S, d, d)
    student: dict[str, np.ndarray] = field(default_factory=dict)  # final weights

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat ``{"<arch>.<key>": array}`` for ``np.savez``."""
        out = {
            f"{self.arch}.{k}": getattr(self, k)
            for k in ("seeds", "steps", "train_loss", "test_loss", "distance", "aligned_distance",
                      "label_variance", "teacher_norm", "teacher_aligned_norm")
        }
        out.update({f"{self.arch}.teacher.{n}": w for n, w in self.teacher.items()})
        out.update({f"{self.arch}.student.{n}": w for n, w in self.student.items()})
        return out


class _Run:
    """Teacher, student, labels, optimiser and metric log of one architecture."""

    def __init__(self, arch: Arch, cfg: TeacherStudentConfig, seeds, X_train, X_test):
        dtype, device, d = cfg.torch_dtype, X_test.device, cfg.d
        self.arch, self.cfg = arch, cfg
        gens = [seed_generator(s, "model") for s in seeds]  # teacher first, then student
        self.teacher = init_weights(arch, d, gens, cfg.teacher_init, cfg.teacher_scale, "haar", dtype, device)
        if cfg.student_init == "teacher":
            self.student = {n: w.clone() for n, w in self.teacher.items()}
        else:
            self.student = init_weights(arch, d, gens, cfg.student_init, cfg.student_scale, cfg.orth_init, dtype, device)
        self.opt = SeedwiseOptimizer(cfg.optimizer, cfg.momentum)
        self.Y_train = predict(arch, self.teacher, X_train, cfg.output) if X_train is not None else None  # (S, k, N)
        self.Y_test = predict(arch, self.teacher, X_test, cfg.output)  # (S, k, n_test)
        self.log: dict[str, list] = {k: [] for k in ("step", "train_loss", "test_loss", "distance", "aligned_distance")}
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
    def step(self, X: Tensor, Y: Tensor) -> None:
        cfg, lr = self.cfg, self.cfg.lr
        fresh = self.Y_train is None  # then the batch losses are the training loss
        loss, grads = loss_and_grads(self.arch, self.student, X, Y, cfg.output, with_loss=fresh)
        if fresh:
            self.batch_losses += loss
            self.batch_count += 1
        for name, g in grads.items():
            W = self.student[name]
            if name != "Q":
                W.add_(self.opt.direction(name, g), alpha=-lr)
            elif cfg.orth_update == "polar":
                # Riemannian gradient W skew(W^T G) on O(d) (embedded metric), the optimiser's
                # direction from it, then the polar retraction (Absil et al. 2008, sec. 4.1)
                D = self.opt.direction(name, orth.tangent_gradient(W, g))
                W.copy_(orth.polar(W - lr * D))
            else:  # spectral-norm steepest descent on O(d), step length lr (modula)
                W.copy_(orth.steepest_step(W, self.opt.direction(name, g), lr))

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
        self.log["aligned_distance"].append(
            aligned_distances(self.arch, self.student, self.teacher, cfg.output)
            if finite
            else np.full(len(test), np.nan)
        )

    def trajectory(self, seeds) -> Trajectory:
        cfg, arch = self.cfg, self.arch
        Y = self.Y_test  # (S, k, n_test)
        var = (Y - Y.mean(2, keepdim=True)).square().mean((1, 2))  # (S,) per-output variance, averaged
        # the aligned distance of the zero student (W1 = 0, V = 0), left unaligned
        W1 = self.teacher["W1" if arch.two_layer else "W"]
        sq = torch.linalg.matrix_norm(W1).square()
        if arch.two_layer:
            sq = sq + torch.linalg.matrix_norm(output_weights(arch, self.teacher, cfg.output)).square()
        if "Q" in self.teacher:
            sq = sq + torch.linalg.matrix_norm(skip_weights(arch, self.teacher, cfg.output)).square()
        stack = lambda k: np.stack(self.log[k], axis=1)  # noqa: E731  (S, T)
        np_ = lambda t: t.detach().cpu().double().numpy()  # noqa: E731
        return Trajectory(
            arch=arch.name,
            seeds=np.asarray(seeds),
            steps=np.asarray(self.log["step"]),
            train_loss=stack("train_loss"),
            test_loss=stack("test_loss"),
            distance=stack("distance"),
            aligned_distance=stack("aligned_distance"),
            label_variance=np_(var),
            teacher_norm=np_(sum(torch.linalg.matrix_norm(w) for w in self.teacher.values())),
            teacher_aligned_norm=np_(sq.sqrt()),
            teacher={n: np_(w) for n, w in self.teacher.items()},
            student={n: np_(w) for n, w in self.student.items()},
        )


def train(
    archs: Sequence[str],
    cfg: TeacherStudentConfig,
    seeds: Sequence[int],
    progress: bool = False,
) -> dict[str, Trajectory]:
    """Train a student of every architecture in ``archs`` for every seed, all at once.

    Per seed s, the generator ``seed_generator(s, "data")`` draws the training inputs,
    the test inputs, then each epoch's shuffle (or each chunk of fresh samples), and
    ``seed_generator(s, "model")`` the teacher, then the student. All architectures see
    the same inputs. Metrics are logged at step 0, every ``log_every`` steps and at the
    end.
    """
    from ..runs import progress_bar

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("need at least one seed")
    arch_list = [_arch(a) for a in archs]
    if not arch_list:
        raise ValueError(f"need at least one architecture; allowed: {', '.join(ARCHS)}")
    dtype, device = cfg.torch_dtype, torch.device(cfg.device)
    S, B, d = len(seeds), cfg.batch_size, cfg.d
    gens = [seed_generator(s, "data") for s in seeds]
    X_train = sample_inputs(gens, cfg.n_train, d, dtype=dtype).to(device) if cfg.n_train else None  # (S, d, N)
    X_test = sample_inputs(gens, cfg.n_test, d, dtype=dtype).to(device)  # (S, d, n_test)
    runs = [_Run(a, cfg, seeds, X_train, X_test) for a in arch_list]
    total = cfg.total_steps
    for r in runs:
        r.record(0, X_train, X_test)

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
            r.step(X, r.labels(X, index))
        if (t + 1) % cfg.log_every == 0 or t + 1 == total:
            for r in runs:
                r.record(t + 1, X_train, X_test)
    return {r.arch.name: r.trajectory(seeds) for r in runs}


# --------------------------------------------------------------------------- summary


def summarize(traj: Trajectory, fit_tol: float, recover_tol: float) -> dict:
    """Final numbers of one architecture, means (and std) over seeds, with verdicts.

    fits: final train loss / Var(y) <= fit_tol (Var(y) is the loss of the best constant,
    so this is 1 - R^2). recovered: distance / sum ||W*||_F <= recover_tol.
    recovered_up_to_symmetry: aligned distance / teacher_aligned_norm <= recover_tol.
    A verdict holds when it holds for the mean over seeds; ``*_seeds`` count the seeds
    for which it holds on their own. Diverged seeds (non-finite loss) count as
    failures and make the means null.
    """
    final = lambda a: a[:, -1]  # noqa: E731
    rel_train = final(traj.train_loss) / np.maximum(traj.label_variance, np.finfo(float).tiny)
    rel_dist = final(traj.distance) / np.maximum(traj.teacher_norm, np.finfo(float).tiny)
    rel_aligned = final(traj.aligned_distance) / np.maximum(traj.teacher_aligned_norm, np.finfo(float).tiny)
    diverged = ~np.isfinite(final(traj.train_loss)) | ~np.isfinite(final(traj.distance))

    def ok(v, tol):
        with np.errstate(invalid="ignore"):
            return np.isfinite(v) & (v <= tol)

    def mean(v):
        return float(np.mean(v))

    def std(v):
        return float(np.std(v))

    out = {"seeds": len(traj.seeds), "steps": int(traj.steps[-1])}
    for key, arr in (("train_loss", final(traj.train_loss)), ("test_loss", final(traj.test_loss)),
                     ("distance", final(traj.distance)), ("aligned_distance", final(traj.aligned_distance)),
                     ("relative_train_loss", rel_train), ("relative_distance", rel_dist),
                     ("relative_aligned_distance", rel_aligned)):
        out[f"{key}_final"] = mean(arr)
        out[f"{key}_final_std"] = std(arr)
    out["distance_initial"] = mean(traj.distance[:, 0])
    out["aligned_distance_initial"] = mean(traj.aligned_distance[:, 0])
    out["fits"] = bool(ok(np.mean(rel_train), fit_tol))
    out["recovered"] = bool(ok(np.mean(rel_dist), recover_tol))
    out["recovered_up_to_symmetry"] = bool(ok(np.mean(rel_aligned), recover_tol))
    out["fits_seeds"] = int(ok(rel_train, fit_tol).sum())
    out["recovered_seeds"] = int(ok(rel_dist, recover_tol).sum())
    out["recovered_up_to_symmetry_seeds"] = int(ok(rel_aligned, recover_tol).sum())
    out["diverged_seeds"] = int(diverged.sum())
    out["thresholds"] = {
        "fit": f"train_loss / Var(y) <= {fit_tol:g}",
        "recover": f"distance / sum ||W*||_F <= {recover_tol:g}",
        "recover_up_to_symmetry": f"aligned_distance / (aligned distance of the zero student) <= {recover_tol:g}",
        "fit_tol": fit_tol,
        "recover_tol": recover_tol,
    }
    return out
