"""Layer 2, models: the Li & Yuan family of one-block networks for teacher-student
regression, vectorised over seeds (the training loop is
:mod:`orthogonal_skip_connections.train.teacher_student`, the distances to the teacher
:mod:`orthogonal_skip_connections.analysis.teacher_student`).

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..maths import orthogonal as orth
from ..skips.constraint import Retraction, mark_retracted

__all__ = [
    "Arch",
    "ARCHS",
    "OUTPUTS",
    "WEIGHT_INITS",
    "as_arch",
    "scalar_output",
    "seed_generator",
    "sample_inputs",
    "init_weights",
    "Student",
    "effective_first_layer",
    "output_weights",
    "skip_weights",
    "predict",
    "mse",
    "loss_and_grads",
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
WEIGHT_INITS = ("uniform", "gaussian", "small", "zero")  # see init_weights


def as_arch(name: str | Arch) -> Arch:
    """The :class:`Arch` called ``name`` (an Arch is returned as is)."""
    if isinstance(name, Arch):
        return name
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; allowed: {', '.join(ARCHS)}")
    return ARCHS[name]


def scalar_output(arch: str | Arch, output: str) -> bool:
    """Whether f is a scalar per sample: the 1-norm architectures always are."""
    return not as_arch(arch).two_layer or output == "sum"


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
        return torch.ones(*W.shape[:-2], W.shape[-1], 1, dtype=W.dtype, device=W.device)  # one row per unit (column of W)
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
    return _forward(as_arch(arch), params, X, output)[-1]


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
    arch = as_arch(arch)
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

def skip_weights(arch: str | Arch, params: dict[str, Tensor], output: str) -> Tensor | None:
    """The part of Q (orth_resnet) that reaches f: Q, or its column sums 1^T Q for a
    summed output (sum(Q x) = (1^T Q) x), (S, k, d); None for the other architectures."""
    if "Q" not in params:
        return None
    Q = params["Q"]
    return Q.sum(-2, keepdim=True) if scalar_output(arch, output) else Q


# --------------------------------------------------------------------------- randomness


def seed_generator(seed: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one seed and one named stream ("data", "model"), independent of
    every other seed and stream (NumPy's SeedSequence hashes [seed, stream])."""
    key = [int(seed), *stream.encode()]
    state = int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> np.uint64(1))
    return torch.Generator(device=device).manual_seed(state)


def sample_inputs(gens: Sequence[torch.Generator], n: int, d: int, *batch: int, dtype=torch.float64) -> Tensor:
    """n inputs x ~ N(0, I_d) per seed, drawn seed by seed on the CPU, as columns:
    (S, *batch, d, n). Drawn in float32 whatever ``dtype`` (torch's draws differ by dtype),
    so a float64 run sees the float32 run's inputs, exactly, and the two compare."""
    return torch.stack([torch.randn(*batch, n, d, generator=g, dtype=torch.float32).mT for g in gens]).to(dtype).contiguous()


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

    init: ``uniform`` entries U[0, scale) (the blog's teacher: U[0, 1)); ``gaussian`` a Gaussian
    matrix rescaled to spectral norm ``scale`` (Li & Yuan's small-norm teacher);
    ``small`` entries N(0, 1/d) times ``scale`` (the usual O(1/sqrt(d)) student);
    ``zero``. Q (orth_resnet) is I or Haar on SO(d) (``orth_init``; the teacher's Q
    is always Haar). Draws are made in a fixed order per generator.
    """
    arch = as_arch(arch)
    if init not in WEIGHT_INITS:
        raise ValueError(f"unknown init {init!r}; allowed: {', '.join(WEIGHT_INITS)}")
    if orth_init not in orth.ORTH_INITS:
        raise ValueError(f"unknown orth_init {orth_init!r}; allowed: {', '.join(orth.ORTH_INITS)}")
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
                W = torch.rand(d, d, generator=g, dtype=torch.float64) * scale
            elif init == "gaussian":
                G = torch.randn(d, d, generator=g, dtype=torch.float64)
                W = G * (scale / torch.linalg.matrix_norm(G, ord=2))
            elif init == "small":
                W = torch.randn(d, d, generator=g, dtype=torch.float64) * (scale / math.sqrt(d))
            else:  # zero
                W = torch.zeros(d, d, dtype=torch.float64)
            ws[name] = W.to(dtype=dtype, device=device)
        per_seed.append(ws)
    return {name: torch.stack([ws[name] for ws in per_seed]) for name in arch.params}


# --------------------------------------------------------------------------- the trainable student


class Student(nn.Module):
    """The trainable weights of one architecture for S seeds: ``self.weights``, an
    ``nn.ParameterDict`` {name: (S, d, d)} (names as in ``arch.params``).

    Q (orth_resnet) is marked as a retracted orthogonal matrix (``orth_method``, one of
    ``RETRACTED_METHODS``; each of its S matrices is retracted on its own), so the
    optimiser of :func:`orthogonal_skip_connections.optim.optimizer` moves it on O(d)
    inside its ``step()``. Gradients are not taken by autograd: a loop sets ``p.grad``
    from :func:`loss_and_grads`, which is what makes these tiny models fast.
    """

    def __init__(self, arch: str | Arch, weights: dict[str, Tensor], orth_method: str = "svd"):
        super().__init__()
        self.arch = as_arch(arch)
        if set(weights) != set(self.arch.params):
            raise ValueError(f"{self.arch.name} has weights {', '.join(self.arch.params)}; got {', '.join(weights)}")
        self.weights = nn.ParameterDict({n: nn.Parameter(weights[n].detach().clone()) for n in self.arch.params})
        if "Q" in self.weights:
            mark_retracted(self.weights["Q"], Retraction(orth_method), self.weights, "Q")

    def tensors(self) -> dict[str, Tensor]:
        """{name: parameter}, the dict the functions of this module take."""
        return dict(self.weights.items())

    def forward(self, X: Tensor, output: str = "sum") -> Tensor:
        """f: X (S, d, B) -> (S, k, B), as :func:`predict`."""
        return predict(self.arch, self.tensors(), X, output)
