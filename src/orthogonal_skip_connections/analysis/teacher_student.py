"""Layer 4, analysis: how far a teacher-student student is from its teacher, and the
verdicts of a run (the models are :mod:`orthogonal_skip_connections.models.teacher_student`,
the loop that trains them :mod:`orthogonal_skip_connections.train.teacher_student`).

Recovery is measured twice: ``distance`` = sum over weight matrices of ||W - W*||_F,
and ``aligned_distance``, which first aligns the student along the symmetries that leave
f unchanged: hidden units can be permuted (the optimal matching of the linear assignment
problem, as Kuhn's 1955 Hungarian method finds it; ``scipy.optimize.linear_sum_assignment``
solves it by a modified Jonker-Volgenant algorithm, Crouse 2016) and, where an output layer
follows, each unit can be rescaled by c > 0 (a -> c a, v -> v / c) because ReLU is
positively homogeneous. The rescaling is not optimised: c matches each unit's incoming norm
to its teacher unit's, so the aligned distance is an upper bound on the distance modulo the
symmetries. With ``output="sum"`` only the row sums W2 1 of W2 (and the column sums
1^T Q of Q) reach the output.

Whether a student computes the teacher's function, not only on the training sample, is
measured exactly by :func:`population_loss`: E ||f(x) - f*(x)||^2 over x ~ N(0, I_d) in
closed form (the degree-1 arc-cosine kernel), the limit of the test loss as n_test grows.
:func:`closest_unit_angle` gives the smallest angle between two of the teacher's hidden units:
two near-collinear teacher units leave the loss almost flat along the directions that
tell them apart (``notes/teacher_student_findings.md``, finding 3). Its gradient and Hessian
across the symmetry orbits are :func:`population_hessian`'s; :func:`newton_critical_point`
refines a trained student to the critical point it sits near (a minimum or a saddle),
:func:`trust_region_descent` descends from it, every step downhill, to the local minimum
where a flat valley or a saddle ends (all seeds at once), :func:`balanced` picks the
representative of a student's rescaling orbit with |incoming| = |outgoing| weights per unit,
and :func:`teacher_unit_coverage` finds the teacher unit a stalled student has left out.

A run's final numbers, means and spreads over seeds with their verdicts (fits, recovered,
recovered up to symmetry), come from :func:`summarize`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..models.teacher_student import Arch, as_arch, effective_first_layer, output_weights, skip_weights
from .stats import geometric_spread, seed_sd

if TYPE_CHECKING:
    from ..train.teacher_student import Trajectory

__all__ = [
    "weight_distance",
    "hidden_unit_cost",
    "aligned_distance",
    "aligned_distances",
    "zero_student_aligned_norm",
    "relu_kernel",
    "population_loss",
    "PopulationHessian",
    "population_hessian",
    "population_chart",
    "CriticalPoint",
    "balanced",
    "newton_critical_point",
    "trust_region_descent",
    "closest_unit_angle",
    "teacher_unit_coverage",
    "seed_outcomes",
    "closest_angle_by_fit",
    "summarize",
]


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
    """min over permutations pi of the Frobenius distance between student and teacher
    hidden units, for one seed, each student unit (with ``rescale``) first rescaled to its
    teacher unit's incoming norm: an upper bound on the min over rescalings too.

    Returns (sqrt(min_pi sum_k C[pi(k), k] + extra_sq), pi) with C from
    :func:`hidden_unit_cost` and pi[k] the student unit matched to teacher unit k.
    ``extra_sq`` adds squared distances of weights outside the hidden units (Q)."""
    C = hidden_unit_cost(A, V, A_star, V_star, rescale)
    # the optimal assignment (Kuhn 1955's problem), by a modified Jonker-Volgenant algorithm (Crouse 2016)
    rows, cols = linear_sum_assignment(C)
    pi = np.empty_like(rows)
    pi[cols] = rows
    return float(math.sqrt(max(C[rows, cols].sum() + extra_sq, 0.0))), pi


def aligned_distances(arch: str | Arch, params: dict[str, Tensor], teacher: dict[str, Tensor], output: str) -> np.ndarray:
    """``aligned_distance`` for every seed: (S,). Units are compared through
    A = W1 (+ I) and V = W2 (or W2 1 for a summed output), Q through
    :func:`skip_weights`; one-layer (1-norm) architectures have no rescaling symmetry
    (their output weights are fixed at 1)."""
    arch = as_arch(arch)
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


def zero_student_aligned_norm(arch: str | Arch, teacher: dict[str, Tensor], output: str) -> Tensor:
    """The aligned distance of the zero student (W1 = 0, V = 0, Q = 0), left unaligned:
    sqrt(||W1*||^2 (+ ||V*||^2 + ||skip_weights(Q*)||^2)), per seed (S,). The yardstick
    of ``recovered_up_to_symmetry``."""
    arch = as_arch(arch)
    sq = torch.linalg.matrix_norm(teacher["W1" if arch.two_layer else "W"]).square()
    if arch.two_layer:
        sq = sq + torch.linalg.matrix_norm(output_weights(arch, teacher, output)).square()
    if "Q" in teacher:
        sq = sq + torch.linalg.matrix_norm(skip_weights(arch, teacher, output)).square()
    return sq.sqrt()


# --------------------------------------------------------------------------- population loss


KERNEL_CHUNK = 1 << 22  # numbers in one of relu_kernel's (..., m, n, d) temporaries (32 MB in float64)


def relu_kernel(A: Tensor, B: Tensor) -> Tensor:
    """E[ReLU(a^T x) ReLU(b^T x)] over x ~ N(0, I_d) for every column a of A and b of B:
    (..., d, m), (..., d, n) -> (..., m, n).

    Half the arc-cosine kernel of degree 1 (Cho & Saul 2009, eq. 6):
    (|a| |b| sin t + (pi - t) a^T b) / (2 pi), t the angle between a and b; |a|^2 / 2 at
    a = b, 0 where a or b is 0. Written as (w + p atan2(w, -p)) / (2 pi) with p = a^T b and
    w = |a| |b| sin t, sin t = |a' - b'| |a' + b'| / 2 for the unit vectors a', b': this keeps
    t accurate near 0 and pi, where arccos(p / (|a| |b|)) loses half the digits (at the
    cost of (..., m, n, d) temporaries, built for a slice of A's columns at a time so that
    each holds at most ``KERNEL_CHUNK`` numbers: d = 128, 8 seeds would take 2 GB at once).

    Twice differentiable by autograd wherever a, b != 0. Near parallel (antiparallel)
    columns the kernel is p / 2 (0) plus w^3 / (6 pi p^2) + O(w^5): C^2 in the weights but
    not C^3. At exactly parallel columns the w-terms' first and second derivatives are 0,
    and so are the ones autograd returns where w rounds to 0 (a column with itself: sqrt is
    evaluated at 1 there, not at 0). Not differentiable at a zero column (a dead unit):
    autograd returns 0 there."""
    (d, m), n = A.shape[-2:], B.shape[-1]
    rows = max(1, KERNEL_CHUNK // max(1, math.prod(torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])) * n * d))
    if m > rows:  # the same numbers, column slice by column slice of A
        return torch.cat([relu_kernel(A[..., i:i + rows], B) for i in range(0, m, rows)], -2)
    na, nb = A.square().sum(-2), B.square().sum(-2)  # squared norms, (..., m), (..., n)
    ua = (A / torch.where(na > 0, na, 1.0).sqrt()[..., None, :]).mT[..., :, None, :]  # a', (..., m, 1, d)
    ub = (B / torch.where(nb > 0, nb, 1.0).sqrt()[..., None, :]).mT[..., None, :, :]  # b', (..., 1, n, d)
    sin2 = (ua - ub).square().sum(-1) * (ua + ub).square().sum(-1) / 4  # (..., m, n)
    w2 = na[..., :, None] * nb[..., None, :] * sin2
    par = w2 == 0  # parallel, antiparallel or a zero column: sqrt's derivative is infinite at 0
    w = torch.where(par, 0.0, torch.where(par, 1.0, w2).sqrt())
    p = A.mT @ B  # (..., m, n)
    zero = (na[..., :, None] == 0) | (nb[..., None, :] == 0)
    k = (w + p * torch.atan2(w, torch.where(zero, 1.0, -p))) / (2 * math.pi)  # atan2(w, -p) = pi - t
    return torch.where(zero, 0.0, k)


def population_loss(arch: str | Arch, params: dict[str, Tensor], teacher: dict[str, Tensor], output: str) -> Tensor:
    """E ||f(x) - f*(x)||^2 / k over x ~ N(0, I_d), exactly, per seed: (S,), float64.

    The loss of :func:`~orthogonal_skip_connections.models.teacher_student.mse` (mean over
    the k output entries) on infinitely many fresh inputs. f - f* is itself one network,
    out = V^T ReLU(A^T x) + U x with the units of both (A = [A_s, A*], V = [V_s; -V*]) and
    U the difference of the linear skips (Q or 1^T Q; the shared + x cancels), so

        E ||out||^2 = tr(V^T K V) + sum(V^T * (U A)) + ||U||_F^2,

    K = :func:`relu_kernel` (A, A), and E[ReLU(a^T x) x] = a / 2 (Stein's lemma) for the
    cross term. The three terms cancel to the round-off of float64 (~1e-16 E||f*||^2) when
    the student is the teacher up to symmetry; the value is clamped at 0, its derivatives
    are not (at the teacher they are those of the unclamped sum, 0 and the Gauss-Newton
    Hessian). Twice differentiable by autograd: see :func:`relu_kernel` and
    :func:`population_hessian`.
    """
    arch = as_arch(arch)
    A = torch.cat([effective_first_layer(arch, params), effective_first_layer(arch, teacher)], -1).double()
    V = torch.cat([output_weights(arch, params, output), -output_weights(arch, teacher, output)], -2).double()
    sq = (V * (relu_kernel(A, A) @ V)).sum((-2, -1))
    if "Q" in params:
        U = (skip_weights(arch, params, output) - skip_weights(arch, teacher, output)).double()  # (S, k, d)
        sq = sq + (V.mT * (U @ A)).sum((-2, -1)) + U.square().sum((-2, -1))
    sq = sq + (sq.clamp(min=0.0) - sq).detach()  # the value clamped at 0, the derivatives left as they are
    return sq / V.shape[-1]


@dataclass(frozen=True)
class PopulationHessian:
    """Gradient and Hessian of :func:`population_loss` at a student, per seed, in the
    coordinates of :func:`population_hessian`, with the directions its known symmetries
    leave flat."""

    blocks: dict[str, slice]  # the coordinates of each weight, in arch.params order
    gradient: Tensor  # (S, n)
    hessian: Tensor  # (S, n, n)
    symmetries: Tensor  # (S, n, r) orthonormal columns: directions that leave f unchanged

    def eigenvalues(self) -> tuple[Tensor, Tensor]:
        """(all n eigenvalues of the Hessian, the n - r of its restriction to the
        orthogonal complement of ``symmetries``), ascending, per seed: (S, n), (S, n - r).
        At a critical point the symmetries' r eigenvalues are 0, and the point is a strict
        local minimum modulo symmetries when the n - r are all positive."""
        r = self.symmetries.shape[-1]
        U = torch.linalg.svd(self.symmetries, full_matrices=True).U[..., r:]  # (S, n, n - r)
        return torch.linalg.eigvalsh(self.hessian), torch.linalg.eigvalsh(U.mT @ self.hessian @ U)


def _symmetry_generators(arch: Arch, p: dict[str, Tensor], output: str, blocks: dict[str, slice], n: int) -> Tensor:
    """One seed's symmetry directions in population_hessian's coordinates, (n, r), not
    orthonormalised. p holds that seed's weights: W1 (d, m), W2 (m, k), Q (d, d)."""
    cols = []

    def direction(**parts: Tensor) -> None:
        v = torch.zeros(n, dtype=torch.float64)
        for name, part in parts.items():
            v[blocks[name]] = part.flatten()
        cols.append(v)

    if arch.two_layer:
        A, W2 = effective_first_layer(arch, {k: v[None] for k, v in p.items()})[0], p["W2"]
        for j in range(W2.shape[0]):  # d/dc at c = 1 of a_j -> c a_j, W2[j] -> W2[j] / c
            dW1, dW2 = torch.zeros_like(A), torch.zeros_like(W2)
            dW1[:, j], dW2[j] = A[:, j], -W2[j]
            direction(W1=dW1, W2=dW2)
        if output == "sum":  # only W2 1 reaches f: W2 -> W2 + M with M 1 = 0
            perp = torch.linalg.svd(torch.ones(1, W2.shape[1], dtype=torch.float64)).Vh[1:]  # orthonormal, each row . 1 = 0
            for j in range(W2.shape[0]):
                for row in perp:
                    dW2 = torch.zeros_like(W2)
                    dW2[j] = row
                    direction(W2=dW2)
    if "Q" in p and output == "sum":  # only u = 1^T Q reaches f: Q exp(S) with u S = 0 leaves it
        d = p["Q"].shape[-1]
        L = torch.stack([p["Q"].sum(0) @ _skew(e, d) for e in torch.eye(d * (d - 1) // 2, dtype=torch.float64)], 1)
        for row in torch.linalg.svd(L).Vh[d - 1:]:  # s -> u S has rank d - 1 (u != 0): so(d - 1) is left
            direction(Q=row)
    return torch.stack(cols, 1) if cols else torch.zeros(n, 0, dtype=torch.float64)


def _skew(s: Tensor, d: int) -> Tensor:
    """sum_{i<j} s_ij (E_ij - E_ji) / sqrt(2), s (..., d (d - 1) / 2) in torch.triu_indices(d, d, 1)
    order: (..., d, d), ||S||_F = ||s||."""
    i, j = torch.triu_indices(d, d, 1)
    S = torch.zeros(*s.shape[:-1], d, d, dtype=s.dtype, device=s.device)
    S[..., i, j] = s / math.sqrt(2)
    return S - S.mT


def _chart_blocks(arch: Arch, params: dict[str, Tensor]) -> dict[str, slice]:
    """The coordinates of each weight in population_hessian's chart, in ``arch.params`` order."""
    blocks, start = {}, 0
    for nm in arch.params:
        d = params[nm].shape[-1]
        size = d * (d - 1) // 2 if nm == "Q" else params[nm][0].numel()
        blocks[nm] = slice(start, start + size)
        start += size
    return blocks


def _chart(arch: Arch, params: dict[str, Tensor], x: Tensor, blocks: dict[str, slice]) -> dict[str, Tensor]:
    """The weights at coordinates x (S, n) of population_hessian's chart around params (S, ...):
    W + x_W for the Euclidean weights, Q exp(S(x_Q)) for Q."""
    out = {}
    for nm in arch.params:
        w, xb = params[nm], x[..., blocks[nm]]
        if nm == "Q":
            out[nm] = w @ torch.linalg.matrix_exp(_skew(xb, w.shape[-1]))
        else:
            out[nm] = w + xb.reshape(w.shape)
    return out


def population_chart(arch: str | Arch, params: dict[str, Tensor], x: Tensor) -> dict[str, Tensor]:
    """The student at coordinates x (S, n) of :func:`population_hessian`'s chart around
    ``params``: W + x_W for W, W1 and W2, Q exp(S(x_Q)) for Q (x = 0 gives ``params``).
    A step taken in the coordinates of a :class:`PopulationHessian`, e.g. along one of its
    eigenvectors, lands here."""
    arch = as_arch(arch)
    p = {nm: params[nm].double() for nm in arch.params}
    return _chart(arch, p, x.double(), _chart_blocks(arch, p))


def population_hessian(arch: str | Arch, params: dict[str, Tensor], teacher: dict[str, Tensor],
                       output: str) -> PopulationHessian:
    """Gradient and Hessian of :func:`population_loss` with respect to the student's
    weights, seed by seed, in float64 (autograd twice through the closed form).

    Coordinates, in ``arch.params`` order: the entries of W, W1 and W2, row-major
    (Euclidean); for Q on O(d), the chart Q exp(S(s)) around the given Q with
    S = sum_{i<j} s_ij (E_ij - E_ji) / sqrt(2) (d (d - 1) / 2 coordinates, pairs (i, j) in
    ``torch.triu_indices`` order; ||Q S||_F = ||s||). t -> Q exp(tS) are the geodesics of
    O(d)'s bi-invariant metric, so these are normal coordinates: at s = 0 the gradient and
    Hessian are the Riemannian ones (Absil, Mahony & Sepulchre 2008, sec. 5.5). Q should
    be orthogonal to the precision wanted (``maths.orthogonal.polar`` a float32 one).

    ``symmetries`` spans the directions that leave f unchanged: each hidden unit's
    positive rescaling (a_j -> c a_j, W2[j] -> W2[j] / c; two-layer architectures), and
    with ``output="sum"`` the directions the output cannot see: W2 -> W2 + M with M 1 = 0,
    and Q exp(S) with (1^T Q) S = 0. r = m (+ m (k - 1) + (d - 1)(d - 2) / 2) of them for m
    units. At a critical point they are eigenvectors with eigenvalue 0; a dead unit
    (a_j = 0) adds flat directions that are not listed. Units exactly parallel to others
    are fine (the kernel is C^2 there, :func:`relu_kernel`); W2 may be m x k with m != d.
    """
    arch = as_arch(arch)
    names = arch.params
    blocks = _chart_blocks(arch, params)
    n = blocks[names[-1]].stop
    grads, hessians, syms = [], [], []
    for s in range(params[names[0]].shape[0]):
        p = {nm: params[nm][s:s + 1].detach().double().cpu() for nm in names}
        tea = {nm: w[s:s + 1].detach().double().cpu() for nm, w in teacher.items()}

        def loss(x: Tensor) -> Tensor:
            return population_loss(arch, _chart(arch, p, x[None], blocks), tea, output).sum()

        x0 = torch.zeros(n, dtype=torch.float64)
        grads.append(torch.func.grad(loss)(x0))
        hessians.append(torch.func.hessian(loss)(x0))
        p = {nm: w[0] for nm, w in p.items()}
        G = _symmetry_generators(arch, p, output, blocks, n)
        syms.append(torch.linalg.svd(G, full_matrices=False).U if G.shape[1] else G)
    return PopulationHessian(blocks, torch.stack(grads), torch.stack(hessians), torch.stack(syms))


@dataclass(frozen=True)
class CriticalPoint:
    """Where :func:`newton_critical_point` ended, per seed."""

    params: dict[str, Tensor]  # the student's weights there, (S, ...) float64
    hessian: PopulationHessian  # at params
    gradient_norms: Tensor  # (S, steps + 1): |gradient off the symmetries| before each step; nan after a seed stopped


def balanced(arch: str | Arch, params: dict[str, Tensor], output: str) -> dict[str, Tensor]:
    """The same student with each hidden unit rescaled (a_j -> c a_j, W2[j] -> W2[j] / c,
    c > 0) to |a_j| = |V_j|, V = :func:`output_weights` (W2 1 for a summed output): f is
    unchanged. Gradient flow conserves |a_j|^2 - |W2[j]|^2 (Du, Hu & Lee 2018), so a unit that
    starts with |a_j| ~ 1 and a small W2[j] stays unbalanced; its direction then turns at a
    rate proportional to |V_j| / |a_j|. Units with a_j = 0 or V_j = 0 are left as they are;
    one-layer architectures (no output weights to trade against) are returned unchanged."""
    arch = as_arch(arch)
    if not arch.two_layer:
        return dict(params)
    A = effective_first_layer(arch, params)
    na, nv = torch.linalg.vector_norm(A, dim=-2), torch.linalg.vector_norm(output_weights(arch, params, output), dim=-1)
    ok = (na > 0) & (nv > 0)
    c = torch.where(ok, (nv / torch.where(ok, na, 1.0)).sqrt(), 1.0)  # (S, m)
    out = dict(params)
    out["W1"] = A * c[..., None, :] + (params["W1"] - A)  # W1 = A (- I)
    out["W2"] = params["W2"] / c[..., :, None]
    return out


def newton_critical_point(arch: str | Arch, params: dict[str, Tensor], teacher: dict[str, Tensor], output: str,
                          steps: int = 20, tol: float = 1e-14, balance: bool = False) -> CriticalPoint:
    """Newton's method for a critical point of :func:`population_loss`, across the symmetry
    orbits, seed by seed.

    Each step solves (U^T H U) y = -U^T g and moves to x = U y in :func:`population_hessian`'s
    chart (:func:`population_chart`), U an orthonormal basis of the complement of the listed
    symmetries: the symmetry directions are flat at a critical point, so H is singular
    along them and the step leaves them out. Plain Newton, no line search: it converges
    quadratically to a nondegenerate critical point of any index (a saddle as well as a
    minimum) when started close enough, and it may wander or diverge elsewhere, e.g. near a
    dead unit, whose flat directions are not listed; ``gradient_norms`` shows which
    happened. A seed stops once |U^T g| <= tol * ||H||_2 (the gradient a displacement of
    tol makes; round-off leaves ~1e-16 of E[f*^2]) or after ``steps`` steps.

    With ``balance``, every step starts from the :func:`balanced` representative of the
    current point's rescaling orbit (same f): Newton in the quotient by the rescalings. Without
    it, a unit with a small output weight can slide along its orbit (|a_j| -> infinity,
    V_j -> 0) while f converges, and the coordinates degenerate.
    """
    arch = as_arch(arch)
    S = params[arch.params[0]].shape[0]
    out, norms = {nm: [] for nm in arch.params}, torch.full((S, steps + 1), math.nan, dtype=torch.float64)
    for s in range(S):
        p = {nm: params[nm][s:s + 1].detach().double().cpu() for nm in arch.params}
        tea = {nm: w[s:s + 1].detach().double().cpu() for nm, w in teacher.items()}
        for k in range(steps + 1):
            if balance:
                p = balanced(arch, p, output)
            h = population_hessian(arch, p, tea, output)
            r = h.symmetries.shape[-1]
            U = torch.linalg.svd(h.symmetries[0], full_matrices=True).U[:, r:]  # (n, n - r)
            g = U.mT @ h.gradient[0]
            norms[s, k] = g.norm()
            if k == steps or norms[s, k] <= tol * torch.linalg.matrix_norm(h.hessian[0], 2):
                break
            p = population_chart(arch, p, (U @ torch.linalg.solve(U.mT @ h.hessian[0] @ U, -g))[None])
        for nm in arch.params:
            out[nm].append(p[nm])
    final = {nm: torch.cat(w) for nm, w in out.items()}
    return CriticalPoint(final, population_hessian(arch, final, teacher, output), norms)


def _gradient_and_hessian(arch: Arch, p: dict[str, Tensor], tea: dict[str, Tensor], output: str,
                          blocks: dict[str, slice]) -> tuple[Tensor, Tensor]:
    """:func:`population_hessian`'s gradient and Hessian for all seeds at once: (S, n), (S, n, n).

    The seeds' losses are independent, so the gradient of their sum at x (S, n) holds each
    seed's gradient, and one Hessian-vector product with the tangent e_i in every seed's row
    (forward over reverse: ``torch.func.jvp`` of ``torch.func.grad``) gives column i of every
    seed's Hessian: n products, vectorised by ``torch.func.vmap``, instead of S Hessians."""
    S, n = p[arch.params[0]].shape[0], blocks[arch.params[-1]].stop

    def loss(x: Tensor) -> Tensor:
        return population_loss(arch, _chart(arch, p, x, blocks), tea, output).sum()

    x0 = torch.zeros(S, n, dtype=torch.float64)
    grad = torch.func.grad(loss)
    tangents = torch.eye(n, dtype=torch.float64)[:, None, :].expand(n, S, n)  # (n, S, n)
    columns = torch.func.vmap(lambda v: torch.func.jvp(grad, (x0,), (v,))[1])(tangents)  # (n, S, n): H_s e_i
    return grad(x0), columns.permute(1, 2, 0)


def _trust_region_step(g: Tensor, lam: Tensor, delta: Tensor) -> Tensor:
    """argmin of g^T y + y^T diag(lam) y / 2 over |y| <= delta, per row: g, lam (S, n), lam
    ascending, delta (S,) -> y (S, n). The model's Hessian is diagonal here: g and y are in the
    eigenbasis of the Hessian.

    Nocedal & Wright (2006), Theorem 4.1: y = -g / (lam + mu) with mu >= max(0, -lam_1), and
    mu = 0 or |y| = delta. |y(mu)| falls as mu grows, so mu is found by bisection, to the
    last bit, on [max(0, -lam_1), max(0, -lam_1) + |g| / delta] (where |y| <= delta already).
    The "hard case" (their sec. 4.3): g has no component along the lowest eigenvector and
    |y| < delta at mu = -lam_1 <= 0; the step is then topped up to the boundary along that
    eigenvector, downhill."""
    dtype = g.dtype
    lo = (-lam[:, 0]).clamp(min=0.0)
    hi = lo + g.norm(dim=-1) / delta

    def step(mu: Tensor) -> Tensor:
        den = lam + mu[:, None]
        return torch.where(den > 0, -g / torch.where(den > 0, den, 1.0), 0.0)

    newton = (lam[:, 0] > 0) & (step(torch.zeros_like(lo)).norm(dim=-1) <= delta)
    for _ in range(200):  # bisection, 2^-200 of the first bracket: to the last bit of mu
        mid = (lo + hi) / 2
        big = step(mid).norm(dim=-1) > delta
        lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
    y = step(torch.where(newton, torch.zeros((), dtype=dtype), hi))
    hard = ~newton & (lam[:, 0] <= 0) & (y.norm(dim=-1) < 0.99 * delta)
    top = (delta.square() - y[:, 1:].square().sum(-1)).clamp(min=0.0).sqrt()
    y[:, 0] = torch.where(hard, torch.where(g[:, 0] > 0, -top, top), y[:, 0])
    return y


def trust_region_descent(arch: str | Arch, params: dict[str, Tensor], teacher: dict[str, Tensor], output: str,
                         steps: int = 200, tol: float = 1e-14, radius: float = 0.1,
                         balance: bool = True) -> CriticalPoint:
    """Descend :func:`population_loss` from a trained student to the local minimum below it,
    all seeds at once: a trust-region Newton method across the symmetry orbits.

    Unlike :func:`newton_critical_point`, which goes to the nearest critical point of any
    index, every accepted step lowers the loss, so the method follows a flat valley to its
    end, where a gradient method would take millions of steps, and it leaves a saddle
    along its negative curvature. Each step minimises the quadratic model
    g^T s + s^T H s / 2 over |s| <= radius in the complement of the listed symmetries
    (:func:`population_hessian`'s chart and basis), exactly, from the eigendecomposition of
    the reduced Hessian: s = -(H + mu I)^{-1} g with mu >= max(0, -lambda_min) the smallest
    that keeps |s| <= radius, found by bisection, plus a multiple of the lowest eigenvector
    in the "hard case" where g has no component along it (Nocedal & Wright 2006, Alg. 4.1
    and Thm. 4.1). A step is kept when the loss falls by at least a tenth of the model's
    prediction; the radius then grows (x2, up to 1e3 times its start) or shrinks (to a
    quarter of the step) as the model predicts well or badly. Differences of the loss
    below its round-off, ~1e-16 E[f*^2] (:func:`population_loss`), count as agreement.

    A seed stops at a local minimum, once |U^T g| <= tol * ||H||_2 (as in
    :func:`newton_critical_point`) and no eigenvalue of U^T H U is below -sqrt(tol) * ||H||_2,
    or after ``steps`` steps; ``gradient_norms`` records |U^T g| before each step. Where the
    loss has no Hessian (a unit shrinking to 0, a dead unit) convergence is slow, and the
    gradient norms show it. With ``balance`` (the default) every unit is rebalanced
    (:func:`balanced`, same f and loss) before each step, as in :func:`newton_critical_point`:
    without it a unit with a small output weight leaves the quadratic model poor along its
    rescaling orbit, and the radius, and progress, collapse (``sum_modified`` from a small
    init at d = 4: 200 steps without reaching the teacher, 24 with). One-layer
    architectures have nothing to balance.
    """
    arch = as_arch(arch)
    names = arch.params
    S = params[names[0]].shape[0]
    p = {nm: params[nm].detach().double().cpu() for nm in names}
    tea = {nm: w.detach().double().cpu() for nm, w in teacher.items()}
    blocks = _chart_blocks(arch, p)
    n = blocks[names[-1]].stop
    zero = {nm: torch.zeros_like(w) for nm, w in tea.items()}
    noise = 64 * torch.finfo(torch.float64).eps * population_loss(arch, zero, tea, output)  # round-off of the loss, (S,)
    delta = torch.full((S,), float(radius), dtype=torch.float64)
    active = torch.ones(S, dtype=torch.bool)
    norms = torch.full((S, steps + 1), math.nan, dtype=torch.float64)
    for k in range(steps + 1):
        if balance:
            p = balanced(arch, p, output)
        g, H = _gradient_and_hessian(arch, p, tea, output, blocks)
        G = [_symmetry_generators(arch, {nm: w[s] for nm, w in p.items()}, output, blocks, n) for s in range(S)]
        U = torch.stack([torch.linalg.svd(Gs, full_matrices=True).U[:, Gs.shape[1]:] for Gs in G])  # (S, n, n - r)
        lam, E = torch.linalg.eigh(U.mT @ H @ U)  # ascending, (S, n - r)
        gt = (E.mT @ U.mT @ g[..., None])[..., 0]  # the gradient in the eigenbasis
        gnorm = gt.norm(dim=-1)
        norms[active, k] = gnorm[active]
        top = lam.abs().amax(-1)
        active &= (gnorm > tol * top) | (lam[:, 0] < -math.sqrt(tol) * top)  # a saddle is left, not kept
        if k == steps or not active.any():
            break
        y = _trust_region_step(gt, lam, delta)  # (S, n - r), |y| <= delta
        model = (gt * y).sum(-1) + (lam * y.square()).sum(-1) / 2  # predicted change, <= 0
        x = torch.where(active[:, None], (U @ (E @ y[..., None]))[..., 0], 0.0)
        trial = _chart(arch, p, x, blocks)
        before, after = population_loss(arch, p, tea, output), population_loss(arch, trial, tea, output)
        rho = (after - before - noise) / (model - noise)  # -> 1 where both changes are round-off
        keep = active & (rho > 0.1)
        step = y.norm(dim=-1)
        delta = torch.where(rho < 0.25, step / 4, torch.where((rho > 0.75) & (step > 0.99 * delta),
                                                              (2 * delta).clamp(max=1e3 * radius), delta))
        p = {nm: torch.where(keep.view(-1, *[1] * (w.dim() - 1)), trial[nm], w) for nm, w in p.items()}
    return CriticalPoint(p, population_hessian(arch, p, teacher, output), norms)


def closest_unit_angle(arch: str | Arch, teacher: dict[str, Tensor]) -> Tensor:
    """The smallest angle, in degrees, between the incoming weights of two hidden units
    (columns of A = W1 (+ I)), per seed: (S,), float64. 0 for two parallel units; units
    with zero incoming weights are left out (inf when fewer than two remain)."""
    A = effective_first_layer(as_arch(arch), teacher).double()
    n = torch.linalg.vector_norm(A, dim=-2)  # (S, m)
    unit = A / torch.where(n > 0, n, 1.0)[..., None, :]
    cos = (unit.mT @ unit).clamp(-1.0, 1.0)  # (S, m, m)
    m = A.shape[-1]
    ok = (n[..., :, None] > 0) & (n[..., None, :] > 0) & ~torch.eye(m, dtype=torch.bool, device=A.device)
    angle = torch.rad2deg(torch.arccos(cos)).masked_fill(~ok, math.inf)
    return angle.flatten(-2).min(-1).values


def teacher_unit_coverage(arch: str | Arch, params: dict[str, Tensor], teacher: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """For every teacher hidden unit k, the largest cosine between its incoming weights a*_k
    and a student unit's a_j (columns of A = W1 (+ I)), and that student unit j, per seed:
    (S, m*) float64 and (S, m*) long. Direction only: unchanged by permuting or positively
    rescaling the student's units. A teacher unit that no student unit lines up with (cosine
    well below 1) is the one a stalled student has left out, merged into a neighbour
    (``notes/teacher_student_findings.md``); j then names the student unit that covers it
    together with its neighbour. A zero column has cosine 0 with everything."""
    arch = as_arch(arch)

    def directions(A: Tensor) -> Tensor:
        n = torch.linalg.vector_norm(A, dim=-2)
        return A / torch.where(n > 0, n, 1.0)[..., None, :]

    cos = directions(effective_first_layer(arch, params).double()).mT @ directions(effective_first_layer(arch, teacher).double())
    best = cos.max(-2)  # over the student's units: cos is (S, m, m*)
    return best.values, best.indices


# --------------------------------------------------------------------------- summary


def _within(v: np.ndarray, tol: float) -> np.ndarray:
    """v <= tol, False where v is not finite (a diverged seed fails every verdict)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(v) & (v <= tol)


def seed_outcomes(traj: Trajectory, fit_tol: float, recover_tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per seed, (S,) each: the final train loss / Var(y), whether it fits (<= ``fit_tol``)
    and whether it is recovered up to symmetry (aligned distance / the zero student's <=
    ``recover_tol``): :func:`summarize`'s per-seed verdicts."""
    tiny = np.finfo(float).tiny
    rel_train = traj.train_loss[:, -1] / np.maximum(traj.label_variance, tiny)
    rel_aligned = traj.aligned_distance[:, -1] / np.maximum(traj.teacher_aligned_norm, tiny)
    alive = ~_diverged(traj)
    return rel_train, _within(rel_train, fit_tol) & alive, _within(rel_aligned, recover_tol) & alive


def _diverged(traj: Trajectory) -> np.ndarray:
    """(S,) the seeds whose final loss or distance is not finite: they fail every verdict."""
    return ~np.isfinite(traj.train_loss[:, -1]) | ~np.isfinite(traj.distance[:, -1])


def closest_angle_by_fit(angle: np.ndarray, fits: np.ndarray) -> dict:
    """Do the seeds that fail to fit have teachers with closer hidden units? The median
    closest-unit angle (degrees) of the seeds that fit and of those that do not, and the
    two-sided Mann-Whitney U test's p-value (None unless each group has 3 or more seeds)."""
    from scipy.stats import mannwhitneyu

    angle, fits = np.asarray(angle, dtype=float), np.asarray(fits, dtype=bool)
    a, b = angle[fits], angle[~fits]
    return {"fit_median": float(np.median(a)) if len(a) else None,
            "not_fit_median": float(np.median(b)) if len(b) else None,
            "p_value": float(mannwhitneyu(a, b, alternative="two-sided").pvalue) if min(len(a), len(b)) >= 3 else None}


def summarize(traj: Trajectory, fit_tol: float, recover_tol: float) -> dict:
    """Final numbers of one architecture, means (and sample sds, ``*_std``) over seeds, with verdicts.
    ``*_geomean`` and ``*_gsd`` are the geometric mean and geometric sd over seeds
    (:func:`.stats.geometric_spread`, nan for one seed; what the figures draw: losses and
    distances span orders of magnitude across seeds).

    fits: final train loss / Var(y) <= fit_tol (Var(y) is the loss of the best constant,
    so this is 1 - R^2). recovered: distance / sum ||W*||_F <= recover_tol.
    recovered_up_to_symmetry: aligned distance / teacher_aligned_norm <= recover_tol.
    A verdict holds when it holds for the mean over seeds; ``*_seeds`` count the seeds
    for which it holds on their own. Diverged seeds (non-finite loss) count as
    failures and make the means null. ``fits_not_recovered`` lists the seeds that fit but
    are not recovered up to symmetry, each with its relative train and population losses,
    relative aligned distance and the angle between its teacher's two closest hidden units;
    ``recovered_not_fit`` the seeds recovered up to symmetry whose loss is still above
    ``fit_tol`` (the two thresholds are on different scales: a loss falls like a distance
    squared, so a student within ``recover_tol`` of its teacher need not fit yet).
    """
    final = lambda a: a[:, -1]  # noqa: E731
    rel_train = final(traj.train_loss) / np.maximum(traj.label_variance, np.finfo(float).tiny)
    rel_population = final(traj.population_loss) / np.maximum(traj.label_variance, np.finfo(float).tiny)
    rel_dist = final(traj.distance) / np.maximum(traj.teacher_norm, np.finfo(float).tiny)
    rel_aligned = final(traj.aligned_distance) / np.maximum(traj.teacher_aligned_norm, np.finfo(float).tiny)
    diverged = _diverged(traj)

    ok = _within
    def mean(v):
        return float(np.mean(v))

    def std(v):
        return seed_sd(v)

    out = {"seeds": len(traj.seeds), "steps": int(traj.steps[-1])}
    for key, arr in (("train_loss", final(traj.train_loss)), ("test_loss", final(traj.test_loss)),
                     ("population_loss", final(traj.population_loss)), ("relative_population_loss", rel_population),
                     ("distance", final(traj.distance)), ("aligned_distance", final(traj.aligned_distance)),
                     ("relative_train_loss", rel_train), ("relative_distance", rel_dist),
                     ("relative_aligned_distance", rel_aligned)):
        out[f"{key}_final"] = mean(arr)
        out[f"{key}_final_std"] = std(arr)
        geo = geometric_spread(arr) if np.all(np.isfinite(arr)) else (None, None)
        out[f"{key}_final_geomean"], out[f"{key}_final_gsd"] = geo
    out["distance_initial"] = mean(traj.distance[:, 0])
    out["aligned_distance_initial"] = mean(traj.aligned_distance[:, 0])
    out["fits"] = bool(ok(np.mean(rel_train), fit_tol))
    out["recovered"] = bool(ok(np.mean(rel_dist), recover_tol))
    out["recovered_up_to_symmetry"] = bool(ok(np.mean(rel_aligned), recover_tol))
    _, fits, near = seed_outcomes(traj, fit_tol, recover_tol)
    recovered = ok(rel_dist, recover_tol) & ~diverged
    out["fits_seeds"] = int(fits.sum())
    out["recovered_seeds"] = int(recovered.sum())
    out["recovered_up_to_symmetry_seeds"] = int(near.sum())
    out["diverged_seeds"] = int(diverged.sum())
    odd = np.flatnonzero(fits & ~near)
    out["fits_not_recovered"] = [
        {"seed": int(traj.seeds[i]), "relative_train_loss": float(rel_train[i]),
         "relative_population_loss": float(rel_population[i]), "relative_aligned_distance": float(rel_aligned[i]),
         "teacher_closest_angle_deg": float(traj.teacher_closest_angle[i])}
        for i in odd
    ]
    out["recovered_not_fit"] = [
        {"seed": int(traj.seeds[i]), "relative_train_loss": float(rel_train[i]),
         "relative_aligned_distance": float(rel_aligned[i])} for i in np.flatnonzero(near & ~fits)
    ]
    out["closest_angle"] = closest_angle_by_fit(traj.teacher_closest_angle, fits)
    out["thresholds"] = {
        "fit": f"train_loss / Var(y) <= {fit_tol:g}",
        "recover": f"distance / sum ||W*||_F (the zero student's distance) <= {recover_tol:g}",
        "recover_up_to_symmetry": f"aligned_distance / (aligned distance of the zero student) <= {recover_tol:g}",
        "fit_tol": fit_tol,
        "recover_tol": recover_tol,
    }
    return out
