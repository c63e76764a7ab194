"""Diagnostics of trained blocks: Lipschitz constants of residual branches, Procrustes fits."""

import pytest
import torch
from torch import nn

from orthogonal_skip_connections import ResidualMLP
from orthogonal_skip_connections.maths.orthogonal import polar
from orthogonal_skip_connections.diagnostics import (
    block_procrustes,
    branch_lipschitz,
    empirical_lipschitz,
    jacobian_spectral_norms,
    lipschitz_upper_bound,
    procrustes_fit,
)


def _zero_branches(model):
    with torch.no_grad():
        for block in model.blocks:
            block.branch[-1].weight.zero_()
            block.branch[-1].bias.zero_()


def test_procrustes_error_is_zero_for_an_exactly_orthogonal_block():
    """With f_i = 0 a block is x -> W_i x, W_i orthogonal: the fit recovers W_i exactly."""
    model = ResidualMLP(dim=5, depth=3, skip_kind="fixed_orth").double()
    _zero_branches(model)
    with torch.no_grad():  # Haar skips are drawn in float32: make them orthogonal in float64
        for block in model.blocks:
            block.skip.weight.copy_(polar(block.skip.weight))
    X = torch.randn(64, 5, dtype=torch.float64)
    rows = block_procrustes(model, X)
    assert len(rows) == 3
    for row in rows:
        assert row["procrustes_residual"] < 1e-13
        assert row["procrustes_skip_distance"] < 1e-12
        assert row["procrustes_identity_distance"] > 0.1  # a Haar W is far from I
    # ... and a block with a non-linear branch is not orthogonal
    model = ResidualMLP(dim=5, depth=1, skip_kind="identity", activation="tanh").double()
    with torch.no_grad():
        model.blocks[0].branch[0].weight.mul_(5)
    assert block_procrustes(model, X)[0]["procrustes_residual"] > 1e-3
    assert block_procrustes(model, X)[0]["procrustes_skip_distance"] is None  # identity has no matrix


def test_procrustes_fit_of_a_map():
    Q0 = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]
    Q, rel = procrustes_fit(lambda x: x @ Q0.T, torch.randn(20, 4, dtype=torch.float64))
    assert rel < 1e-13 and torch.allclose(Q, Q0, atol=1e-12)
    with pytest.raises(ValueError, match="R\\^d -> R\\^d"):
        procrustes_fit(lambda x: x[:, :2], torch.randn(5, 4))


def test_lipschitz_estimate_is_exact_for_a_linear_branch():
    lin = nn.Linear(6, 4).double()
    X = torch.randn(10, 6, dtype=torch.float64)
    exact = torch.linalg.matrix_norm(lin.weight, ord=2).item()
    assert empirical_lipschitz(lin, X) == pytest.approx(exact, rel=1e-12)
    assert lipschitz_upper_bound(lin) == pytest.approx(exact, rel=1e-12)
    # a two-layer linear branch: the estimate is the exact ||W2 W1||_2, the bound only >= it
    branch = nn.Sequential(nn.Linear(6, 12), nn.Identity(), nn.Linear(12, 6)).double()
    exact = torch.linalg.matrix_norm(branch[2].weight @ branch[0].weight, ord=2).item()
    assert empirical_lipschitz(branch, X) == pytest.approx(exact, rel=1e-12)
    assert lipschitz_upper_bound(branch) >= exact * (1 - 1e-12)
    # inside a model: the branches of a ResidualMLP with a linear-looking activation
    model = ResidualMLP(dim=3, depth=2, activation="relu").double()
    with torch.no_grad():
        for b in model.blocks:  # positive inputs and weights: ReLU is the identity here
            b.branch[0].weight.abs_(), b.branch[0].bias.abs_()
    Xp = torch.rand(30, 3, dtype=torch.float64)
    rows = branch_lipschitz(model, Xp)
    for b, row in zip(model.blocks, rows):
        exact = torch.linalg.matrix_norm(b.branch[2].weight @ b.branch[0].weight, ord=2).item()
        assert row["lipschitz_empirical"] == pytest.approx(exact, rel=1e-10)
        assert row["lipschitz_bound"] >= exact * (1 - 1e-12)


def test_lipschitz_bound_and_estimate_on_nonlinear_branches():
    torch.manual_seed(1)
    branch = nn.Sequential(nn.Linear(3, 8), nn.GELU(), nn.Linear(8, 3), nn.Sigmoid())
    X = torch.randn(200, 3)
    est, bound = empirical_lipschitz(branch, X), lipschitz_upper_bound(branch)
    assert 0 < est <= bound
    norms = jacobian_spectral_norms(branch, X, chunk_size=7)  # chunking gives the same answer
    assert norms.shape == (200,) and torch.allclose(norms, jacobian_spectral_norms(branch, X))
    assert branch_lipschitz(ResidualMLP(dim=3, depth=2))[0]["lipschitz_empirical"] is None
    with pytest.raises(ValueError, match="cannot bound the Lipschitz constant of LayerNorm"):
        lipschitz_upper_bound(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)))
    with pytest.raises(ValueError, match="no `blocks`"):
        branch_lipschitz(nn.Linear(3, 3))
