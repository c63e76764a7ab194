"""Pure tensor maths on the orthogonal group O(n). No nn.Module lives here.

Every function accepts a stack of matrices, shape ``(..., n, n)``, and works on
each matrix of the stack independently. Names follow the papers they come from:

- polar factor, QR factor and the Newton-Schulz polar iteration (projections onto O(n));
- Cayley map and matrix exponential (maps from skew-symmetric matrices onto SO(n));
- ``sharp`` and the steepest-descent step on O(n) under the spectral norm
  (Bernstein & Newhouse, "modula" docs, section "orthogonal manifold");
- orthogonal Procrustes (Schoenemann 1966);
- Haar sampling (Mezzadri 2007, "How to generate random matrices from the classical
  compact groups").
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
from torch import Tensor

__all__ = [
    "RETRACTED_METHODS",
    "PARAMETRIZED_METHODS",
    "ORTH_METHODS",
    "DEFAULT_METHOD",
    "ORTH_INITS",
    "retract",
    "check_square",
    "one_thread",
    "householder_wy",
    "eye_like",
    "skew",
    "safe_svd",
    "polar",
    "qr_orthogonal",
    "newton_schulz",
    "cayley",
    "expm",
    "sharp",
    "tangent_gradient",
    "steepest_step",
    "procrustes",
    "orth_error",
    "identity_distance",
    "identity_distance_spectral",
    "haar_orthogonal",
]


def check_square(A: Tensor, name: str = "matrix", n: int | None = None) -> None:
    """Raise ValueError unless ``A`` has shape (..., n, n) (and the given n, if any)."""
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        want = f"(..., {n}, {n})" if n is not None else "(..., n, n)"
        raise ValueError(f"{name} must be square with shape {want}; got {tuple(A.shape)}")
    if n is not None and A.shape[-1] != n:
        raise ValueError(f"{name} must have shape (..., {n}, {n}); got {tuple(A.shape)}")


def _eps(A: Tensor) -> float:
    return torch.finfo(A.dtype).eps


@contextlib.contextmanager
def one_thread(enabled: bool = True):
    """Run the block on one CPU thread (restoring the count after).

    Measured on a 2-core machine with torch 2.14: a float32 SVD of three 32 x 32 matrices
    took 0.7 ms on one thread and 30-200 ms on two whenever the other core was busy
    (OpenMP threads spinning against each other); small matmuls suffer alike. For the
    small matrices of this module one thread is as fast as two on a quiet machine anyway.
    """
    threads = torch.get_num_threads()
    if not enabled or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _is_small_cpu(A) -> bool:
    return isinstance(A, Tensor) and A.device.type == "cpu" and A.shape[-1] <= 512


def single_threaded(fn):
    """Decorator: :func:`one_thread` when the first argument is a small CPU tensor."""

    @functools.wraps(fn)
    def wrapper(A, *args, **kwargs):
        with one_thread(_is_small_cpu(A)):
            return fn(A, *args, **kwargs)

    return wrapper


def eye_like(A: Tensor) -> Tensor:
    """Identity matrices with the shape, dtype and device of ``A`` (..., n, n)."""
    n = A.shape[-1]
    return torch.eye(n, dtype=A.dtype, device=A.device).expand(A.shape)


def skew(A: Tensor) -> Tensor:
    """Skew-symmetric part (A - A^T) / 2."""
    return 0.5 * (A - A.mT)


@single_threaded
def safe_svd(A: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Reduced SVD ``A = U diag(S) Vh`` with a float64 retry.

    ``torch.linalg.svd`` in float32 occasionally fails to converge on finite,
    well-conditioned matrices with some LAPACK builds; retrying in float64 is
    cheap at our sizes and always succeeds on finite input.
    """
    if not torch.is_floating_point(A):
        raise TypeError(f"SVD needs a floating-point tensor; got {A.dtype}")
    try:
        U, S, Vh = torch.linalg.svd(A, full_matrices=False)
        if A.dtype == torch.float64 or bool(torch.isfinite(S).all()):
            return U, S, Vh
    except RuntimeError:  # torch.linalg.LinAlgError is a RuntimeError
        if A.dtype == torch.float64:
            raise
    if not bool(torch.isfinite(A).all()):
        raise ValueError("cannot take the SVD of a matrix with non-finite entries")
    U, S, Vh = torch.linalg.svd(A.double(), full_matrices=False)
    return U.to(A.dtype), S.to(A.dtype), Vh.to(A.dtype)


# --------------------------------------------------------------------------- projections


@single_threaded
def polar(A: Tensor) -> Tensor:
    """Orthogonal polar factor U V^T of A = U S V^T: the nearest orthogonal matrix in
    Frobenius (and spectral) norm. Unique when A is invertible."""
    check_square(A)
    U, _, Vh = safe_svd(A)
    return U @ Vh


@single_threaded
def qr_orthogonal(A: Tensor) -> Tensor:
    """Q of A = QR with the signs fixed so that diag(R) >= 0.

    With that convention the map A -> Q is continuous on invertible matrices and
    returns Q itself for an orthogonal Q (its R is then the identity)."""
    check_square(A)
    Q, R = torch.linalg.qr(A)
    d = torch.diagonal(R, dim1=-2, dim2=-1)
    signs = torch.where(d < 0, -torch.ones_like(d), torch.ones_like(d))
    return Q * signs.unsqueeze(-2)


@single_threaded
def newton_schulz(
    A: Tensor, max_steps: int = 100, tol: float | None = None, return_steps: bool = False
):
    """Polar factor by the cubic Newton-Schulz iteration X <- 1.5 X - 0.5 X X^T X.

    The input is first divided by an upper bound on its spectral norm, so every
    singular value lies in (0, 1]; the cubic map sends each singular value towards
    1 (quadratically near 1), so the iteration converges to the polar factor of any
    invertible A (Higham, "Functions of Matrices", 8.3). It stops when
    ||X^T X - I||_F <= tol for every matrix of the batch (default: 4 n eps, the
    round-off floor of the check itself), when that error stops decreasing, or
    after ``max_steps``. Unlike Muon's quintic coefficients, which only push
    singular values into a band around 1, this is an exact projection.
    Rank-deficient input has no orthogonal polar factor; use ``polar`` for it.
    """
    check_square(A)
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1; got {max_steps}")
    n = A.shape[-1]
    tol = 4 * n * _eps(A) if tol is None else tol
    fro = torch.linalg.matrix_norm(A, ord="fro", keepdim=True)
    # sqrt(||A||_1 ||A||_inf) is another upper bound on ||A||_2, often tighter.
    one_inf = torch.sqrt(
        torch.linalg.matrix_norm(A, ord=1, keepdim=True)
        * torch.linalg.matrix_norm(A, ord=math.inf, keepdim=True)
    )
    scale = torch.minimum(fro, one_inf).clamp_min(torch.finfo(A.dtype).tiny)
    X = A / scale
    I = eye_like(X)
    best = math.inf
    steps = 0
    for steps in range(1, max_steps + 1):
        XtX = X.mT @ X
        err = float(torch.linalg.matrix_norm(XtX - I).max())
        if err <= tol or err >= best:  # converged, or stalled at round-off
            steps -= 1
            break
        best = err
        X = 1.5 * X - 0.5 * (X @ XtX)
    return (X, steps) if return_steps else X


# --------------------------------------------------------------------------- maps from so(n)


def householder_wy(X: Tensor) -> Tensor:
    """Q = H_1 H_2 ... H_n, H_i = I - tau_i v_i v_i^T, from the strictly lower triangle of X:
    v_i = e_i + (column i of X below the diagonal) and tau_i = 2 / v_i^T v_i (so each H_i is
    a reflection), i.e. ``torch.linalg.householder_product(X.tril(-1), tau)`` as torch's
    orthogonal parametrization calls it; (..., n, n).

    Computed in compact WY form, Q = I - V T^{-1} V^T with V = I + tril(X, -1) and
    T = striu(V^T V) + diag(V^T V) / 2 (Joffrain, Low, Quintana-Orti and van de Geijn 2006,
    "Accumulating Householder transformations, revisited", thm 1): three matrix products
    and a triangular solve, whose backward is as cheap, where the product of n reflectors
    and its backward take O(n) small steps each."""
    check_square(X, "X")
    eye = eye_like(X)
    V = X.tril(-1) + eye
    M = V.mT @ V
    T = M.triu(1) + torch.diag_embed(0.5 * M.diagonal(dim1=-2, dim2=-1))
    return eye - V @ torch.linalg.solve_triangular(T, V.mT, upper=True)


@single_threaded
def cayley(A: Tensor) -> Tensor:
    """Cayley map Q = (I - A/2)^(-1) (I + A/2) of a skew-symmetric A; Q is in SO(n).

    The halves make it agree with exp(A) up to second order."""
    check_square(A)
    I = eye_like(A)
    return torch.linalg.solve(I - 0.5 * A, I + 0.5 * A)


def expm(A: Tensor) -> Tensor:
    """Matrix exponential; for skew-symmetric A the result is in SO(n)."""
    check_square(A)
    return torch.linalg.matrix_exp(A)


# --------------------------------------------------------------------------- manifold steps


@single_threaded
def sharp(M: Tensor, rtol: float | None = None) -> tuple[Tensor, Tensor]:
    """Dual map of the spectral norm: sharp(M) = U V^T over the non-zero singular values.

    Returns ``(sharp(M), S)`` with the singular values S (descending). Singular values
    at most ``rtol * max(S)`` count as zero (default rtol: n eps). For M = 0 the
    result is 0.
    """
    check_square(M)
    U, S, Vh = safe_svd(M)
    rtol = M.shape[-1] * _eps(M) if rtol is None else rtol
    keep = S > rtol * S[..., :1]
    return (U * keep.unsqueeze(-2).to(U.dtype)) @ Vh, S


def tangent_gradient(W: Tensor, G: Tensor) -> Tensor:
    """Riemannian gradient on O(n) under the embedded metric: W skew(W^T G)."""
    return W @ skew(W.mT @ G)


@single_threaded
def steepest_step(W: Tensor, G: Tensor, eta: float, rtol: float | None = None) -> Tensor:
    """One steepest-descent step on O(n) under the spectral norm (modula docs,
    "orthogonal manifold").

    X = sharp(W^T G - G^T W) is the unit-spectral-norm skew direction of steepest
    descent. If that skew matrix has full rank, X is orthogonal and skew, so
    X^T X = I and X + X^T = 0, hence (I - eta X)^T (I - eta X) = (1 + eta^2) I and

        W <- W (I - eta X) / sqrt(1 + eta^2)

    stays on O(n) exactly. Otherwise (always for odd n, where a skew matrix is
    singular) W <- polar(W (I - eta X)).

    Branch tolerance: the polar factor of A is perturbed by about eps * ||A|| / s_min(A)
    (Higham, "Functions of Matrices", thm 8.9), so the first branch is taken only when
    s_min > sqrt(eps) s_max, which bounds X's departure from O(n) by ~sqrt(eps). One
    Newton-Schulz polishing step, X <- 1.5 X - 0.5 X X^T X, then squares whatever
    error remains (from either branch), so round-off never accumulates over steps.
    A zero gradient leaves W unchanged.
    """
    check_square(W, "W")
    if G.shape != W.shape:
        raise ValueError(f"G must have the shape of W, {tuple(W.shape)}; got {tuple(G.shape)}")
    A = W.mT @ G - G.mT @ W  # skew, (..., n, n)
    X, S = sharp(A)
    X = skew(X)  # exact skew-symmetry; sharp of a skew matrix is skew up to round-off
    rtol = math.sqrt(_eps(W)) if rtol is None else rtol
    full_rank = S[..., -1] > rtol * S[..., 0]  # (...,)
    step = W - eta * (W @ X)  # W (I - eta X)
    if bool(full_rank.all()):
        W_new = step / math.sqrt(1.0 + eta * eta)
    elif not bool(full_rank.any()):
        W_new = polar(step)
    else:
        mask = full_rank[..., None, None]
        W_new = torch.where(mask, step / math.sqrt(1.0 + eta * eta), polar(step))
    zero_grad = (S[..., 0] == 0)[..., None, None]
    W_new = torch.where(zero_grad, W, W_new)
    return 1.5 * W_new - 0.5 * W_new @ (W_new.mT @ W_new)


# --------------------------------------------------------------------------- retractions
# The one definition of the ways a matrix is kept on O(n); skips, optim and the apps read
# these names. Retracted methods move W by a Euclidean-gradient step, then map back onto
# O(n) (``retract``); parametrized ones write W = B phi(A) through torch's
# ``parametrizations.orthogonal`` (their torch names: ``TORCH_MAPS``).

RETRACTED_METHODS = ("steepest", "svd", "qr", "newton_schulz")
PARAMETRIZED_METHODS = ("cayley", "exp", "householder")
ORTH_METHODS = RETRACTED_METHODS + PARAMETRIZED_METHODS
DEFAULT_METHOD = "steepest"
ORTH_INITS = ("identity", "haar")
TORCH_MAPS = {"cayley": "cayley", "exp": "matrix_exp", "householder": "householder"}


def retract(method: str, W: Tensor, G: Tensor, eta: float, ns_steps: int = 100) -> Tensor:
    """One retracted step from W along -G with step size eta; (..., n, n) batched.

    ``steepest``: the spectral-norm steepest step of length eta (:func:`steepest_step`);
    ``svd`` / ``qr`` / ``newton_schulz``: the Riemannian-gradient step
    W - eta W skew(W^T G) (Absil et al. 2008, sec. 3.6) mapped back onto O(n) by the
    polar factor, the Q factor or ``ns_steps`` Newton-Schulz iterations."""
    if method == "steepest":
        return steepest_step(W, G, eta)
    if method not in RETRACTED_METHODS:
        raise ValueError(f"unknown retraction {method!r}; allowed: {', '.join(RETRACTED_METHODS)}")
    W_step = W - eta * tangent_gradient(W, G)
    if method == "svd":
        return polar(W_step)
    if method == "qr":
        return qr_orthogonal(W_step)
    return newton_schulz(W_step, max_steps=ns_steps)


# --------------------------------------------------------------------------- fits and measures


@single_threaded
def procrustes(X: Tensor, Y: Tensor) -> tuple[Tensor, Tensor]:
    """Orthogonal Procrustes: the orthogonal Q minimising ||Y - X Q^T||_F.

    X, Y: (..., N, d) rows are samples, so each row y ~ Q x. Q = polar(Y^T X)
    (Schoenemann 1966). Returns ``(Q, relative_residual)`` with
    relative_residual = ||Y - X Q^T||_F / ||Y||_F (0 when Y = 0 and the fit is exact).
    """
    if X.shape != Y.shape or X.ndim < 2:
        raise ValueError(
            f"X and Y must both have shape (..., N, d); got {tuple(X.shape)} and {tuple(Y.shape)}"
        )
    Q = polar(Y.mT @ X)  # (..., d, d)
    resid = torch.linalg.matrix_norm(Y - X @ Q.mT)
    denom = torch.linalg.matrix_norm(Y)
    rel = torch.where(denom > 0, resid / denom.clamp_min(torch.finfo(Y.dtype).tiny), resid)
    return Q, rel


def orth_error(W: Tensor) -> Tensor:
    """||W^T W - I||_F, zero exactly on O(n)."""
    check_square(W, "W")
    return torch.linalg.matrix_norm(W.mT @ W - eye_like(W))


def identity_distance(W: Tensor) -> Tensor:
    """||W - I||_F."""
    check_square(W, "W")
    return torch.linalg.matrix_norm(W - eye_like(W))


def identity_distance_spectral(W: Tensor) -> Tensor:
    """||W - I||_2 (largest singular value of W - I)."""
    check_square(W, "W")
    return torch.linalg.matrix_norm(W - eye_like(W), ord=2)


def haar_orthogonal(
    n: int,
    *batch: int,
    generator: torch.Generator | None = None,
    special: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Haar-distributed orthogonal matrices, shape (*batch, n, n).

    QR of a Gaussian matrix with diag(R) > 0 is Haar on O(n) (Mezzadri 2007).
    With ``special=True`` (default) the result is Haar on SO(n): matrices with
    det = -1 get their first column negated, a measure-preserving bijection
    between the two components of O(n).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    gen_device = generator.device if generator is not None else device
    Z = torch.randn(*batch, n, n, generator=generator, dtype=torch.float64, device=gen_device)
    Q = qr_orthogonal(Z)
    if special:
        det = torch.linalg.det(Q)
        flip = torch.ones_like(Q[..., 0, :])
        flip[..., 0] = torch.where(det < 0, -1.0, 1.0)
        Q = Q * flip.unsqueeze(-2)
    return Q.to(dtype=dtype, device=device if device is not None else Q.device)
