"""The cheaper forms of a skip's cost give the numbers of the plain ones: the fused
product-and-sum, the skip folded into a pre-activation projection, the Householder map in
compact WY form, and the optimiser's step with nothing to retract."""

import pytest
import torch
import torch.nn.functional as F

import orthogonal_skip_connections as osc
from orthogonal_skip_connections.optim import param_groups
from orthogonal_skip_connections.maths import orthogonal as orth
from orthogonal_skip_connections.models.resnet import PreActBlock
from orthogonal_skip_connections.skips import apply_matrix, apply_matrix_add, iter_skips


@pytest.mark.parametrize("shape", [(4, 16, 8, 8), (5, 16), (3, 7, 16)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_fused_product_and_sum_equals_product_then_sum(shape, channels_last):
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    if channels_last and len(shape) == 4:
        x, out = (t.contiguous(memory_format=torch.channels_last) for t in (x, out))
    W = torch.randn(16, 16, generator=g)
    fused = apply_matrix_add(x, W, out)
    assert torch.allclose(fused, apply_matrix(x, W) + out, atol=1e-5)
    assert fused.shape == out.shape
    if len(shape) == 4:
        assert fused.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("kind,options", [("linear", {}), ("learnable_orth", {"method": "cayley", "init": "haar"}),
                                          ("learnable_orth", {"method": "steepest", "init": "haar"})])
def test_matrix_skips_folded_and_fused_give_the_plain_forward(kind, options):
    """Every block's sum recomputed by hand as skip(shortcut(x)) + branch(x), unfused."""
    torch.manual_seed(0)
    model = osc.get_model("preact_resnet20", 10, skip_kind=kind, **options).to(memory_format=torch.channels_last)
    for _, s in iter_skips(model):  # move every W away from I so that a wrong fold shows
        for p in s.parameters():
            p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    plain = {}

    def hook(block, inputs, output):
        (xin,) = inputs
        pre = block.preact(xin)
        stream = xin if block.shortcut is None else block.shortcut(pre)
        plain[block] = (block.skip(stream) + block.branch(pre), output)

    for block in model.modules():
        if isinstance(block, PreActBlock):
            block.register_forward_hook(hook)
    model(x).sum().backward()
    assert len(plain) == 9
    for expected, got in plain.values():
        assert torch.allclose(expected, got, atol=1e-5)


def test_householder_wy_is_torchs_householder_product():
    g = torch.Generator().manual_seed(0)
    X = (0.4 * torch.randn(3, 24, 24, generator=g, dtype=torch.float64)).requires_grad_()
    A = X.tril(-1)
    ref = torch.linalg.householder_product(A, 2.0 / (1.0 + (A * A).sum(dim=-2)))
    Q = orth.householder_wy(X)
    assert torch.allclose(Q, ref, atol=1e-12)
    G = torch.randn(3, 24, 24, generator=g, dtype=torch.float64)
    (g_ref,) = torch.autograd.grad((ref * G).sum(), X)
    (g_wy,) = torch.autograd.grad((Q * G).sum(), X)
    assert torch.allclose(g_ref, g_wy, atol=1e-12)


def test_householder_skip_has_torchs_state_and_weight():
    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    ours = osc.orthogonal_(torch.nn.Linear(12, 12, bias=False), "weight", method="householder", init="haar")
    theirs = parametrizations.orthogonal(torch.nn.Linear(12, 12, bias=False), "weight", orthogonal_map="householder")
    with torch.no_grad():  # move the free parameters below the fixed diagonal
        ours.parametrizations.weight.original.add_(0.1 * torch.randn(12, 12).tril(-1))
    theirs.load_state_dict(ours.state_dict())
    assert torch.allclose(ours.weight, theirs.weight, atol=1e-6)
    assert orth.orth_error(ours.weight) < 1e-5


def test_householder_skip_survives_a_plain_optimizer_s_weight_decay():
    """Parametrized skips train with any optimiser: a plain AdamW (default weight_decay 0.01)
    shrinks the +-1 diagonal the map reads its signs from; torch's .int() read of it turned
    W into 0 after one step."""
    torch.manual_seed(0)
    skip = osc.make_skip("learnable_orth", 6, method="householder", init="haar")
    signs = skip.parametrizations.weight.original.diagonal().clone()
    opt = torch.optim.AdamW(skip.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        skip(torch.randn(4, 6)).sum().backward()
        opt.step()
    diagonal = skip.parametrizations.weight.original.diagonal()
    assert (diagonal.abs() < 1).all() and torch.equal(diagonal.sign(), signs)  # decayed, same signs
    assert orth.orth_error(skip.weight.detach()) < 1e-5


@pytest.mark.parametrize("batch", [(), (3,)])
def test_cayley_skip_is_torchs_cayley_map_bit_for_bit(batch):
    """OrthogonalMap's Cayley map skips torch's singularity check (a host read), nothing
    else: the same W and the same gradients as torch's own parametrization, exactly."""
    from torch.nn.utils import parametrizations

    from orthogonal_skip_connections.skips.constraint import OrthogonalMap

    g = torch.Generator().manual_seed(0)
    W = torch.linalg.qr(torch.randn(*batch, 16, 16, generator=g))[0]
    cayley = parametrizations._OrthMaps.cayley
    ours = OrthogonalMap(W, cayley, use_trivialization=True)
    theirs = parametrizations._Orthogonal(W, cayley, use_trivialization=True)
    ours.base, theirs.base = W, W  # W = base @ cayley(X), as after registration
    X = (0.3 * torch.randn(*batch, 16, 16, generator=g)).requires_grad_()
    G = torch.randn(*batch, 16, 16, generator=g)
    Q_ours, Q_theirs = ours(X), theirs(X)
    assert torch.equal(Q_ours, Q_theirs) and orth.orth_error(Q_ours).max() < 1e-5
    (g_ours,) = torch.autograd.grad((Q_ours * G).sum(), X)
    (g_theirs,) = torch.autograd.grad((Q_theirs * G).sum(), X)
    assert torch.equal(g_ours, g_theirs)


def test_optimizer_without_retracted_groups_steps_like_the_plain_one_and_calls_hooks_once():
    torch.manual_seed(0)
    a = torch.nn.Linear(5, 5)
    b = torch.nn.Linear(5, 5)
    b.load_state_dict(a.state_dict())
    plain = torch.optim.SGD(param_groups(a, 1e-2), lr=0.1, momentum=0.9)  # torch hooks SGD.step now
    ours = osc.optimizer(b, torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=1e-2)
    calls = []
    ours.register_step_pre_hook(lambda *args: calls.append(1))
    for _ in range(3):
        for m, opt in ((a, plain), (b, ours)):
            opt.zero_grad()
            F.mse_loss(m(torch.ones(2, 5)), torch.zeros(2, 5)).backward()
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert len(calls) == 3  # once per step (torch's wrapper does not run twice)
