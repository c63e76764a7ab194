"""Pure tensor maths on the orthogonal group O(n). No nn.Module lives here.

Every function accepts a stack of matrices, shape ``(..., n, n)``, and works on
each matrix of the stack independently. Names follow the papers they come from:

- polar factor, QR factor and the Newton-Schulz polar iteration (projections onto O(n));
- the same projections from matrix products alone, with no host synchronisation (the
  scaled Newton-Schulz iteration of Chen & Chow 2014 and shifted CholeskyQR3), which the retractions
  use on GPUs, where batched SVDs are slow (see ``RETRACTION_IMPLS``);
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
    "RETRACTION_IMPLS",
    "retract",
    "resolve_impl",
    "ns_schedule",
    "scaled_newton_schulz",
    "msign",
    "polar_matmul",
    "cholesky_qr",
    "check_square",
    "one_thread",
    "solve_safe",
    "slogdet_safe",
    "householder_wy",
    "eye_like",
    "skew",
    "safe_svd",
    "NonFiniteError",
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


# The products-only retractions run on GPUs, where a retraction step is bound by the host's
# calls, not by the kernels of these small matrices (one call is several microseconds; a
# 64 x 64 product, less). ``@`` on stacks is ``matmul``, which expands, reshapes and views
# around its ``bmm`` (about ten dispatcher calls); ``bmm`` and ``baddbmm`` are one each.
def _mm(A: Tensor, B: Tensor) -> Tensor:
    """A @ B for (..., n, n) stacks of one shape: one ``bmm`` for a 3-D stack."""
    return torch.bmm(A, B) if A.ndim == 3 and B.ndim == 3 else A @ B


def _ns_polish(X: Tensor, XtX: Tensor | None = None, fused: bool = True) -> Tensor:
    """One Newton-Schulz step 1.5 X - 0.5 X (X^T X), with ``XtX`` = X^T X if the caller has
    it. ``fused``: one ``baddbmm`` for a 3-D stack (the products-only code: one call);
    otherwise the plain expression, which the factoring code (``newton_schulz``,
    ``steepest_step``'s ``factor``) has always used: float64 rounds the two differently."""
    if XtX is None:
        XtX = _mm(X.mT, X)
    if fused and X.ndim == 3:
        return torch.baddbmm(X, X, XtX, beta=1.5, alpha=-0.5)
    return 1.5 * X - 0.5 * X @ XtX


def one_thread(enabled: bool = True):
    """A context manager: run the block on one CPU thread (restoring the count after).

    Measured on a 2-core machine with torch 2.14: a float32 SVD of three 32 x 32 matrices
    took 0.7 ms on one thread and 30-200 ms on two whenever the other core was busy
    (OpenMP threads spinning against each other); small matmuls suffer alike. For the
    small matrices of this module one thread is as fast as two on a quiet machine anyway.
    Under torch.compile the block is traced as plain code (a thread switch is no graph
    operation: dynamo would leave the whole calling frame eager), and the compiled code
    runs with the process's threads. A plain function returning ``nullcontext()`` there, not
    a generator context manager: the dynamo of torch 2.4 and 2.5.1 does not trace one (it
    left the calling frame eager, 0 graphs; 2.11 and 2.14 trace it), nor the compiled
    retraction in one graph (3 to 18; notes/versions.md).
    """
    # before any other torch call: dynamo traces is_compiling() as a constant
    if not enabled or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    threads = torch.get_num_threads()
    return contextlib.nullcontext() if threads == 1 else _threads_set_to_one(threads)


@contextlib.contextmanager
def _threads_set_to_one(threads: int):
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


# Batched LU factorisations on the CPU go wrong silently after any torch.set_num_threads call
# (which one_thread makes, and the apps' num_threads): torch hands the matrices of a stack to
# several threads, and MKL's getrf then returns wrong factors for n above ~150 (pytorch
# issues #141358, #142815; measured with torch 2.14.1 and 2.11: a 153 x 153 stack already
# gave wrong determinants, 512 x 512 an "Intel oneMKL ERROR ... SLASWP" and a refused solve).
# One matrix at a time is correct (and keeps MKL's own threads within each matrix); so are
# QR, SVD, eigh, Cholesky, matrix_exp and lu_solve of a stack, and solve with one A.
_LU_STACK_SAFE_N = 128


def _lu_stack_at_risk(A: Tensor, batch: torch.Size) -> bool:
    return A.device.type == "cpu" and A.shape[-1] > _LU_STACK_SAFE_N and batch.numel() > 1


def solve_safe(A: Tensor, B: Tensor) -> Tensor:
    """``torch.linalg.solve(A, B)`` for A (..., n, n), B (..., n, k), differentiable, with a
    stack of large CPU matrices A factored one matrix at a time (see above)."""
    batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    if A.ndim == 2 or not _lu_stack_at_risk(A, batch):
        return torch.linalg.solve(A, B)
    A_ = A.expand(*batch, *A.shape[-2:]).reshape(-1, *A.shape[-2:])
    B_ = B.expand(*batch, *B.shape[-2:]).reshape(-1, *B.shape[-2:])
    X = torch.stack([torch.linalg.solve(a, b) for a, b in zip(A_, B_)])
    return X.reshape(*batch, *B.shape[-2:])


def slogdet_safe(A: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.slogdet(A)`` (sign, log|det|), shape (...,) each, with a stack of large
    CPU matrices factored one matrix at a time (see above)."""
    if not _lu_stack_at_risk(A, A.shape[:-2]):
        return tuple(torch.linalg.slogdet(A))
    parts = [torch.linalg.slogdet(a) for a in A.reshape(-1, *A.shape[-2:])]
    sign = torch.stack([p[0] for p in parts]).reshape(A.shape[:-2])
    logabs = torch.stack([p[1] for p in parts]).reshape(A.shape[:-2])
    return sign, logabs


def eye_like(A: Tensor) -> Tensor:
    """Identity matrices with the shape, dtype and device of ``A`` (..., n, n)."""
    n = A.shape[-1]
    return torch.eye(n, dtype=A.dtype, device=A.device).expand(A.shape)


def skew(A: Tensor) -> Tensor:
    """Skew-symmetric part (A - A^T) / 2."""
    return 0.5 * (A - A.mT)


class NonFiniteError(ValueError):
    """A factorisation was given a matrix with a non-finite entry (a diverged loss's gradient)."""


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
    except RuntimeError as err:  # torch.linalg.LinAlgError is a RuntimeError
        if A.dtype == torch.float64:
            if not bool(torch.isfinite(A).all()):  # as float32's retry says: NaN/inf in, not LAPACK
                raise NonFiniteError("cannot take the SVD of a matrix with non-finite entries") from err
            raise
    if not bool(torch.isfinite(A).all()):
        raise NonFiniteError("cannot take the SVD of a matrix with non-finite entries")
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
    round-off floor of the check itself), when that error stops decreasing near
    round-off (below 1e3 tol), or after ``max_steps``. (Far from it the error can
    repeat exactly: a singular value of 1e-8 changes 1 - s^2 by less than float64 resolves,
    for the ~40 steps it takes to grow.) Unlike Muon's quintic coefficients, which only push
    singular values into a band around 1, this is an exact projection.
    Rank-deficient input has no orthogonal polar factor; use ``polar`` for it.
    """
    check_square(A)
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1; got {max_steps}")
    if A.numel() == 0:  # no matrix, or 0 x 0 ones: nothing to iterate (the norms below would index nothing)
        return (A.clone(), 0) if return_steps else A.clone()
    n = A.shape[-1]
    tol = 4 * n * _eps(A) if tol is None else tol
    X = A / _spectral_bound(A)
    I = eye_like(X)
    best = math.inf
    steps = 0
    for steps in range(1, max_steps + 1):
        XtX = X.mT @ X
        err = float(torch.linalg.matrix_norm(XtX.detach() - I).max())  # (the stopping test: no graph)
        if err <= tol or (err >= best and err <= 1e3 * tol):  # converged, or stalled at round-off
            steps -= 1
            break
        best = err
        X = _ns_polish(X, XtX, fused=False)
    return (X, steps) if return_steps else X


# --------------------------------------------------------------------------- matrix products only
# The projections above decide things on the host (an SVD that may fail, a rank test, a
# stopping test), and each decision waits for the device. On a GPU that wait, and the batched
# SVD itself (tens to hundreds of ms at n = 256-512, notes/gpu_findings.md), cost far more
# than the matrix products below, whose number of iterations is fixed in advance from a bound
# known on the host, so nothing is read back.


def ns_schedule(lower: float, tol: float = 1e-7, max_steps: int = 60) -> list[float]:
    """Scaling factors alpha_k of the scaled Newton-Schulz iteration for singular values in
    [lower, 1] (Chen & Chow 2014, "A stable scaling of Newton-Schulz for improving the sign
    function computation of a Hermitian matrix"), until the interval reaches [1 - tol, 1].

    Step k maps x -> g(x) = alpha x (3 - alpha^2 x^2) / 2, whose maximum 1 is at x = 1/alpha;
    alpha^2 = 3 / (1 + l + l^2) is the choice that makes g(l) = g(1), so [l, 1] is mapped onto
    [g(l), 1] and the lower end grows by up to 2.6x a step (g(l) ~ 1.5 sqrt(3) l for small l)
    until it is near 1, then quadratically (alpha -> 1: the plain cubic iteration). From lower = 1e-3
    that is 11 steps; from 0.99, 2."""
    if not 0.0 < lower <= 1.0:
        raise ValueError(f"lower must be in (0, 1]; got {lower}")
    alphas, l = [], float(lower)
    while 1.0 - l > tol and len(alphas) < max_steps:
        alpha = math.sqrt(3.0 / (1.0 + l + l * l))
        alphas.append(alpha)
        l = 0.5 * alpha * l * (3.0 - alpha * alpha * l * l)
    return alphas


def scaled_newton_schulz(X: Tensor, alphas: list[float]) -> Tensor:
    """X <- alpha X (3 I - alpha^2 X^T X) / 2 for each alpha of ``alphas`` (:func:`ns_schedule`);
    (..., n, n). Each step applies g(x) = alpha x (3 - alpha^2 x^2) / 2 to the singular
    values: it maps the schedule's interval [l, 1] into [g(l), 1] (g(l) = g(1)), so over the
    whole schedule every value in [lower, 1] ends within tol of 1 (``ns_schedule``'s lower
    and tol, unless its max_steps cut it short). One step alone need not move a value
    towards 1 (the first step of ns_schedule(1e-3) sends 1, 0.5, 1e-3 to 0.0026, 0.974,
    0.0026). Zero values stay zero (g is odd), none leaves [0, 1]; the singular vectors are
    kept. Products only: nothing is read back to the host."""
    for alpha in alphas:
        XtX = _mm(X.mT, X)
        X = torch.baddbmm(X, X, XtX, beta=1.5 * alpha, alpha=-0.5 * alpha ** 3) if X.ndim == 3 else \
            1.5 * alpha * X - (0.5 * alpha ** 3) * (X @ XtX)
    return X


def _spectral_bound(A: Tensor) -> Tensor:
    """An upper bound on ||A||_2 for each matrix, (..., 1, 1): min(||A||_F, sqrt(||A||_1 ||A||_inf)).

    Both norms square the entries' scale (||A||_F sums a_ij^2; the other multiplies two norms),
    which over- or underflows in float32 for entries beyond about 1e19 or below 1e-19: the bound
    was then inf (A / inf = 0: a retraction returned W = 0, or did not move) or tiny (A / tiny
    overflowed: NaN). So each matrix is first scaled by the power of 2 that brings its largest
    entry into [1/2, 1), and the bound scaled back: a power of 2 scales exactly, so wherever
    nothing over- or underflowed the bound is the same number, bit for bit (LAPACK's xNRM2
    scales for the same reason; Blue 1978, "A portable Fortran program to find the Euclidean
    norm of a vector"). Products only: nothing is read back to the host."""
    fi = torch.finfo(A.dtype)
    top = torch.amax(A.detach().abs(), dim=(-2, -1), keepdim=True)
    # exponent of the largest entry, kept where 2^-e and 2^e are both normal numbers (a zero or
    # non-finite matrix: e = 0, as before)
    e = torch.frexp(top).exponent.clamp(math.ceil(math.log2(fi.tiny)) + 1, math.floor(math.log2(fi.max)) - 1)
    up = torch.exp2(e.to(A.dtype))
    S = A / up
    fro = torch.linalg.matrix_norm(S, ord="fro", keepdim=True)
    one_inf = torch.sqrt(torch.linalg.matrix_norm(S, ord=1, keepdim=True)
                         * torch.linalg.matrix_norm(S, ord=math.inf, keepdim=True))
    return (torch.minimum(fro, one_inf) * up).clamp_min(fi.tiny)


def msign(A: Tensor, rtol: float | None = None) -> Tensor:
    """sharp(A) = U V^T from matrix products: A divided by a bound on its spectral norm,
    then the scaled Newton-Schulz iteration (:func:`scaled_newton_schulz`); (..., n, n).

    A polynomial cannot cut at a threshold as :func:`sharp` does: singular values above
    ``rtol`` times the largest (default sqrt(eps), the rank tolerance of :func:`steepest_step`)
    go to 1 within round-off, exact zeros stay zero, and those below are amplified by at most
    the composed polynomial's slope at 0, prod_k 1.5 alpha_k over the schedule: not about 1 / rtol
    but 3.4 to 4 sqrt(n) / rtol in float32 and 6.2 to 7.3 sqrt(n) / rtol in float64 (n = 1 to 512;
    the schedule starts at rtol / sqrt(n), and its last, plain Newton-Schulz steps multiply small
    values by 1.5 each). So a value n eps below the largest is not reliably small: it goes to 0.03
    (n = 8) and 0.6 (n = 64) in float32. The skew matrices of :func:`steepest_step` are exactly
    skew, whose kernel (odd n) holds far less than n eps: after msign its singular value measured
    at most 2e-4 in float32 for n = 9 to 257. The result's spectral norm is at most 1. The number
    of iterations depends on n and the dtype only."""
    check_square(A)
    n = A.shape[-1]
    if A.numel() == 0:  # (n = 0 would divide by sqrt(n) below)
        return A.clone()
    rtol = math.sqrt(_eps(A)) if rtol is None else rtol
    # The bound exceeds ||A||_2 by at most sqrt(n), so sigma_i >= rtol sigma_1 scales to >= rtol / sqrt(n).
    floor = min(1.0, rtol / math.sqrt(n))
    return scaled_newton_schulz(A / _spectral_bound(A), ns_schedule(floor, tol=_eps(A)))


def polar_matmul(A: Tensor, lower: float, upper: float | None = None, max_steps: int | None = None) -> Tensor:
    """Orthogonal polar factor of A from matrix products, for A whose singular values lie in
    [lower * s, s]: s is ``upper`` when the caller knows a bound on ||A||_2, else
    :func:`_spectral_bound` (A), computed on the device; ``lower`` in (0, 1] is known on the
    host (retractions know it from their step size). Converges to round-off for any such A;
    a smaller singular value is pushed towards 1 by the same steps but may not reach it.
    ``max_steps`` cuts the iteration short (an approximate projection); (..., n, n)."""
    check_square(A)
    if A.numel() == 0:
        return A.clone()
    X = A / (_spectral_bound(A) if upper is None else upper)
    return scaled_newton_schulz(X, ns_schedule(lower, tol=_eps(A))[:max_steps])


def cholesky_qr(A: Tensor) -> Tensor:
    """Q of A = QR with diag(R) > 0 (the map of :func:`qr_orthogonal`) by shifted CholeskyQR3
    (Fukaya, Kannan, Nakatsukasa, Yamamoto and Yanagisawa 2020, "Shifted Cholesky QR for
    computing the QR factorization of ill-conditioned matrices"): one Cholesky QR of the shifted
    Gram matrix, R_1^T R_1 = A^T A + s I and Q_1 = A R_1^{-1}, then CholeskyQR2 on Q_1 (Yamamoto
    et al. 2015, "Roundoff error analysis of the CholeskyQR2 algorithm": R from the Cholesky
    factor of Q^T Q, Q R^{-1}, twice). A = Q R_3 R_2 R_1; only Q is returned. Three Gram
    products, Cholesky factors and triangular solves; (..., n, n), so m = n below.

    The shift covers the round-off of the computed A^T A (at most gamma_m ||A||_F^2 in norm,
    gamma_k ~ k u, u = eps / 2) and of its Cholesky factor (gamma_{n+1} ||R_1||_F^2) (Higham
    2002, "Accuracy and Stability of Numerical Algorithms", eq. 3.13 and thm 10.3): about
    (m + n + 1) u ||A||_F^2, so that the first factorisation runs to completion. The paper's
    s = 11 (m n + n (n + 1)) u ||A||_2^2 is that bound with ||A||_F^2 <= n ||A||_2^2 written in;
    with ||A||_F^2 = trace(A^T A) at hand (on the device: nothing read back), s = 11 (m + n + 1)
    u ||A||_F^2 covers the same round-off with the same margin 11: never larger than the
    paper's, up to n times smaller. Q_1's singular values are about sigma_i / sqrt(sigma_i^2 +
    s), so its condition number is about sqrt(s) / sigma_min(A) = sqrt(11 (2n + 1) u)
    (||A||_F / ||A||_2) cond(A) where that exceeds 1; CholeskyQR2 takes Q_1 up to about
    u^{-1/2}, hence A up to about u^{-1} / (sqrt(11 (2n + 1)) ||A||_F / ||A||_2): below u^{-1}
    by a factor that grows with n, and sqrt(n) times further than the paper's s with ||A||_F
    written for ||A||_2.

    Measured in float32 against scipy.linalg.qr, for a retraction's step W (I - eta S), whose
    condition number is sqrt(1 + (eta ||S||_2)^2) when S = skew(W^T G) is singular (odd n, or a
    low-rank G): the Q came out right (within n u cond(A) of scipy's Q, ||Q^T Q - I||_max below
    50 n eps, same det) for every step with eta ||S||_2 up to 5e5 at n = 3 to 9, 1e5 at n = 16
    to 33, 5e4 at n = 64 to 129 (30 random W, G each: odd n with a full G, and a rank-2 G) and
    3e4 at n = 256 to 513 (8 each; notes/cpu_upkeep.md).
    CholeskyQR2 alone broke down from 5e3-1e4 on, at every n: NaN for 10 to 100 % of the steps,
    and in the same sweep 20 of 6,240 steps (condition numbers 5e5 to 1.2e7) gave a non-NaN
    matrix that was not A's Q (||Q^T Q - I||_max 1e-4 to 2.5e-2), ``cholesky_ex`` reporting
    nothing. Past the range Q_1 is still too ill-conditioned for CholeskyQR2, whose
    factorisation breaks down: a matrix any of whose three factorisations reports a breakdown
    is returned as NaN, which no check of orthogonality can mistake for a result. In 5,865
    random steps (n = 3 to 129, condition numbers 3e3 to 1.7e7) no wrong non-NaN result came
    below condition number 1e7; two above it (1.1e7, 1.3e7; u^{-1} = 1.7e7) were not orthogonal
    (||Q^T Q - I||_max 8e-4, 3e-3). The breakdown flag is ``cholesky_ex``'s, tested on the
    device: nothing is read back to the host."""
    check_square(A)
    m, n = A.shape[-2:]
    u = _eps(A) / 2  # unit round-off
    AtA = _mm(A.mT, A)  # (..., n, n)
    fro2 = AtA.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]  # ||A||_F^2 = trace(A^T A), (..., 1, 1)
    s = (11 * (m + n + 1) * u) * fro2  # the paper's 11 (m n + n (n + 1)) u ||A||_2^2 before ||A||_F^2 <= n ||A||_2^2
    L, info = torch.linalg.cholesky_ex(AtA + s * eye_like(A))  # A^T A + s I = R_1^T R_1, L = R_1^T
    Q = torch.linalg.solve_triangular(L, A.mT, upper=False).mT  # Q_1 = A R_1^{-1} = (L^{-1} A^T)^T
    failed = info != 0
    for _ in range(2):  # CholeskyQR2 on Q_1
        L, info = torch.linalg.cholesky_ex(_mm(Q.mT, Q))  # Q^T Q = L L^T, R = L^T
        Q = torch.linalg.solve_triangular(L, Q.mT, upper=False).mT  # Q R^{-1}
        failed = failed | (info != 0)
    return torch.where(failed[..., None, None], torch.full_like(Q, math.nan), Q)


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
    return solve_safe(I - 0.5 * A, I + 0.5 * A)


def expm(A: Tensor) -> Tensor:
    """Matrix exponential; for skew-symmetric A the result is in SO(n)."""
    check_square(A)
    return torch.linalg.matrix_exp(A)


def taylor_theta(m: int, u: float) -> float:
    """The largest theta with sum_{k > m} theta^k / k! <= u: for ||X|| <= theta the Taylor
    polynomial of exp of degree m is within u of exp(X) in that norm (the tail's bound)."""
    def tail(t: float) -> float:
        term, total, k = t ** (m + 1) / math.factorial(m + 1), 0.0, m + 1
        while term > 1e-9 * u:  # the terms fall faster than geometrically once k > t
            total += term
            k += 1
            term *= t / k
        return total

    lo, hi = 0.0, 1.0
    while tail(hi) <= u:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if tail(mid) <= u else (lo, mid)
    return lo


# expm_fixed: squarings it can do; ||A||_1 up to theta * 2^12 (about 6,000 in float32) is exact
# to round-off, larger A are scaled by 2^-12 only: their Taylor step is far outside its range and
# the result is not orthogonal, NaN even (||A||_2 ~ 1e4 in float32), with no error raised.
# Reached only by a parametrized skip's free matrix grown to such norms (the eager expm has no limit)
EXPM_MAX_SQUARINGS = 12


def _ps_products(m: int, q: int) -> int:
    """Products of :func:`_taylor_exp`'s degree-m polynomial in blocks of q: X^2..X^q, then one
    Horner step in X^q per block below the top (none for a top block I / m!, when q divides m)."""
    return (q - 1) + m // q - (m % q == 0)


def _ps_block(m: int) -> int:
    """The block size q with the fewest products for degree m (the smaller q on a tie)."""
    return min(range(1, m + 1), key=lambda q: (_ps_products(m, q), q))


def _addmm(C: Tensor, A: Tensor, B: Tensor) -> Tensor:
    """C + A @ B in one call for a 2-D or 3-D stack (``addmm``, ``baddbmm``)."""
    if A.ndim == B.ndim == C.ndim == 3:
        return torch.baddbmm(C, A, B)
    return torch.addmm(C, A, B) if A.ndim == B.ndim == C.ndim == 2 else C + A @ B


def _taylor_exp(X: Tensor, m: int) -> Tensor:
    """sum_{k <= m} X^k / k! by Paterson-Stockmeyer (Higham, "Functions of Matrices", sec.
    4.2): powers X^2..X^q once, then Horner in X^q over blocks of q coefficients, so degree
    12 takes 5 products and degree 18 takes 7 (term by term: 11 and 17). One call per term
    and per Horner step (small matrices cost their calls, not their flops)."""
    q = _ps_block(m)
    powers = [eye_like(X), X]
    for _ in range(q - 1):
        powers.append(_mm(powers[-1], X))
    Xq = powers.pop()  # X^q; powers = I, X, ..., X^(q-1)

    def block(j: int, B: Tensor | None = None) -> Tensor:  # B + sum_i X^i / (jq + i)!, i < q, jq + i <= m
        for i in range(min(q, m - j * q + 1)):
            c = 1.0 / math.factorial(j * q + i)
            B = powers[i] * c if B is None else torch.add(B, powers[i], alpha=c)
        return B

    J = m // q
    if m % q == 0:  # the top block is I / m!: its Horner step is X^q / m!, no product
        P, J = block(J - 1, Xq / math.factorial(m)), J - 1
    else:
        P = block(J)
    for j in range(J - 1, -1, -1):
        P = _addmm(block(j), P, Xq)
    return P


def _expm_degree(A: Tensor) -> int:
    return _degree_of(A.dtype)


def _degree_of(dtype: torch.dtype) -> int:
    return 18 if dtype == torch.float64 else 12


# theta_m for (degree, unit round-off) of every floating dtype, filled at import: a table that
# grew on first use changed a global torch.compile guards on (``key in _THETAS``), so the first
# compiled forward with an exp skip compiled its graph twice
_THETAS: dict[tuple[int, float], float] = {
    (_degree_of(dt), torch.finfo(dt).eps / 2): taylor_theta(_degree_of(dt), torch.finfo(dt).eps / 2)
    for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
}


def _expm_scalings(bound: Tensor, theta: float) -> Tensor:
    """s = ceil(log2(b / theta)) >= 0 per matrix, (..., 1, 1), on the bound's device, b the
    bound on ||A||_2 of :func:`_spectral_bound` (a zero A gives s = 0; a NaN one 0 too, its
    polynomial is NaN anyway)."""
    s = torch.ceil(torch.log2(bound / theta)).clamp(min=0)
    return torch.nan_to_num(s, nan=0.0, posinf=1024.0)


def _theta(m: int, A: Tensor) -> float:
    key = (m, _eps(A) / 2)
    if key not in _THETAS:  # a bisection in Python: once per degree and dtype
        _THETAS[key] = taylor_theta(*key)
    return _THETAS[key]


# The host-read path's degrees: the largest for each count of products (0, 1, 2, ...), up to
# the dtype's fixed degree
_CHEAP_DEGREES = (1, 2, 4, 6, 9, 12, 16)


def _degree_choices(dtype: torch.dtype) -> tuple[int, ...]:
    top = _degree_of(dtype)
    return tuple(m for m in _CHEAP_DEGREES if m < top) + (top,)


def _grad_theta(m: int, u: float) -> float:
    """theta where degree m's polynomial is within u of exp and its derivative within 8u: the
    derivative of sum_{k > m} X^k / k! in a direction H is at most sum_{k >= m} theta^k / k! ||H||,
    the tail of degree m - 1. 8u is what the fixed degree gives at its own theta (float32: degree
    12, sum_{k >= 12} 1.56^k / k! ~ 8u); a low degree at the value's theta alone would give far
    more (degree 1, the derivative off by ||A|| ~ 3e-4, where the value is within u)."""
    return min(taylor_theta(m, u), taylor_theta(m - 1, 8 * u))


_GRAD_THETAS: dict[tuple[int, float], float] = {
    (m, torch.finfo(dt).eps / 2): _grad_theta(m, torch.finfo(dt).eps / 2)
    for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64) for m in _degree_choices(dt)
}


def _cheapest_degree(bound: Tensor, A: Tensor) -> tuple[int, float]:
    """The degree m and its theta with the fewest products for the stack's largest bound (read on
    the host): Paterson-Stockmeyer's plus the squarings to bring the bound below theta, theta
    from :func:`_grad_theta` so that value and gradient are both exact to round-off (the larger
    degree on a tie: fewer squarings, each of which doubles the rounding error)."""
    b, u = float(bound.max()), _eps(A) / 2
    best = None
    for m in _degree_choices(A.dtype):
        theta = _GRAD_THETAS[(m, u)]
        cost = _ps_products(m, _ps_block(m)) + max(0, math.ceil(math.log2(b / theta)))
        if best is None or cost <= best[0]:
            best = (cost, m, theta)
    return best[1], best[2]


def _host_read_is_free(A: Tensor) -> bool:
    """A plain CPU tensor outside torch.compile: reading its values costs no synchronisation,
    and no transform (vmap) or graph capture stands in the way."""
    return (A.device.type == "cpu" and not torch.compiler.is_compiling()
            and not torch._C._functorch.is_functorch_wrapped_tensor(A))


def expm_fixed(A: Tensor, max_squarings: int | None = EXPM_MAX_SQUARINGS, read: bool | None = None) -> Tensor:
    """exp(A) by scaling and squaring in a fixed sequence of products: nothing is read back to
    the host (``torch.linalg.matrix_exp`` reads its matrices' norms on the host to choose its
    degree and squarings, a synchronisation on a GPU that a CUDA graph cannot hold); (..., n, n).

    Per matrix, on the device: s = ceil(log2(b / theta)) clipped to [0, max_squarings], b =
    :func:`_spectral_bound` (A) = min(||A||_F, sqrt(||A||_1 ||A||_inf)) >= ||A||_2, X = A / 2^s,
    the Taylor polynomial of degree m (12 in float32 and below, 18 in float64) with
    theta = :func:`taylor_theta` (m, unit round-off), then ``max_squarings`` squarings of which
    matrix k takes the first s_k (the others pass it through). For skew-symmetric A (the
    parametrization's) ||exp(X) - T_m(X)||_2 <= u and each squaring adds about one more u: the
    result is orthogonal to round-off times 2^s, as for any scaling and squaring. Its
    gradient is autograd's through these products (s is piecewise constant in A). Costs
    5-7 + max_squarings batched products whatever A is: meant for compiled GPU code.

    ``max_squarings=None``, where a host read is free (a CPU tensor outside torch.compile and
    vmap): the degree and squarings are chosen for the stack on the host, the fewest products
    that keep value and gradient exact to round-off (:func:`_cheapest_degree`): none at A = 0, 2
    for ||A||_2 up to 0.06 (float32), the fixed degree and as many squarings as needed for large
    A. Forward and backward then take 0.1-0.95x matrix_exp's time (one float32 matrix, n = 16
    to 256, ||A||_2 = 0.01 to 1, one thread; the larger n, the larger the gain: its backward
    exponentiates a 2n x 2n matrix; notes/cpu_upkeep.md). Elsewhere ``None`` means
    EXPM_MAX_SQUARINGS. ``read=True`` reads the plan on the host wherever A is (on a GPU one
    synchronisation, as ``matrix_exp``'s), ``False`` never; ``None``: where that is free."""
    check_square(A)
    if A.numel() == 0:  # exp of a 0 x 0 matrix, or of none
        return A.clone()
    bound = _spectral_bound(A.detach())  # s is piecewise constant: no gradient
    read = bool(max_squarings is None and A.numel() and (_host_read_is_free(A) if read is None else read))
    if read and math.isfinite(float(bound.max())):
        m, theta = _cheapest_degree(bound, A)
        s = _expm_scalings(bound, theta)
    else:
        m = _expm_degree(A)
        s = _expm_scalings(bound, _theta(m, A))
    if max_squarings is None:
        max_squarings = int(s.max()) if read else EXPM_MAX_SQUARINGS
    s = s.clamp(max=max_squarings)
    E = _taylor_exp(A * torch.exp2(-s), m)
    common = int(s.min()) if read else 0  # squarings every matrix takes: no mask needed
    for k in range(max_squarings):
        E = _mm(E, E) if k < common else torch.where(s > k, _mm(E, E), E)
    return E


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


def _round_off_tangent(A: Tensor, G: Tensor) -> Tensor:
    """Whether A = W^T G - G^T W (W orthogonal) is round-off, (..., 1, 1): max |A_ij| <= (n + 8)
    eps max |G_ij|. Forming W^T G errs by up to about n eps (|W|^T |G|)_ij entrywise (Higham,
    "Accuracy and Stability of Numerical Algorithms", 3.5), and W is orthogonal only to a few
    eps (a Haar draw's QR, a retracted step), which adds that many eps |G| to A: at G = W Sym
    (a critical point) max |A_ij| / (eps max |G_ij|) measured up to 8.6 for Haar W and 6.1 for
    the retractions' W (n = 2 to 64, float32 and float64), past n alone at n <= 4. A smaller A
    has no direction; G = 0 gives True. Largest entries, not Frobenius norms, whose squares
    underflow in float32 for entries below ~1e-19 (every such gradient would count as zero)."""
    n = A.shape[-1]
    top = functools.partial(torch.amax, dim=(-2, -1), keepdim=True)
    return top(A.abs()) <= (n + 8) * _eps(A) * top(G.abs())


def tangent_gradient(W: Tensor, G: Tensor) -> Tensor:
    """Riemannian gradient on O(n) under the embedded metric: W skew(W^T G)."""
    return W @ skew(W.mT @ G)


@single_threaded
def steepest_step(W: Tensor, G: Tensor, eta: float | Tensor, rtol: float | None = None, impl: str = "factor",
                  eta_max: float | None = None) -> Tensor:
    """One steepest-descent step on O(n) under the spectral norm (modula docs,
    "orthogonal manifold").

    X = sharp(W^T G - G^T W) is the unit-spectral-norm skew direction of steepest
    descent. If that skew matrix has full rank, X is orthogonal and skew, so
    X^T X = I and X + X^T = 0, hence (I - eta X)^T (I - eta X) = (1 + eta^2) I and

        W <- W (I - eta X) / sqrt(1 + eta^2)

    stays on O(n) exactly. Otherwise (always for odd n, where a skew matrix is
    singular) W <- polar(W (I - eta X)) = W polar(I - eta X), which is the same formula
    in the full-rank case.

    ``impl="factor"``: X from an SVD. Branch tolerance: the polar factor of A is perturbed
    by about eps * ||A|| / s_min(A) (Higham, "Functions of Matrices", thm 8.9), so the first
    branch is taken only when s_min > sqrt(eps) s_max, which bounds X's departure from O(n)
    by ~sqrt(eps). A zero gradient leaves W unchanged, and so does one whose tangent part is
    round-off: max |(W^T G - G^T W)_ij| <= (n + 8) eps max |G_ij|, as for G = W Sym with Sym
    symmetric (a critical point, Riemannian gradient 0), where sharp of the round-off, a unit
    direction of noise, moved W by a full step of length eta.
    ``impl="matmul"``: X = :func:`msign` (A) (singular values of A below sqrt(eps) times the
    largest count as zero only softly), then W polar(I - eta X) with the polar factor
    from products: X is skew with ||X||_2 <= 1, so I - eta X is normal with singular values
    sqrt(1 + eta^2 x_i^2) in [1, sqrt(1 + eta^2)], a bound known on the host
    (:func:`polar_matmul`). No host synchronisation; a zero gradient (or a round-off one, as above)
    gives X = 0 and W back.
    Here ``eta`` may also be a 0-d tensor, as a compiled step passes it (one graph for every
    learning rate); the bound then comes from ``eta_max`` >= eta, a host float (default: eta
    itself), and the iteration runs the few extra steps that the looser bound needs.
    Both: one Newton-Schulz polishing step, X <- 1.5 X - 0.5 X X^T X, then squares whatever
    error remains, so round-off never accumulates over steps.

    ``rtol`` (default sqrt(eps) of W's dtype; no caller in the library sets it) means a
    different thing in each: ``factor``, the full-rank test s_min > rtol s_max that picks the
    closed form over the polar factor (X itself is cut at n eps, :func:`sharp`'s default);
    ``matmul``, :func:`msign`'s ``rtol``: singular values of A above rtol times the largest
    go to 1, smaller ones are amplified by up to 4 sqrt(n) / rtol in float32 (see :func:`msign`).
    """
    check_square(W, "W")
    if G.shape != W.shape:
        raise ValueError(f"G must have the shape of W, {tuple(W.shape)}; got {tuple(G.shape)}")
    if impl == "matmul":
        B = _mm(W.mT, G)
        A = B - B.mT  # W^T G - G^T W: skew, (..., n, n)
        X = torch.where(_round_off_tangent(A, G), 0.0, skew(msign(A, rtol)))  # no tangent part: no direction
        M = eye_like(X) - eta * X  # W_new = W polar(M)
        # ||X||_2 <= 1 up to round-off; the 1e-3 margin keeps the bound an upper one
        if eta_max is None:
            if isinstance(eta, Tensor):
                raise ValueError("a tensor eta needs eta_max, a float bound on it")
            eta_max = eta
        upper = math.sqrt(1.0 + (eta_max * (1.0 + 1e-3)) ** 2)
        return _ns_polish(_mm(W, polar_matmul(M, 1.0 / upper, upper)))
    A = W.mT @ G - G.mT @ W  # skew, (..., n, n)
    if impl != "factor":
        raise ValueError(f"unknown impl {impl!r}; allowed: factor, matmul")
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
    zero_grad = _round_off_tangent(A, G)  # (..., 1, 1)
    W_new = torch.where(zero_grad, W, W_new)
    return _ns_polish(W_new, fused=False)


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
# How a retraction computes its projection: "factor" (SVD / QR, with host-side tests: exact
# rank decisions, the fastest on CPUs), "matmul" (matrix products and a Cholesky factor,
# fixed iteration counts, nothing read back to the host: for GPUs), "auto" (matmul on CUDA,
# factor elsewhere). Both compute the same maps up to round-off, except that "matmul"'s
# steepest direction treats singular values of W^T G - G^T W below sqrt(eps) times the
# largest softly (see msign), where the SVD's sharp cuts at n eps, and that its qr step can
# be NaN past cholesky_qr's range (in float32 past eta ||S||_2 of about 3e4 at n = 512, 5e5
# at n = 9; see there), where the Householder QR still has a Q.
RETRACTION_IMPLS = ("auto", "factor", "matmul")
# The step of the svd / newton_schulz retractions has singular values in [1, sqrt(1 + (eta
# ||S||_2)^2)], S = skew(W^T G); "matmul" runs the iterations that reach round-off for
# eta ||S||_2 up to this bound (12-15 steps for n = 16-512), and leaves larger (diverging)
# steps unfinished. The qr retraction's "matmul" step (cholesky_qr) has no such bound: it is
# right to round-off up to the condition numbers its docstring gives; past them, right or
# NaN (rarely, near 1 / u, neither: see there).
MATMUL_MAX_STEP = 1e3


def resolve_impl(impl: str, device: torch.device | str) -> str:
    """``auto`` -> ``matmul`` on CUDA, ``factor`` elsewhere; the other names as they are."""
    if impl not in RETRACTION_IMPLS:
        raise ValueError(f"unknown retraction impl {impl!r}; allowed: {', '.join(RETRACTION_IMPLS)}")
    if impl == "auto":
        return "matmul" if torch.device(device).type == "cuda" else "factor"
    return impl


def _ieee_matmul(device: torch.device):
    """A context manager: full float32 products on CUDA for the block (TF32's 10-bit mantissa
    would leave W orthogonal only to ~1e-3); host-side flags only, no synchronisation.
    Under torch.compile it does nothing (a flag set inside a graph is no graph operation): the
    caller sets the flag around the compiled call, as ``RetractingOptimizer`` does. A plain
    function returning ``nullcontext()``, not a generator context manager, which the dynamo
    of torch 2.4 and 2.5.1 does not trace (see :func:`one_thread`)."""
    if device.type != "cuda" or torch.compiler.is_compiling() or not _cublas_tf32():
        return contextlib.nullcontext()
    return _tf32_off()


def _cublas_tf32() -> bool:
    """Whether cuBLAS may use TF32 for float32 products. From torch 2.9 the flag has a new
    name (``torch.backends.cuda.matmul.fp32_precision``, which also inherits
    ``torch.backends.fp32_precision``), and reading the old ``allow_tf32`` raises once a user
    has set the new one; the new name is read where it exists."""
    matmul = torch.backends.cuda.matmul
    try:
        return matmul.fp32_precision == "tf32"
    except AttributeError:  # torch < 2.9: the old flag only
        return matmul.allow_tf32


@contextlib.contextmanager
def _tf32_off():
    """TF32 off for the block, set through the API the user set it with: the old flag while
    it reads consistently (it sets the new one too), else the new flag, restored after."""
    matmul = torch.backends.cuda.matmul
    try:
        matmul.allow_tf32  # noqa: B018 (raises on torch >= 2.9 once the new flag was set)
    except RuntimeError:
        before = matmul.fp32_precision
        matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = before
        return
    matmul.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32 = True


def retract(method: str, W: Tensor, G: Tensor, eta: float | Tensor, ns_steps: int = 100, impl: str = "auto",
            eta_max: float | None = None) -> Tensor:
    """One retracted step from W along -G with step size eta; (..., n, n) batched.

    ``steepest``: the spectral-norm steepest step of length eta (:func:`steepest_step`);
    ``svd`` / ``qr`` / ``newton_schulz``: the Riemannian-gradient step
    W - eta W skew(W^T G) (Absil et al. 2008, sec. 3.6) mapped back onto O(n) by the
    polar factor, the Q factor or ``ns_steps`` Newton-Schulz iterations.
    ``impl`` (:data:`RETRACTION_IMPLS`): with ``matmul``, the polar factor (``svd`` and
    ``newton_schulz``, then the same map; ``ns_steps`` still caps the latter) comes from
    :func:`polar_matmul` and the Q factor from :func:`cholesky_qr`; there ``eta`` may be a 0-d
    tensor (with ``eta_max``, a float bound on it, for ``steepest``: see :func:`steepest_step`)."""
    if method not in RETRACTED_METHODS:
        raise ValueError(f"unknown retraction {method!r}; allowed: {', '.join(RETRACTED_METHODS)}")
    check_square(W, "W")
    if G.shape != W.shape or G.dtype != W.dtype:
        raise ValueError(f"G must have the shape and dtype of W, {tuple(W.shape)} {W.dtype}; "
                         f"got {tuple(G.shape)} {G.dtype}")
    if not isinstance(eta, Tensor) and not math.isfinite(eta):
        raise NonFiniteError(f"the step size must be finite; got {eta}")
    if W.dtype in (torch.float16, torch.bfloat16):
        # half-precision weights: the step in float32, rounded once (the CPU has no half QR, and
        # Newton-Schulz in bf16 stalls ~20x further from O(n) than the rounding of W itself)
        return retract(method, W.float(), G.float(), eta, ns_steps, impl, eta_max).to(W.dtype)
    impl = resolve_impl(impl, W.device)
    with _ieee_matmul(W.device):
        if method == "steepest":
            return steepest_step(W, G, eta, impl=impl, eta_max=eta_max)
        if impl == "matmul" and method != "qr":
            # polar(W (I - eta S)) = W polar(M), M = I - eta S with S = skew(W^T G): M is normal with
            # singular values sqrt(1 + eta^2 s_i^2) in [1, sqrt(1 + (eta ||S||_2)^2)] and its bound
            # min(||M||_F, ||M||_1) <= 1 + sqrt(n) eta ||S||_2 (||M||_1 = ||M||_inf for this M), so
            # 1 / (1 + sqrt(n) MATMUL_MAX_STEP) covers every step with eta ||S||_2 <= MATMUL_MAX_STEP.
            M = eye_like(W) - eta * skew(_mm(W.mT, G))
            lower = 1.0 / (1.0 + math.sqrt(W.shape[-1]) * MATMUL_MAX_STEP)
            steps = ns_steps if method == "newton_schulz" else None
            return _ns_polish(_mm(W, polar_matmul(M, lower, max_steps=steps)))
        W_step = W - eta * tangent_gradient(W, G)  # W (I - eta S), singular values >= 1
        if impl == "matmul":
            return cholesky_qr(W_step)
        if not bool(torch.isfinite(W_step).all()):  # (the factoring path reads the host anyway)
            raise NonFiniteError(f"cannot take a {method} step from a matrix with non-finite entries")
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
    """||W - I||_2 (largest singular value of W - I); NaN for a matrix with a non-finite entry,
    as :func:`identity_distance` gives (the SVD raised there)."""
    check_square(W, "W")
    D = W - eye_like(W)
    finite = torch.isfinite(D).all(dim=-1).all(dim=-1)  # (...,)
    norm = torch.linalg.matrix_norm(torch.where(finite[..., None, None], D, torch.zeros_like(D)), ord=2)
    return torch.where(finite, norm, torch.full_like(norm, math.nan))


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
    if not dtype.is_floating_point:  # (an integer Q would round to a zero matrix)
        raise TypeError(f"haar_orthogonal needs a floating-point dtype; got {dtype}")
    gen_device = generator.device if generator is not None else device
    Z = torch.randn(*batch, n, n, generator=generator, dtype=torch.float64, device=gen_device)
    Q = qr_orthogonal(Z)
    if special:
        sign = slogdet_safe(Q)[0]
        flip = torch.ones_like(Q[..., 0, :])
        flip[..., 0] = torch.where(sign < 0, -1.0, 1.0)
        Q = Q * flip.unsqueeze(-2)
    return Q.to(dtype=dtype, device=device if device is not None else Q.device)
