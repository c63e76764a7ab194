"""The decomposition theorem's construction, built numerically.

The claim (orthogonal skip connections paper, Theorem 1, adapted from Bartlett, Evans &
Long 2018, "Representing smooth functions as compositions of near-identity functions",
arXiv 1804.05012, where every W_i is I): a smooth invertible h: R^d -> R^d with h(0) = 0
and det Dh > 0 is, on the ball B_R, a composition h = h_m o ... o h_1 of maps with

    ||h_i - W_i||_L = O(log m / m)   and   ||I - W_i|| = O(log m / m),   W_i orthogonal.

Its proof, which this module follows step by step:

    a_i = (1 - c)^(m - i),  i = 0..m         (a_m = 1; c = log(m) / m balances the blocks)
    g_i(x) = (1 / a_i) W_i^T h(a_i W_i x),   g_0 = Id
    h_i = g_i o g_(i-1)^(-1)
    ||I - W_i|| <= C |a_i - a_(i-1)|

Here W_i = expm(theta_i S) lies on the geodesic of SO(d) through I with unit direction S
(skew, ||S||_2 = 1), at theta_i = C (a_i - a_(i-1)), so ||I - W_i||_2 = 2 sin(theta_i / 2)
<= C |a_i - a_(i-1)| as the proof asks. The inverses g_(i-1)^(-1) are computed
numerically (Newton's method on h), so the composition is tested as maps, not as algebra.

Two facts to keep in mind when reading the numbers (see notes/theorem_findings.md):
the product telescopes to h_m o ... o h_1 = g_m o g_0^(-1) = g_m = W_m^T h(W_m .), which
is h only when W_m = I (or W_m commutes with h); and with g_0 = Id the first block is
h_1 = g_1 ~ W_1^T Dh(0) W_1, which is near an orthogonal W_1 ~ I only if Dh(0) ~ I
(Bartlett et al. first factor Dh(0) into near-identity linear maps; the adapted proof
does not).

Everything is float64; shapes are in comments, N points of dimension d.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import orthogonal as orth

__all__ = [
    "ZERO_DISTANCE",
    "TanhMap",
    "tanh_map",
    "unit_skew",
    "sample_ball",
    "Construction",
    "build_construction",
    "measure_construction",
    "reference_rate",
    "loglog_slope",
]

DTYPE = torch.float64
_EPS = torch.finfo(DTYPE).eps


# --------------------------------------------------------------------------- the map h


@dataclass
class TanhMap:
    """h(x) = A x + eps tanh(B x) with A = L - eps B, so that h(0) = 0 and Dh(0) = L.

    Dh(x) = A + eps diag(sech^2(B x)) B = L + eps (diag(sech^2(B x)) - I) B. With
    ||B||_2 = 1 the perturbation has norm <= eps, so if eps < s_min(L) every Dh(x) is
    invertible with ||Dh(x)^(-1)|| <= M = 1 / (s_min(L) - eps): h is a diffeomorphism of
    R^d (Hadamard), det Dh(x) keeps the sign of det L > 0 along the path, and h^(-1) is
    M-Lipschitz. Smoothness: |d/dt sech^2 t| <= 4 / (3 sqrt 3), so ||(Dh(y) - Dh(x)) u||
    <= alpha ||y - x|| ||u|| with alpha = eps 4 / (3 sqrt 3).
    """

    L: Tensor  # (d, d) Dh(0), det L > 0
    B: Tensor  # (d, d) ||B||_2 = 1
    eps: float

    def __post_init__(self):
        orth.check_square(self.L, "L")
        orth.check_square(self.B, "B", self.L.shape[-1])
        self.A = self.L - self.eps * self.B  # (d, d)

    @property
    def dim(self) -> int:
        return self.L.shape[-1]

    @property
    def alpha(self) -> float:
        return self.eps * 4.0 / (3.0 * math.sqrt(3.0))

    @property
    def M(self) -> float:
        s_min = float(torch.linalg.svdvals(self.L)[-1])
        return 1.0 / (s_min - self.eps) if s_min > self.eps else math.inf

    def __call__(self, x: Tensor) -> Tensor:  # (..., d) -> (..., d)
        return x @ self.A.mT + self.eps * torch.tanh(x @ self.B.mT)

    def jacobian(self, x: Tensor) -> Tensor:  # (..., d) -> (..., d, d)
        sech2 = 1.0 - torch.tanh(x @ self.B.mT) ** 2  # (..., d)
        return self.A + self.eps * sech2.unsqueeze(-1) * self.B

    def inverse(self, t: Tensor, max_iter: int = 60) -> tuple[Tensor, float]:
        """h^(-1)(t) for t (..., d) by Newton's method, and the largest relative residual
        ||h(y) - t|| / ||t||.

        Start: y = L^(-1) t (exact for a linear h). A Newton step that does not reduce a
        point's residual is replaced by the chord step y - L^(-1) (h(y) - t), a
        contraction with factor eps / s_min(L) < 1, so every point converges. Stops once
        every relative residual is at round-off (<= 4 eps), or no longer halves while
        below 1e-12 (Newton has stalled at round-off), or after ``max_iter`` steps.
        """
        scale = torch.linalg.vector_norm(t, dim=-1).clamp_min(torch.finfo(t.dtype).tiny)  # (...,)
        y = orth.solve_safe(self.L, t.unsqueeze(-1)).squeeze(-1)
        r = self(y) - t
        res = torch.linalg.vector_norm(r, dim=-1)
        worst = float((res / scale).max()) if res.numel() else 0.0
        for _ in range(max_iter):
            if worst <= 4 * _EPS:
                break
            newton = y - orth.solve_safe(self.jacobian(y), r.unsqueeze(-1)).squeeze(-1)
            r_newton = self(newton) - t
            res_newton = torch.linalg.vector_norm(r_newton, dim=-1)
            use_newton = (res_newton < res).unsqueeze(-1)
            if not bool(use_newton.all()):
                chord = y - orth.solve_safe(self.L, r.unsqueeze(-1)).squeeze(-1)
                newton = torch.where(use_newton, newton, chord)
                r_newton = torch.where(use_newton, r_newton, self(chord) - t)
                res_newton = torch.linalg.vector_norm(r_newton, dim=-1)
            better = (res_newton < res).unsqueeze(-1)
            y = torch.where(better, newton, y)
            r = torch.where(better, r_newton, r)
            res = torch.linalg.vector_norm(r, dim=-1)
            new_worst = float((res / scale).max())
            stalled = new_worst > 0.5 * worst and new_worst <= 1e-12
            worst = new_worst
            if stalled:
                break
        return y, worst


def unit_skew(d: int, generator: torch.Generator) -> Tensor:
    """A random skew-symmetric (d, d) matrix with ||S||_2 = 1: the unit direction of a
    geodesic t -> expm(t S) of SO(d) through I, turning by at most angle t in any plane."""
    if d < 2:
        raise ValueError(f"a geodesic of SO(d) needs d >= 2; got d={d}")
    S = orth.skew(torch.randn(d, d, generator=generator, dtype=DTYPE))
    return S / torch.linalg.matrix_norm(S, ord=2)


def tanh_map(d: int, angle: float, stretch: float, eps: float, generator: torch.Generator) -> TanhMap:
    """The family h(x) = A x + eps tanh(B x) with Dh(0) = L = expm(angle S_L) diag(s),
    s = stretch^linspace(-1, 1, d): a stretch with condition number stretch^2, then a
    rotation expm(angle S_L), S_L = :func:`unit_skew` (random, ||S_L||_2 = 1), which turns
    by ``angle`` in S_L's top invariant plane and by smaller angles in its other
    floor(d/2) - 1 planes. angle = 0 and stretch = 1 give Dh(0) = I. B is a random
    Gaussian matrix scaled to ||B||_2 = 1.

    Raises ValueError unless 0 <= eps < s_min(L) = min(stretch, 1 / stretch), the
    condition under which h is invertible (see :class:`TanhMap`)."""
    if stretch <= 0:
        raise ValueError(f"stretch must be > 0; got {stretch}")
    s_min = min(stretch, 1.0 / stretch)
    if not 0.0 <= eps < s_min:
        raise ValueError(
            f"eps must be in [0, s_min(Dh(0))) = [0, {s_min:g}) so that h is invertible; got {eps}"
        )
    S_L = unit_skew(d, generator)
    B = torch.randn(d, d, generator=generator, dtype=DTYPE)
    B = B / torch.linalg.matrix_norm(B, ord=2)
    s = stretch ** torch.linspace(-1.0, 1.0, d, dtype=DTYPE)  # (d,)
    L = orth.expm(angle * S_L) * s  # rotation @ diag(s)
    return TanhMap(L=L, B=B, eps=float(eps))


def sample_ball(n: int, d: int, R: float, generator: torch.Generator) -> Tensor:
    """n points of the ball B_R in R^d, (n, d): the first half uniform in the ball, the
    rest on its boundary sphere, where h is farthest from linear."""
    v = torch.randn(n, d, generator=generator, dtype=DTYPE)
    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    r = torch.rand(n, 1, generator=generator, dtype=DTYPE) ** (1.0 / d)  # uniform in volume
    r[n // 2 :] = 1.0
    return R * r * v


# --------------------------------------------------------------------------- the construction


@dataclass
class Construction:
    """a_i, W_i and the maps g_i, h_i of the proof for one h and one m."""

    h: TanhMap
    c: float
    a: Tensor  # (m + 1,) a_0 .. a_m, a_m = 1
    W: Tensor  # (m + 1, d, d) W_0 = I (unused: g_0 = Id), W_1 .. W_m

    @property
    def m(self) -> int:
        return self.a.shape[0] - 1

    def _aW(self, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """a_k as (K, 1, 1), W_k as (K, d, d) and the mask k == 0 as (K, 1, 1)."""
        return self.a[k].view(-1, 1, 1), self.W[k], (k == 0).view(-1, 1, 1)

    # Every map below takes block indices k: a LongTensor (K,), and points x: (N, d) shared
    # by all K blocks or (K, N, d), one set per block; it returns (K, N, ...).

    def g(self, k: Tensor, x: Tensor) -> Tensor:
        """g_k(x) = (1 / a_k) W_k^T h(a_k W_k x); g_0 = Id."""
        a, W, first = self._aW(k)
        out = (self.h(a * (x @ W.mT)) @ W) / a  # row vectors: (W v)^T = v^T W^T
        return torch.where(first, x, out)

    def g_inverse(self, k: Tensor, z: Tensor) -> tuple[Tensor, float]:
        """g_k^(-1)(z) = (1 / a_k) W_k^T h^(-1)(a_k W_k z), h^(-1) by Newton; g_0^(-1) = Id.
        Returns the preimages and Newton's largest relative residual."""
        a, W, first = self._aW(k)
        y, residual = self.h.inverse(a * (z @ W.mT))
        return torch.where(first, z, (y @ W) / a), residual

    def g_jacobian(self, k: Tensor, x: Tensor) -> Tensor:
        """Dg_k(x) = W_k^T Dh(a_k W_k x) W_k, (K, N, d, d); Dg_0 = I."""
        a, W, first = self._aW(k)
        W = W.unsqueeze(1)  # (K, 1, d, d) against (K, N, d, d)
        J = W.mT @ self.h.jacobian(a * (x @ W.squeeze(1).mT)) @ W
        return torch.where(first.unsqueeze(-1), torch.eye(self.h.dim, dtype=J.dtype), J)

    def block(self, i: Tensor, z: Tensor) -> tuple[Tensor, float]:
        """h_i(z) = g_i(g_(i-1)^(-1)(z)) for blocks i in 1..m, and the Newton residual."""
        u, residual = self.g_inverse(i - 1, z)
        return self.g(i, u), residual

    def compose(self, x: Tensor) -> tuple[Tensor, float]:
        """h_m o ... o h_1 (x) for x (N, d), block after block, each through a numerical
        inverse. Returns (N, d) and the largest Newton residual."""
        worst = 0.0
        for i in range(1, self.m + 1):
            x, residual = self.block(torch.tensor([i]), x)
            x, worst = x[0], max(worst, residual)
        return x, worst


def build_construction(
    h: TanhMap, m: int, S: Tensor, c_scale: float = 1.0, rotation_scale: float = 1.0,
    last_skip_identity: bool = False,
) -> Construction:
    """The proof's a_i and W_i for m blocks.

    c = c_scale log(m) / m, a_i = (1 - c)^(m - i): then a_0 = (1 - c)^m ~ m^(-c_scale).
    Every block after the first is within O(a_i - a_(i-1)) <= O(c) = O(log m / m) of W_i.
    The first, h_1 = g_1 (g_0 = Id, not h(a_0 .)/a_0), is W_1^T Dh(0) W_1 + O(a_1), so its
    gap ||h_1 - W_1||_L is about ||Dh(0) - I|| + O(a_1): O(log m / m) only when Dh(0) ~ I
    (module docstring). W_i = expm(theta_i S) with theta_i = rotation_scale (a_i - a_(i-1));
    ``last_skip_identity`` sets W_m = I, the one choice for which g_m = h.
    """
    if m < 1:
        raise ValueError(f"m must be >= 1; got {m}")
    c = c_scale * math.log(m) / m
    if not 0.0 <= c < 1.0:
        raise ValueError(f"c = c_scale log(m) / m must be in [0, 1); got {c:g} for m={m}, c_scale={c_scale}")
    i = torch.arange(m + 1, dtype=DTYPE)
    a = (1.0 - c) ** (m - i)  # (m + 1,)
    theta = rotation_scale * (a[1:] - a[:-1])  # (m,) theta_1 .. theta_m
    if last_skip_identity:
        theta[-1] = 0.0
    W = orth.expm(theta[:, None, None] * S)  # (m, d, d)
    W = torch.cat([torch.eye(h.dim, dtype=DTYPE)[None], W])  # W_0 = I
    return Construction(h=h, c=c, a=a, W=W)


# --------------------------------------------------------------------------- measurements


def measure_construction(con: Construction, x: Tensor, pairs: tuple[Tensor, Tensor]) -> dict:
    """Everything the theorem speaks of, for one construction.

    x: (N, d) points of B_R. pairs: two (P, d) tensors of points of B_R.
    For block i the domain is h_(i-1) o ... o h_1 (B_R) = g_(i-1)(B_R), so block i is
    probed at z = g_(i-1)(u) for the sampled u.

    - composition_error: max_x ||h_m o ... o h_1 (x) - h(x)|| through numerical inverses;
      structural_error: max_x ||g_m(x) - h(x)||, its part that no solver can remove.
    - lipschitz_gap_jacobian: max_i max_u ||D(h_i - W_i)(z)||_2 with
      D h_i(z) = Dg_i(u) Dg_(i-1)(u)^(-1) (inverse function theorem);
      lipschitz_gap_pairs: max_i max over pairs of ||F_i(z) - F_i(z')|| / ||z - z'||,
      F_i = h_i - W_i evaluated through the numerical inverse of g_(i-1);
      lipschitz_gap: the larger (both are lower estimates of ||h_i - W_i||_L).
    - identity_distance: max_i ||I - W_i||_2.
    - per-block arrays (length m) of the gaps and ||I - W_i||_2.
    """
    # Every tensor here is tiny (N x d, d ~ 4): one intra-op thread is ~100x faster than
    # two on a busy machine (a (1, 256, 4) @ (4, 4) product: 9 us against 1.3 ms).
    with orth.one_thread():
        return _measure(con, x, pairs)


def _measure(con: Construction, x: Tensor, pairs: tuple[Tensor, Tensor]) -> dict:
    m, h = con.m, con.h
    composed, residual = con.compose(x)
    target = h(x)
    composition_error = float(torch.linalg.vector_norm(composed - target, dim=-1).max())
    structural_error = float(torch.linalg.vector_norm(con.g(torch.tensor([m]), x)[0] - target, dim=-1).max())

    p, q = pairs
    gap_jac = torch.empty(m, dtype=DTYPE)
    gap_pairs = torch.empty(m, dtype=DTYPE)
    d, n = h.dim, x.shape[0]
    chunk = max(1, 2**22 // (n * d * d))  # blocks per batch: bounded memory for large d
    for i in torch.arange(1, m + 1).split(chunk):  # i: (K,) block indices
        Dg, Dg_prev = con.g_jacobian(i, x), con.g_jacobian(i - 1, x)  # (K, N, d, d)
        # D h_i = Dg_i Dg_(i-1)^(-1): solve X Dg_(i-1) = Dg_i as Dg_(i-1)^T X^T = Dg_i^T
        Dh_i = orth.solve_safe(Dg_prev.mT, Dg.mT).mT
        W_i = con.W[i]  # (K, d, d)
        gap_jac[i - 1] = torch.linalg.matrix_norm(Dh_i - W_i.unsqueeze(1), ord=2).amax(-1)

        zp, zq = con.g(i - 1, p), con.g(i - 1, q)  # (K, P, d): points of block i's domain
        hp, rp = con.block(i, zp)
        hq, rq = con.block(i, zq)
        residual = max(residual, rp, rq)
        Fp, Fq = hp - zp @ W_i.mT, hq - zq @ W_i.mT  # F_i = h_i - W_i
        ratio = torch.linalg.vector_norm(Fp - Fq, dim=-1) / torch.linalg.vector_norm(zp - zq, dim=-1)
        gap_pairs[i - 1] = ratio.amax(-1)

    identity = orth.identity_distance_spectral(con.W[1:])  # (m,)
    gap = torch.maximum(gap_jac, gap_pairs)
    return {
        "m": m,
        "c": con.c,
        "composition_error": composition_error,
        "structural_error": structural_error,
        "lipschitz_gap": float(gap.max()),
        "lipschitz_gap_jacobian": float(gap_jac.max()),
        "lipschitz_gap_pairs": float(gap_pairs.max()),
        "lipschitz_gap_block1": float(gap[0]),
        "lipschitz_gap_rest": float(gap[1:].max()) if m > 1 else None,
        "identity_distance": float(identity.max()),
        "newton_residual": residual,
        "per_block": {
            "lipschitz_gap": gap.tolist(),
            "identity_distance": identity.tolist(),
        },
    }


def reference_rate(m) -> Tensor | float:
    """log(m) / m, the theorem's rate."""
    return math.log(m) / m if isinstance(m, (int, float)) else torch.log(m) / m


# a distance ||W_i - I|| at or below this is 0 (the skip is I): log 0 has no slope, so a depth
# trend is not taken over the other depths (analysis.depth, report.depth)
ZERO_DISTANCE = 1e-12


def loglog_slope(ms, ys, floor: float = 0.0) -> float | None:
    """Least-squares slope of log y against log m over the points with y > floor (and
    m >= 2); None when fewer than two remain. A quantity that is O(m^-p) has slope -p;
    log(m)/m has the local slope -1 + 1/log(m) (+0.44 at m = 2, -0.82 at m = 256), and a
    least-squares slope of -0.60 over m = 2, 4, ..., 256 (config/theorem.yaml's ms)."""
    pts = [(math.log(m), math.log(y)) for m, y in zip(ms, ys)
           if m >= 2 and y is not None and math.isfinite(y) and y > floor]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    return sxy / sxx
