"""Projections, maps and manifold steps on O(n), against independent oracles."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from orthogonal_skip_connections.maths import orthogonal as O


def tol(dtype, n):
    """Round-off scale for ||W^T W - I||_F of an n x n matrix computed in ``dtype``."""
    return 50 * n * torch.finfo(dtype).eps


def conditioned(n, log10_cond, seed, dtype):
    """A random n x n matrix with singular values spread log-uniformly over 10**log10_cond."""
    g = torch.Generator().manual_seed(seed)
    U = O.haar_orthogonal(n, generator=g, dtype=torch.float64)
    V = O.haar_orthogonal(n, generator=g, dtype=torch.float64)
    s = torch.logspace(0, -log10_cond, n, dtype=torch.float64)
    return (U * s) @ V.T * 3.7  # an arbitrary overall scale too


PROJECTIONS = [O.polar, O.qr_orthogonal, O.newton_schulz]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 24), log10_cond=st.floats(0, 3), seed=st.integers(0, 2**31 - 1))
def test_projections_orthogonal_fp32(n, log10_cond, seed):
    A = conditioned(n, log10_cond, seed, torch.float64).float()
    for project in PROJECTIONS:
        Q = project(A)
        assert Q.dtype == torch.float32
        assert O.orth_error(Q) <= tol(torch.float32, n), project.__name__


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 16), log10_cond=st.floats(3, 8), seed=st.integers(0, 2**31 - 1))
def test_projections_orthogonal_ill_conditioned_fp64(n, log10_cond, seed):
    A = conditioned(n, log10_cond, seed, torch.float64)
    for project in PROJECTIONS:
        assert O.orth_error(project(A)) <= tol(torch.float64, n), project.__name__


def test_polar_and_newton_schulz_match_scipy_polar():
    A = torch.randn(5, 12, 12, dtype=torch.float64)
    for a in A:
        u, _ = scipy.linalg.polar(a.numpy())
        np.testing.assert_allclose(O.polar(a).numpy(), u, atol=1e-10)
        np.testing.assert_allclose(O.newton_schulz(a).numpy(), u, atol=1e-10)
    # batched call agrees with one call per matrix
    torch.testing.assert_close(O.polar(A), torch.stack([O.polar(a) for a in A]))


def test_projections_idempotent_on_orthogonal_input():
    Q = O.haar_orthogonal(32, 4, special=False)
    for project in PROJECTIONS:
        torch.testing.assert_close(project(Q), Q, atol=2e-5, rtol=0)


def test_qr_signs_fixed_returns_q_of_positive_r():
    Q = O.haar_orthogonal(10, dtype=torch.float64)
    R = torch.triu(torch.randn(10, 10, dtype=torch.float64))
    R.diagonal().abs_().add_(0.1)
    torch.testing.assert_close(O.qr_orthogonal(Q @ R), Q)


def test_newton_schulz_is_exact_not_muon_band():
    A = torch.randn(64, 64)
    X, steps = O.newton_schulz(A, return_steps=True)
    assert O.orth_error(X) < 1e-4 and steps > 5
    torch.testing.assert_close(X, O.polar(A), atol=1e-4, rtol=0)


def test_cayley_and_expm_from_skew():
    A = O.skew(torch.randn(3, 9, 9, dtype=torch.float64))
    for f in (O.cayley, O.expm):
        Q = f(A)
        assert O.orth_error(Q).max() < 1e-12
        assert torch.allclose(torch.linalg.det(Q), torch.ones(3, dtype=torch.float64))
    np.testing.assert_allclose(O.expm(A[0]).numpy(), scipy.linalg.expm(A[0].numpy()), atol=1e-12)
    small = 1e-3 * A  # Cayley = exp up to second order
    assert (O.cayley(small) - O.expm(small)).abs().max() < 1e-8


def test_procrustes_matches_scipy_and_recovers_rotation():
    X = torch.randn(200, 7, dtype=torch.float64)
    Q_true = O.haar_orthogonal(7, dtype=torch.float64, special=False)
    Y = X @ Q_true.T + 0.1 * torch.randn(200, 7, dtype=torch.float64)
    Q, rel = O.procrustes(X, Y)
    R, _ = scipy.linalg.orthogonal_procrustes(X.numpy(), Y.numpy())  # min ||X R - Y||
    np.testing.assert_allclose(Q.numpy(), R.T, atol=1e-10)
    assert 0 < float(rel) < 0.2
    Q0, rel0 = O.procrustes(X, X @ Q_true.T)
    torch.testing.assert_close(Q0, Q_true)
    assert float(rel0) < 1e-12


def procrustes_loss(W, X, Y):
    return ((X @ W.T - Y) ** 2).sum()


@pytest.mark.parametrize("n", [6, 7])
def test_steepest_step_decreases_procrustes_loss(n):
    X = torch.randn(50, n, dtype=torch.float64)
    Y = X @ O.haar_orthogonal(n, dtype=torch.float64).T
    W = O.haar_orthogonal(n, dtype=torch.float64).requires_grad_()
    loss = procrustes_loss(W, X, Y)
    (G,) = torch.autograd.grad(loss, W)
    W1 = O.steepest_step(W.detach(), G, eta=1e-3)
    assert procrustes_loss(W1, X, Y) < loss
    assert O.orth_error(W1) < 1e-12


@pytest.mark.parametrize("n", [2, 3, 64, 65])
def test_steepest_step_stays_on_manifold(n):
    g = torch.Generator().manual_seed(n)
    W = O.haar_orthogonal(n, 2, generator=g)
    for _ in range(300):
        W = O.steepest_step(W, torch.randn(2, n, n, generator=g), eta=0.1)
    assert O.orth_error(W).max() < tol(torch.float32, n)


def test_steepest_step_full_rank_branch_is_the_closed_form():
    W = O.haar_orthogonal(8, dtype=torch.float64)
    G = torch.randn(8, 8, dtype=torch.float64)
    A = W.T @ G - G.T @ W
    U, S, Vh = torch.linalg.svd(A)
    X = U @ Vh
    expected = W @ (torch.eye(8, dtype=torch.float64) - 0.3 * X) / math.sqrt(1 + 0.09)
    torch.testing.assert_close(O.steepest_step(W, G, 0.3), expected)


def test_steepest_step_zero_gradient_and_odd_rank():
    W = O.haar_orthogonal(5)
    torch.testing.assert_close(O.steepest_step(W, torch.zeros(5, 5), 0.5), W)
    # a rank-one skew direction in n = 5 takes the polar branch and stays orthogonal
    G = torch.zeros(5, 5)
    G[0, 1] = 1.0
    W1 = O.steepest_step(W, W @ G, 0.5)
    assert O.orth_error(W1) < 1e-5 and (W1 - W).abs().max() > 1e-2


def test_haar_special_and_reproducible():
    Q = O.haar_orthogonal(6, 200, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(torch.linalg.det(Q), torch.ones(200), atol=1e-4)
    Q2 = O.haar_orthogonal(6, 200, generator=torch.Generator().manual_seed(1))
    assert torch.equal(Q, Q2)
    signs = torch.linalg.det(O.haar_orthogonal(6, 200, special=False)).sign()
    assert (signs > 0).any() and (signs < 0).any()
    # Haar: E[W_ij^2] = 1/n
    assert abs(float((Q**2).mean()) - 1 / 6) < 0.01


def test_measures():
    W = 2 * torch.eye(3)
    assert float(O.orth_error(W)) == pytest.approx(3 * math.sqrt(3))
    assert float(O.identity_distance(W)) == pytest.approx(math.sqrt(3))
    assert float(O.identity_distance_spectral(W)) == pytest.approx(1.0)


def test_safe_svd_retries_in_float64(monkeypatch):
    real_svd = torch.linalg.svd
    calls = []

    def flaky(A, full_matrices=True):
        calls.append(A.dtype)
        if A.dtype == torch.float32:
            raise torch.linalg.LinAlgError("The algorithm failed to converge")
        return real_svd(A, full_matrices=full_matrices)

    monkeypatch.setattr(torch.linalg, "svd", flaky)
    A = torch.randn(4, 4)
    Q = O.polar(A)
    assert calls == [torch.float32, torch.float64]
    assert Q.dtype == torch.float32 and O.orth_error(Q) < 1e-5


def test_bad_shapes_say_what_was_expected():
    with pytest.raises(ValueError, match=r"\(\.\.\., n, n\); got \(3, 4\)"):
        O.polar(torch.randn(3, 4))
    with pytest.raises(ValueError, match="shape of W"):
        O.steepest_step(torch.eye(3), torch.zeros(4, 4), 0.1)
