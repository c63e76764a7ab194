"""Diagnostics of trained blocks: Lipschitz constants of residual branches, Procrustes fits."""

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import torch
from torch import nn

from orthogonal_skip_connections import ResidualMLP
from orthogonal_skip_connections.maths.orthogonal import polar
from orthogonal_skip_connections.diagnostics import (
    ACTIVATION_LIPSCHITZ,
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


def _derivative(act: nn.Module, t: torch.Tensor) -> torch.Tensor:
    t = t.detach().double().requires_grad_(True)
    return torch.autograd.grad(act(t).sum(), t)[0].abs()


@pytest.mark.parametrize("cls", list(ACTIVATION_LIPSCHITZ), ids=lambda c: c.__name__)
def test_activation_lipschitz_constants_are_the_sup_of_the_derivative(cls):
    """Each constant is sup_t |sigma'(t)|, rounded up at most in the 4th decimal (GELU; the
    5th for SiLU and Mish): the autograd derivative on a 1e-4 grid of [-40, 40] (wide enough for
    Softplus, whose derivative reaches 1 only at its threshold 20), refined around its largest
    value by scipy's bounded scalar minimiser, never exceeds it and comes within 1e-4 of it.
    A constant below the sup (GELU at 1.0) would make lipschitz_upper_bound no bound."""
    act = (cls(0.5) if cls is nn.Dropout else cls()).eval()  # measured in eval mode: dropout is the identity
    grid = torch.linspace(-40, 40, 800_001, dtype=torch.float64)
    d = _derivative(act, grid)
    t0 = float(grid[d.argmax()])
    res = scipy.optimize.minimize_scalar(lambda t: -float(_derivative(act, torch.tensor([t]))[0]),
                                         bounds=(t0 - 1e-4, t0 + 1e-4), method="bounded",
                                         options={"xatol": 1e-12})
    sup = max(float(d.max()), -res.fun)
    const = ACTIVATION_LIPSCHITZ[cls]
    assert sup <= const <= sup + 1e-4, (sup, const)
    assert lipschitz_upper_bound(act) == const
    if cls is nn.GELU:  # the closed form: Phi(sqrt 2) + sqrt 2 phi(sqrt 2), at t = sqrt 2
        exact = scipy.stats.norm.cdf(np.sqrt(2)) + np.sqrt(2) * scipy.stats.norm.pdf(np.sqrt(2))
        assert sup == pytest.approx(exact, rel=1e-12) and res.x == pytest.approx(np.sqrt(2), abs=1e-5)


@pytest.mark.parametrize("act,want", [(nn.LeakyReLU(0.1), 1.0), (nn.LeakyReLU(-3.0), 3.0), (nn.ELU(2.0), 2.0),
                                      (nn.ELU(0.5), 1.0)], ids=["leaky0.1", "leaky-3", "elu2", "elu0.5"])
def test_leaky_relu_and_elu_bounds_are_the_sup_of_the_derivative(act, want):
    """The parametrised activations' bounds, max(1, |slope|) and max(1, alpha): the sup of the
    derivative, reached on the grid (ELU's alpha e^t only as t -> 0-)."""
    d = _derivative(act, torch.linspace(-10, 10, 200_001, dtype=torch.float64))
    assert lipschitz_upper_bound(act) == want
    assert float(d.max()) <= want <= float(d.max()) * (1 + 1e-4)


def test_jacobian_spectral_norms_match_autograd_jacobians_point_by_point():
    """||D f(x)||_2 at each point, against torch.autograd.functional.jacobian and numpy's
    2-norm one point at a time (a max over points, or a Frobenius norm, would not match)."""
    torch.manual_seed(2)
    branch = nn.Sequential(nn.Linear(3, 8), nn.GELU(), nn.Linear(8, 4), nn.Tanh()).double()
    X = 1.5 * torch.randn(25, 3, dtype=torch.float64)
    want = [np.linalg.norm(torch.autograd.functional.jacobian(branch, x).numpy(), 2) for x in X]
    got = jacobian_spectral_norms(branch, X, chunk_size=4)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    assert np.ptp(want) > 0.1 * max(want)  # the points differ: a per-point check, not one number
    assert empirical_lipschitz(branch, X) == pytest.approx(max(want), rel=1e-12)
    assert max(want) <= lipschitz_upper_bound(branch)


def _relu_kept_by_hand(model, x):
    """The stream walked block by block in eval mode, each block's pieces called apart:
    (||relu(W s)||² / ||W s||², ||relu(z)||² / ||z||²) per block, z = residual(W s, f(s))."""
    from orthogonal_skip_connections.models.resnet import BasicBlock

    def kept(v):
        v = v.double()
        return float(v.clamp(min=0).square().sum() / v.square().sum())

    model.eval()
    out, z = [], model.stem(x)
    for b in (m for m in model.stages.modules() if isinstance(m, BasicBlock)):  # the blocks, in order
        skip_out, f = b.skip(b.shortcut(z)), b.branch(z)
        out.append((kept(skip_out), kept(b.residual(skip_out, f))))
        z = b(z)
    return out


@pytest.mark.parametrize("kind,opts", [("identity", {}), ("learnable_orth", {"method": "cayley", "init": "haar"}),
                                       ("linear", {})])
def test_relu_kept_energy_matches_the_blocks_called_by_hand(kind, opts):
    from orthogonal_skip_connections.diagnostics import relu_kept_energy
    from orthogonal_skip_connections.models import get_model

    torch.manual_seed(0)
    model = get_model("resnet20", 10, skip_kind=kind, in_channels=1, **opts)
    x = torch.randn(32, 1, 8, 8)
    rows = relu_kept_energy(model, x)
    assert model.training  # left in the mode it was in
    with torch.no_grad():
        want = _relu_kept_by_hand(model, x)
    assert len(rows) == len(want) == 9
    for row, (skip_kept, sum_kept) in zip(rows, want):
        assert row["skip_kept"] == pytest.approx(skip_kept, abs=1e-6)
        assert row["sum_kept"] == pytest.approx(sum_kept, abs=1e-6)
    projection = [not isinstance(b.shortcut, nn.Identity) for b in model.modules() if hasattr(b, "shortcut")]
    if kind == "identity":
        # the stream entering a block is a ReLU's output: the identity skip keeps all of it;
        # only a projection shortcut (conv, BN) gives the ReLU something to cut
        assert [r["skip_kept"] == 1.0 for r in rows] == [not p for p in projection]
    if kind == "learnable_orth":
        # a Haar W mixes the non-negative stream's channels: the ReLU cuts about half
        assert max(r["skip_kept"] for r, p in zip(rows, projection) if not p) < 0.8


def test_relu_kept_energy_refuses_a_net_without_a_relu_after_the_sum():
    from orthogonal_skip_connections.diagnostics import relu_kept_energy, summarize_relu_kept
    from orthogonal_skip_connections.models import get_model

    model = get_model("preact_resnet20", 10, skip_kind="identity", in_channels=1)
    with pytest.raises(ValueError, match="no post-activation residual block"):
        relu_kept_energy(model, torch.randn(4, 1, 8, 8))
    # the trainer's summary leaves such a net without the measure instead
    assert set(summarize_relu_kept(model, torch.randn(4, 1, 8, 8)).values()) == {None}


def test_lipschitz_bound_is_the_product_of_the_layers_constants():
    """Lip(f_k o ... o f_1) <= prod_k Lip(f_k): the bound of a stack is the product of its layers'
    spectral norms and activation constants (not their largest), nested Sequentials included."""
    torch.manual_seed(0)
    a, b = nn.Linear(4, 6).double(), nn.Linear(6, 4).double()
    with torch.no_grad():
        a.weight.mul_(3.0), b.weight.mul_(2.0)  # both norms > 1, so a max and a product differ
    norm = lambda lin: torch.linalg.matrix_norm(lin.weight, ord=2).item()  # noqa: E731
    branch = nn.Sequential(a, nn.Sigmoid(), nn.Sequential(b, nn.GELU()))
    want = norm(a) * ACTIVATION_LIPSCHITZ[nn.Sigmoid] * norm(b) * ACTIVATION_LIPSCHITZ[nn.GELU]
    assert lipschitz_upper_bound(branch) == pytest.approx(want, rel=1e-12)


def test_fit_blocks_matches_scipy_procrustes_and_numpy_least_squares_block_by_block():
    """analysis.blocks.fit_blocks, per block of a non-linear ResidualMLP: block i's map is fitted
    from its own inputs z_i (the embedding, then each block in turn, run by hand here) to its
    outputs: the orthogonal fit against scipy's orthogonal_procrustes (||Q - I||_F, ||Q - W_i||_F,
    the residual), the linear fit against numpy's least squares."""
    import scipy.linalg

    from orthogonal_skip_connections.analysis.blocks import fit_blocks

    torch.manual_seed(0)
    model = ResidualMLP(dim=4, depth=3, in_features=3, skip_kind="fixed_orth", activation="tanh").double()
    with torch.no_grad():
        for block in model.blocks:
            block.branch[0].weight.mul_(3)  # a clearly non-linear block
    X = torch.randn(60, 3, dtype=torch.float64)
    out = fit_blocks(model, X)
    z = model.embed(X).detach()
    for i, block in enumerate(model.blocks):
        y = block(z).detach()
        Zn, Yn = z.numpy(), y.numpy()
        R, _ = scipy.linalg.orthogonal_procrustes(Zn, Yn)  # argmin ||Z R - Y||_F over orthogonal R = Q^T
        W = block.skip.weight.detach().double().numpy()
        coef = np.linalg.lstsq(Zn, Yn, rcond=None)[0]
        assert out["procrustes_residual"][i] == pytest.approx(np.linalg.norm(Zn @ R - Yn) / np.linalg.norm(Yn),
                                                              rel=1e-9)
        assert out["procrustes_identity_distance"][i] == pytest.approx(np.linalg.norm(R.T - np.eye(4)), rel=1e-9)
        assert out["procrustes_skip_distance"][i] == pytest.approx(np.linalg.norm(R.T - W), rel=1e-9)
        assert out["linear_residual"][i] == pytest.approx(np.linalg.norm(Zn @ coef - Yn) / np.linalg.norm(Yn),
                                                          rel=1e-9)
        assert 1e-3 < out["linear_residual"][i] < out["procrustes_residual"][i]
        z = y
