"""Layer 4, analysis: how far a teacher-student student is from its teacher, and the
verdicts of a run (the models are :mod:`orthogonal_skip_connections.models.teacher_student`,
the loop that trains them :mod:`orthogonal_skip_connections.train.teacher_student`).

Recovery is measured twice: ``distance`` = sum over weight matrices of ||W - W*||_F,
and ``aligned_distance``, which first divides out the symmetries that leave f
unchanged: hidden units can be permuted (Hungarian matching, Kuhn 1955, via
``scipy.optimize.linear_sum_assignment``) and, where an output layer follows, each unit
can be rescaled by c > 0 (a -> c a, v -> v / c) because ReLU is positively
homogeneous; with ``output="sum"`` only the row sums W2 1 of W2 (and the column sums
1^T Q of Q) reach the output.

Whether a student computes the teacher's function, not only on the training sample, is
measured exactly by :func:`population_loss`: E ||f(x) - f*(x)||^2 over x ~ N(0, I_d) in
closed form (the degree-1 arc-cosine kernel), the limit of the test loss as n_test grows.
:func:`closest_unit_angle` gives the smallest angle between two of the teacher's hidden units:
two near-collinear teacher units leave the loss almost flat along the directions that
tell them apart (``notes/teacher_student_findings.md``, finding 3).

A run's final numbers, means and spreads over seeds with their verdicts (fits, recovered,
recovered up to symmetry), come from :func:`summarize`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..models.teacher_student import Arch, as_arch, effective_first_layer, output_weights, skip_weights

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
    "closest_unit_angle",
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


def relu_kernel(A: Tensor, B: Tensor) -> Tensor:
    """E[ReLU(a^T x) ReLU(b^T x)] over x ~ N(0, I_d) for every column a of A and b of B:
    (..., d, m), (..., d, n) -> (..., m, n).

    Half the arc-cosine kernel of degree 1 (Cho & Saul 2009, eq. 6):
    |a| |b| (sin t + (pi - t) cos t) / (2 pi), t the angle between a and b; |a|^2 / 2 at
    t = 0. 0 where a or b is 0. For values, not gradients: the kernel is C^1 but not C^2
    at t = 0, and autograd's chain through arccos gives nan at exactly parallel columns."""
    na, nb = torch.linalg.vector_norm(A, dim=-2), torch.linalg.vector_norm(B, dim=-2)  # (..., m), (..., n)
    nn_ = na[..., :, None] * nb[..., None, :]
    cos = torch.where(nn_ > 0, (A.mT @ B) / torch.where(nn_ > 0, nn_, 1.0), 0.0).clamp(-1.0, 1.0)
    t = torch.arccos(cos)
    return nn_ * (torch.sin(t) + (math.pi - t) * cos) / (2 * math.pi)


def population_loss(arch: str | Arch, params: dict[str, Tensor], teacher: dict[str, Tensor], output: str) -> Tensor:
    """E ||f(x) - f*(x)||^2 / k over x ~ N(0, I_d), exactly, per seed: (S,), float64.

    The loss of :func:`~orthogonal_skip_connections.models.teacher_student.mse` (mean over
    the k output entries) on infinitely many fresh inputs. f - f* is itself one network,
    out = V^T ReLU(A^T x) + U x with the units of both (A = [A_s, A*], V = [V_s; -V*]) and
    U the difference of the linear skips (Q or 1^T Q; the shared + x cancels), so

        E ||out||^2 = tr(V^T K V) + sum(V^T * (U A)) + ||U||_F^2,

    K = :func:`relu_kernel` (A, A), and E[ReLU(a^T x) x] = a / 2 (Stein's lemma) for the
    cross term. The three terms cancel to the round-off of float64 (~1e-16 E||f*||^2) when
    the student is the teacher up to symmetry; clamped at 0.
    """
    arch = as_arch(arch)
    A = torch.cat([effective_first_layer(arch, params), effective_first_layer(arch, teacher)], -1).double()
    V = torch.cat([output_weights(arch, params, output), -output_weights(arch, teacher, output)], -2).double()
    sq = (V * (relu_kernel(A, A) @ V)).sum((-2, -1))
    if "Q" in params:
        U = (skip_weights(arch, params, output) - skip_weights(arch, teacher, output)).double()  # (S, k, d)
        sq = sq + (V.mT * (U @ A)).sum((-2, -1)) + U.square().sum((-2, -1))
    return sq.clamp(min=0.0) / V.shape[-1]


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


# --------------------------------------------------------------------------- summary


def summarize(traj: Trajectory, fit_tol: float, recover_tol: float) -> dict:
    """Final numbers of one architecture, means (and std) over seeds, with verdicts.
    ``*_geomean`` and ``*_gsd`` are the geometric mean and geometric std over seeds (what
    the figures draw: losses and distances span orders of magnitude across seeds).

    fits: final train loss / Var(y) <= fit_tol (Var(y) is the loss of the best constant,
    so this is 1 - R^2). recovered: distance / sum ||W*||_F <= recover_tol.
    recovered_up_to_symmetry: aligned distance / teacher_aligned_norm <= recover_tol.
    A verdict holds when it holds for the mean over seeds; ``*_seeds`` count the seeds
    for which it holds on their own. Diverged seeds (non-finite loss) count as
    failures and make the means null. ``fits_not_recovered`` lists the seeds that fit but
    are not recovered up to symmetry, each with its relative train and population losses,
    relative aligned distance and the angle between its teacher's two closest hidden units.
    """
    final = lambda a: a[:, -1]  # noqa: E731
    rel_train = final(traj.train_loss) / np.maximum(traj.label_variance, np.finfo(float).tiny)
    rel_population = final(traj.population_loss) / np.maximum(traj.label_variance, np.finfo(float).tiny)
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

    def geo(v):  # geometric mean and geometric std over seeds, the statistic of the figures (plots.band)
        logs = np.log(np.clip(np.asarray(v, dtype=float), 1e-300, None))
        return float(np.exp(logs.mean())), float(np.exp(logs.std()))

    out = {"seeds": len(traj.seeds), "steps": int(traj.steps[-1])}
    for key, arr in (("train_loss", final(traj.train_loss)), ("test_loss", final(traj.test_loss)),
                     ("population_loss", final(traj.population_loss)), ("relative_population_loss", rel_population),
                     ("distance", final(traj.distance)), ("aligned_distance", final(traj.aligned_distance)),
                     ("relative_train_loss", rel_train), ("relative_distance", rel_dist),
                     ("relative_aligned_distance", rel_aligned)):
        out[f"{key}_final"] = mean(arr)
        out[f"{key}_final_std"] = std(arr)
        out[f"{key}_final_geomean"], out[f"{key}_final_gsd"] = geo(arr) if np.all(np.isfinite(arr)) else (None, None)
    out["distance_initial"] = mean(traj.distance[:, 0])
    out["aligned_distance_initial"] = mean(traj.aligned_distance[:, 0])
    out["fits"] = bool(ok(np.mean(rel_train), fit_tol))
    out["recovered"] = bool(ok(np.mean(rel_dist), recover_tol))
    out["recovered_up_to_symmetry"] = bool(ok(np.mean(rel_aligned), recover_tol))
    out["fits_seeds"] = int(ok(rel_train, fit_tol).sum())
    out["recovered_seeds"] = int(ok(rel_dist, recover_tol).sum())
    out["recovered_up_to_symmetry_seeds"] = int(ok(rel_aligned, recover_tol).sum())
    out["diverged_seeds"] = int(diverged.sum())
    odd = np.flatnonzero(ok(rel_train, fit_tol) & ~ok(rel_aligned, recover_tol))
    out["fits_not_recovered"] = [
        {"seed": int(traj.seeds[i]), "relative_train_loss": float(rel_train[i]),
         "relative_population_loss": float(rel_population[i]), "relative_aligned_distance": float(rel_aligned[i]),
         "teacher_closest_angle_deg": float(traj.teacher_closest_angle[i])}
        for i in odd
    ]
    out["thresholds"] = {
        "fit": f"train_loss / Var(y) <= {fit_tol:g}",
        "recover": f"distance / sum ||W*||_F <= {recover_tol:g}",
        "recover_up_to_symmetry": f"aligned_distance / (aligned distance of the zero student) <= {recover_tol:g}",
        "fit_tol": fit_tol,
        "recover_tol": recover_tol,
    }
    return out
