"""The skip contract: every kind, every input layout, the constraint kept under optimisation."""

import pytest
import torch
from torch import nn

import orthogonal_skip_connections as osc
from orthogonal_skip_connections.maths import orthogonal as O
from orthogonal_skip_connections.skips import (
    ORTH_METHODS,
    SKIP_KINDS,
    OrthogonalSkip,
    apply_matrix,
    make_skip,
)

ALL_VARIANTS = [(k, {}) for k in SKIP_KINDS if k != "learnable_orth"] + [
    ("learnable_orth", {"method": m, "init": i}) for m in ORTH_METHODS for i in ("identity", "haar")
]


@pytest.mark.parametrize("kind,opts", ALL_VARIANTS)
def test_every_kind_applies_to_every_layout(kind, opts):
    C = 6
    skip = make_skip(kind, C, **opts)
    W = skip.weight
    x2, x3, x4 = torch.randn(5, C), torch.randn(5, 4, C), torch.randn(5, C, 3, 3)
    for x in (x2, x3):
        y = skip(x) + torch.zeros_like(x)
        expected = x if kind == "identity" else torch.zeros_like(x) if kind == "zero" else x @ W.T
        torch.testing.assert_close(y, expected)
    y4 = skip(x4) + torch.zeros_like(x4)
    expected4 = torch.einsum("oc,nchw->nohw", W, x4) if W is not None else (x4 if kind == "identity" else 0 * x4)
    torch.testing.assert_close(y4, expected4)
    # channels_last input gives the same numbers
    y4_cl = skip(x4.contiguous(memory_format=torch.channels_last)) + torch.zeros_like(x4)
    torch.testing.assert_close(y4_cl, y4)
    if kind in ("fixed_orth", "learnable_orth"):
        assert O.orth_error(W.detach()) < 1e-5
    if kind == "idempotent":
        torch.testing.assert_close(W @ W, W, atol=1e-5, rtol=0)
        assert round(float(torch.trace(W))) == 3  # rank fraction 0.5 of 6


def test_apply_matrix_channels_last_needs_no_copy():
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    y = apply_matrix(x, O.haar_orthogonal(8))
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_matrix_skips_on_feature_maps_run_under_vmap(monkeypatch):
    """SeedStack (torch.func.vmap) over conv nets with matrix skips: inside vmap a tensor has
    no memory format to ask about, so the skip takes the conv2d path there; outside it a
    channels_last input still takes the GEMM path (conv2d is then never called)."""
    from orthogonal_skip_connections.models.resnet import BasicBlock, ResNet
    from orthogonal_skip_connections.models.stack import SeedStack
    from orthogonal_skip_connections.skips import skip

    def make():
        return ResNet(BasicBlock, [1, 1, 1], [8, 16, 16], 10, in_channels=1,
                      skip_layer=skip("learnable_orth", method="steepest", init="haar")).eval()

    stack = SeedStack.build(make, [0, 1]).eval()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = stack(x)
        for s in range(2):
            torch.testing.assert_close(out[s], stack.model(s).eval()(x), rtol=1e-5, atol=1e-5)
    W, xc = O.haar_orthogonal(8), torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    expected = apply_matrix(xc.contiguous(), W)  # NCHW: the 1x1 convolution

    def no_conv(*args, **kwargs):
        raise AssertionError("channels_last input outside vmap must take the GEMM path")

    monkeypatch.setattr(torch.nn.functional, "conv2d", no_conv)
    torch.testing.assert_close(apply_matrix(xc, W), expected)


def test_haar_init_is_special_unless_asked():
    dets = [torch.linalg.det(make_skip("learnable_orth", 4, init="haar").weight).item() for _ in range(20)]
    assert all(d > 0 for d in dets)
    dets = [
        torch.linalg.det(make_skip("learnable_orth", 4, init="haar", special=False).weight).item()
        for _ in range(40)
    ]
    assert any(d < 0 for d in dets)


def test_generator_makes_init_reproducible():
    """Every kind drawn at random takes its draw from ``generator``, not from torch's global RNG
    (moved between the two builds here): the same seed the same W, another seed another W."""
    for kind, opts in [("fixed_orth", {}), ("random", {}), ("idempotent", {}), ("learnable_orth", {"init": "haar"}),
                       ("learnable_orth", {"init": "haar", "method": "cayley"})]:
        a = make_skip(kind, 8, generator=torch.Generator().manual_seed(3), **opts).weight.detach()
        torch.manual_seed(123)
        b = make_skip(kind, 8, generator=torch.Generator().manual_seed(3), **opts).weight.detach()
        c = make_skip(kind, 8, generator=torch.Generator().manual_seed(4), **opts).weight.detach()
        assert torch.equal(a, b) and not torch.allclose(a, c), kind


def test_original_option_names_accepted():
    s = make_skip("learnable_orth", 4, update_rule="qr", update_rule_iters=7)
    assert s.method == "qr" and s.ns_steps == 7
    assert make_skip("learnable_orth", 4, update_rule="svd").method == "svd"


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: make_skip("bogus", 4), "unknown skip kind 'bogus'; allowed: identity, zero"),
        (lambda: make_skip("learnable_orth", 4, method="adam"), "allowed: steepest, svd, qr"),
        (lambda: make_skip("learnable_orth", 4, init="ones"), "allowed: identity, haar"),
        (lambda: make_skip("identity", 4, colour="red"), "unknown skip option"),
        (lambda: make_skip("idempotent", 4, rank_fraction=0), r"rank_fraction must be in \(0, 1\]"),
        (lambda: make_skip("linear", 0), "channels must be a positive int"),
        (lambda: make_skip("fixed_orth", 4, special="no"), "special must be True or False; got 'no'"),
    ],
)
def test_bad_input_names_allowed_values(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: osc.orthogonal_(nn.Linear(3, 3), special="no"), ValueError, "special must be True or False; got 'no'"),
        (lambda: osc.orthogonal_(nn.Linear(3, 3), method="newton_schulz", ns_steps=2.5), ValueError,
         r"ns_steps \(update_rule_iters\) must be an integer >= 1; got 2.5"),
        (lambda: osc.orthogonal_(nn.Linear(3, 3), method="newton_schulz", update_rule_iters=True), ValueError,
         "must be an integer >= 1; got True"),
        (lambda: osc.orthogonal_(nn.Linear(3, 3), method="cayley", ns_steps=0), ValueError, "got 0"),
        (lambda: OrthogonalSkip(3, method="newton_schulz", ns_steps=2.5), ValueError, "got 2.5"),
        (lambda: osc.orthogonal_(_int_matrix_module()), TypeError, "must be a floating-point matrix; got torch.int64"),
    ],
)
def test_orthogonal_refuses_what_skip_refuses(call, error, match):
    """orthogonal_ (and OrthogonalSkip built directly) took special="no" as True, ns_steps=2.5
    as 2 and True as 1, and an integer matrix, without a word; skip() refused the first three."""
    with pytest.raises(error, match=match):
        call()


def _int_matrix_module():
    m = nn.Module()
    m.weight = nn.Parameter(torch.zeros(3, 3, dtype=torch.int64), requires_grad=False)
    return m


def test_mismatched_input_says_expected_shape():
    with pytest.raises(ValueError, match=r"expects \(N, 4\), \(N, T, 4\) or \(N, 4, H, W\); got \(2, 5\)"):
        make_skip("linear", 4)(torch.randn(2, 5))
    for kind in ("identity", "linear"):  # a 0-d or 1-d input: the same one line, not an IndexError
        for x in (torch.tensor(1.0), torch.randn(4)):
            with pytest.raises(ValueError, match=r"expects \(N, 4\)"):
                make_skip(kind, 4)(x)


@pytest.mark.parametrize("method", ["cayley", "exp", "householder"])
def test_parametrized_skip_under_cpu_bf16_autocast(method):
    """W = B phi(A) is computed in float32 inside an autocast region (bf16 has no CPU
    triangular solve, and bf16 products would leave W orthogonal to ~1e-2 only)."""
    from orthogonal_skip_connections.maths.orthogonal import orth_error

    skip = make_skip("learnable_orth", 16, method=method, init="haar")
    x = torch.randn(4, 16, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert skip.weight.dtype == torch.float32
        assert float(orth_error(skip.weight.detach().double())) < 1e-5
        y = skip(x)
    y.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in skip.parameters())


@pytest.mark.parametrize("method", ORTH_METHODS)
def test_half_precision_weights_train_every_method_within_their_rounding(method):
    """A bf16 model (weights stored in bf16, no autocast): the maps and retractions run in
    float32 and round once. qr, cayley and householder raised NotImplementedError (no bf16
    QR / LU / triangular solve on the CPU), and Newton-Schulz in bf16 left W 20x further from
    O(n) than the rounding of W itself."""
    import orthogonal_skip_connections as osc

    torch.manual_seed(0)
    skip = make_skip("learnable_orth", 32, method=method, init="haar").bfloat16()
    rounding = float(O.orth_error(skip.weight.detach().double()))  # a bf16-rounded orthogonal W
    opt = osc.optimizer(skip, torch.optim.SGD, lr=0.05, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        x = torch.randn(8, 32, dtype=torch.bfloat16)
        (skip(x).float() - x.float().flip(-1)).square().mean().backward()
        opt.step()
    assert skip.weight.dtype == torch.bfloat16
    assert float(O.orth_error(skip.weight.detach().double())) < 2.5 * rounding


def test_float64_by_default_dtype_gives_float64_matrices_exact_to_float64():
    """Under torch.set_default_dtype(float64) the idempotent projector was float32 (a float64
    model failed at its first forward) and Haar draws were float32-rounded (||W^T W - I|| 1e-7
    for fixed_orth, forever, and for a retracted skip until its first step)."""
    from orthogonal_skip_connections.models import get_model

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for kind, opts in [("fixed_orth", {}), ("learnable_orth", {"method": "svd", "init": "haar"}),
                           ("learnable_orth", {"method": "cayley", "init": "haar"})]:
            W = make_skip(kind, 16, **opts).weight.detach()
            assert W.dtype == torch.float64 and float(O.orth_error(W)) < 1e-12, kind
        P = make_skip("idempotent", 16).weight
        assert P.dtype == torch.float64 and float((P @ P - P).abs().max()) < 1e-12
        assert get_model("resnet20", 10, "idempotent")(torch.randn(2, 3, 8, 8)).dtype == torch.float64
    finally:
        torch.set_default_dtype(before)


def test_baked_copy_of_a_compiled_model_is_the_plain_module():
    """torch.compile's wrapper in, the wrapped module's baked copy out: its own class and
    state_dict keys (no _orig_mod.), nothing compiled (nothing here runs the compiler)."""
    import orthogonal_skip_connections as osc

    model = torch.nn.Sequential(osc.orthogonal_(torch.nn.Linear(4, 4), method="cayley", init="haar"))
    baked = osc.baked_copy(torch.compile(model))
    assert type(baked) is torch.nn.Sequential and baked.state_dict().keys() == {"0.weight", "0.bias"}
    torch.testing.assert_close(baked[0].weight, model[0].weight.detach())


@pytest.mark.parametrize("method", ORTH_METHODS)
def test_baked_copy_computes_the_same_without_upkeep_and_pickles(method):
    """baked_copy: every W a plain parameter at its current value. The copy computes what
    the model computes, torch.save/torch.load round-trips it (torch refuses a parametrized
    module), a plain optimiser steps it, and the model itself is left as it was."""
    import io

    from torch.nn.utils import parametrize

    import orthogonal_skip_connections as osc
    from orthogonal_skip_connections.skips import OrthogonalSkip, retracted_parameters
    from orthogonal_skip_connections.skips.batched import is_batching

    torch.manual_seed(0)
    model = osc.get_model("resnet20", 10, skip_layer=osc.skip("learnable_orth", method=method, init="haar")).eval()
    head = osc.orthogonal_(torch.nn.Linear(10, 10), method=method, init="haar")  # a user's layer, same constraint
    model = torch.nn.Sequential(model, head).eval()
    retracted = method in O.RETRACTED_METHODS
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, 32, 32)

    baked = osc.baked_copy(model)
    assert not any(parametrize.is_parametrized(m) for m in baked.modules())
    assert retracted_parameters(baked) == [] and not is_batching(baked)
    skips = [s for s in baked.modules() if isinstance(s, OrthogonalSkip)]
    assert len(skips) == 9 and {s.upkeep for s in skips} == {"none"}
    for W in [s.weight for s in skips] + [baked[1].weight]:
        assert type(W) is torch.nn.Parameter and float(O.orth_error(W.detach())) < 1e-5
    with torch.no_grad():
        y = model(x)
        torch.testing.assert_close(baked(x), y, rtol=1e-5, atol=1e-6)
    buf = io.BytesIO()
    torch.save(baked, buf)
    buf.seek(0)
    with torch.no_grad():
        torch.testing.assert_close(torch.load(buf, weights_only=False)(x), y, rtol=1e-5, atol=1e-6)

    # the model is unchanged: still constrained, same weights, and a plain optimiser still refused
    assert [p for p, _ in retracted_parameters(model)] != [] if retracted else parametrize.is_parametrized(head)
    opt = torch.optim.SGD(baked.parameters(), lr=0.1)
    baked(x).square().mean().backward()
    opt.step()  # W's now free matrices, as a linear skip's
    assert float(O.orth_error(baked[1].weight.detach())) > 1e-4
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    if retracted:
        with pytest.raises(TypeError, match="retracted orthogonal matrix"):
            torch.optim.SGD(model.parameters(), lr=0.1).step()


def test_trainable_kinds_reach_the_loss_and_frozen_kinds_hold_no_parameter():
    """What a kind lets training move: linear, random, scalar and learnable_orth have trainable
    parameters the loss reaches (scalar's alpha: d/d alpha sum(g * alpha x) = sum(g x));
    fixed_orth and idempotent hold W as a buffer (no optimiser, weight decay or gradient moves
    it); identity and zero hold nothing. Starts: linear at I, scalar at alpha = 1 and
    learnable_orth (identity init) at I."""
    x, g = torch.randn(5, 6), torch.randn(5, 6)
    trainable = {"linear": ["weight"], "random": ["weight"], "scalar": ["alpha"], "learnable_orth": ["weight"]}
    for kind in SKIP_KINDS:
        skip = make_skip(kind, 6)
        assert [n for n, _ in skip.named_parameters()] == trainable.get(kind, []), kind
        if kind in ("fixed_orth", "idempotent"):
            assert list(dict(skip.named_buffers())) == ["weight"] and not skip.weight.requires_grad
        if kind not in trainable:
            continue
        (skip(x) * g).sum().backward()
        for name, p in skip.named_parameters():
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, (kind, name)
    scalar = make_skip("scalar", 6)
    assert float(scalar.alpha.detach()) == 1.0
    (scalar(x) * g).sum().backward()
    torch.testing.assert_close(scalar.alpha.grad, (g * x).sum())
    with torch.no_grad():
        scalar.alpha.fill_(-0.5)
    torch.testing.assert_close(scalar.weight, -0.5 * torch.eye(6))  # weight: the current matrix alpha I
    for kind in ("linear", "learnable_orth"):
        assert torch.equal(make_skip(kind, 6).weight.detach(), torch.eye(6)), kind


def test_idempotent_skip_is_an_orthogonal_projector_of_the_asked_rank():
    """rank_fraction sets the rank of P = U U^T (round(fraction * C), at least 1); P is
    symmetric and idempotent. (Only the default 0.5 was checked, where fraction and
    1 - fraction give the same rank.)"""
    for fraction, rank in [(0.25, 2), (0.75, 6), (1.0, 8), (0.01, 1)]:
        P = make_skip("idempotent", 8, rank_fraction=fraction).weight
        torch.testing.assert_close(P @ P, P, atol=1e-5, rtol=0)
        torch.testing.assert_close(P, P.T, atol=1e-6, rtol=0)
        assert int(torch.linalg.matrix_rank(P)) == rank and round(float(torch.trace(P))) == rank, fraction


def test_project_orthogonal_puts_every_seed_of_a_stacked_matrix_back_on_o_n():
    """A SeedStack's retracted skips are (S, n, n): project_orthogonal_ (after an average of
    weights) replaces each seed's matrix by its own polar factor U V^T (the SVD's, here)."""
    import orthogonal_skip_connections as osc
    from orthogonal_skip_connections.models.stack import SeedStack

    stack = SeedStack.build(lambda: osc.ResidualMLP(6, 2, skip_kind="learnable_orth", method="svd", init="haar"),
                            [0, 1, 2])
    skips = [b.skip for b in stack.template.blocks]
    with torch.no_grad():
        for s in skips:
            s.weight.add_(0.1 * torch.randn_like(s.weight))  # every seed off O(n), as an average leaves it
    before = [s.weight.detach().double().clone() for s in skips]
    moved = osc.project_orthogonal_(stack)
    distances = []
    for s, A in zip(skips, before):
        assert s.weight.shape == (3, 6, 6)
        U, _, Vh = torch.linalg.svd(A)
        torch.testing.assert_close(s.weight.detach().double(), U @ Vh, atol=1e-5, rtol=0)
        distances.append(float(torch.linalg.matrix_norm(U @ Vh - A).max()))
    assert moved == pytest.approx(max(distances), rel=1e-4)
