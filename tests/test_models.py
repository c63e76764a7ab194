"""Models: every kind trains in our ResNets, torchvision ResNets patch exactly, residual MLPs."""

import numpy as np
import pytest
import torch
import torchvision

from orthogonal_skip_connections import ResidualMLP, get_model, patch_skips, skip_diagnostics, summarize_skips
from orthogonal_skip_connections.skips import ORTH_METHODS, SKIP_KINDS, iter_skips

VARIANTS = [(k, {}) for k in SKIP_KINDS if k != "learnable_orth"] + [
    ("learnable_orth", {"method": m}) for m in ORTH_METHODS
]


@pytest.mark.parametrize("model_type", ["resnet20", "resnet18"])
@pytest.mark.parametrize("kind,opts", VARIANTS)
def test_every_kind_forward_backward_finite_gradients(model_type, kind, opts):
    model = get_model(model_type, num_classes=10, skip_kind=kind, init="haar", **opts)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    torch.nn.functional.cross_entropy(out, torch.tensor([1, 2])).backward()
    for name, p in model.named_parameters():
        if kind == "zero" and ".shortcut." in name:  # no skip path: the projection is unused
            assert p.grad is None
        elif p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_model_types_and_stems():
    for model_type, blocks in [("resnet20", 9), ("resnet32", 15), ("resnet56", 27)]:
        m = get_model(model_type, 100)
        assert sum(1 for _ in m.modules() if hasattr(_, "skip")) == blocks
    m = get_model("resnet50", 10, stem="imagenet", in_channels=1, skip_kind="scalar")
    assert m(torch.randn(1, 1, 64, 64)).shape == (1, 10)
    assert get_model("resnet20", 10, in_channels=1)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown model_type 'resnet7'"):
        get_model("resnet7", 10)
    with pytest.raises(ValueError, match="unknown stem"):
        get_model("resnet18", 10, stem="tiny")


def test_zero_init_residual_block_is_its_skip():
    m = get_model("resnet20", 10, zero_init_residual=True).eval()
    block = m.stages[0][1]
    x = torch.randn(2, 16, 8, 8).relu()
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_patch_torchvision_identity_is_bit_identical(arch):
    model = getattr(torchvision.models, arch)(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        patch_skips(model, "identity")
        assert torch.equal(model(x), before)
        patch_skips(model, "learnable_orth", init="identity", method="steepest")
        torch.testing.assert_close(model(x), before, atol=1e-6, rtol=1e-6)
        patch_skips(model, "learnable_orth", init="identity", method="exp")  # A = 0: no product on the CPU
        torch.testing.assert_close(model(x), before, atol=1e-6, rtol=1e-6)
        patch_skips(model, "identity")  # back to the plain model
        assert torch.equal(model(x), before)
    if arch == "resnet18":  # (Haar matrices of size 2048 for resnet50 would only cost time)
        patch_skips(model, "learnable_orth", method="cayley", init="haar")
        rows = skip_diagnostics(model)
        assert len(rows) == 8 and all(r["det_sign"] == 1 for r in rows)
        assert model(x).shape == (2, 10)


def test_patch_our_resnet_and_rejects_models_without_blocks():
    m = patch_skips(get_model("resnet20", 10), "scalar")
    assert {r["kind"] for r in skip_diagnostics(m)} == {"scalar"}
    with pytest.raises(ValueError, match="found no residual blocks"):
        patch_skips(torch.nn.Linear(3, 3), "identity")


@pytest.mark.parametrize("kind,options", [("learnable_orth", {"method": "svd"}), ("learnable_orth", {"method": "cayley"}),
                                          ("linear", {})])
def test_patched_skips_take_the_dtype_of_their_block(kind, options):
    """A model moved before patching (to float64 here; to a GPU alike) once got float32 CPU skips:
    'expected scalar type Double but found Float' at its first forward."""
    torch.manual_seed(0)
    model = get_model("resnet20", 10).double()
    patch_skips(model, kind, **options)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert model(torch.randn(2, 3, 8, 8, dtype=torch.float64)).dtype == torch.float64


def test_float64_blocks_get_skips_orthogonal_to_float64_round_off():
    """A Haar matrix was drawn as float32 and cast up: orthogonal to 5e-8 in a float64 model
    (fixed_orth's buffer, a parametrized skip's fixed base, a Haar-started retracted skip)."""
    torch.manual_seed(0)
    for kind, options in [("fixed_orth", {}), ("learnable_orth", {"method": "cayley", "init": "haar"}),
                          ("learnable_orth", {"method": "svd", "init": "haar"})]:
        for model in (get_model("resnet20", 10).double(), torchvision.models.resnet18(num_classes=10).double()):
            patch_skips(model, kind, **options)
            for _, s in iter_skips(model):
                W = s.weight.detach()
                assert W.dtype == torch.float64
                assert float((W @ W.mT - torch.eye(W.shape[0], dtype=W.dtype)).abs().max()) < 1e-13, kind
    assert torch.get_default_dtype() == torch.float32  # put back


@pytest.mark.parametrize("norm", ["group", "frozen_bn"])
def test_torchvision_resnets_with_another_norm_layer_are_patched(norm):
    """Blocks were found by a BatchNorm2d, so a GroupNorm ResNet or a detection backbone's
    (FrozenBatchNorm2d) was "found no residual blocks", made of exactly those blocks."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    layer = (lambda c: torch.nn.GroupNorm(2, c)) if norm == "group" else FrozenBatchNorm2d
    model = torchvision.models.resnet18(num_classes=10, norm_layer=layer).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        patch_skips(model, "linear")
        assert len(list(iter_skips(model))) == 8
        patch_skips(model, "identity")
        assert torch.equal(model(x), before)


def test_diagnostics_measure_distance_and_orthogonality():
    m = get_model("resnet20", 10, skip_kind="fixed_orth")
    s = summarize_skips(skip_diagnostics(m))
    assert s["skip_orth_error_max"] < 1e-5 and s["skip_identity_distance_mean"] > 1.0
    assert s["skip_negative_det_count"] == 0
    s = summarize_skips(skip_diagnostics(get_model("resnet20", 10)))
    assert s["skip_orth_error_max"] is None and s["skip_identity_distance_mean"] is None
    assert "skip_start_distance_mean" not in s  # measured only against a given start


def test_diagnostics_count_the_skips_with_a_negative_determinant():
    """det_sign is sign(det W) per skip (against numpy's det), and skip_negative_det_count
    counts the -1s: one reflected skip among SO(n) ones gives exactly one, Haar draws on O(n)
    (special=False) some of each. A det_sign fixed at +1 would report no reflection ever."""
    import orthogonal_skip_connections as osc
    from orthogonal_skip_connections.skips import iter_skips

    m = get_model("resnet20", 10, skip_kind="fixed_orth")
    with torch.no_grad():  # negate the first column of the second skip: still orthogonal, det -1
        _, skip = list(iter_skips(m))[1]
        skip.weight[:, 0].neg_()
    rows = skip_diagnostics(m)
    assert [r["det_sign"] for r in rows] == [1, -1] + [1] * (len(rows) - 2)
    s = summarize_skips(rows)
    assert s["skip_negative_det_count"] == 1 and s["skip_orth_error_max"] < 1e-5
    m = get_model("resnet20", 10, skip_layer=osc.skip("fixed_orth", special=False,
                                                       generator=torch.Generator().manual_seed(0)))
    rows = skip_diagnostics(m)
    want = [int(np.sign(np.linalg.det(skip.weight.double().numpy()))) for _, skip in iter_skips(m)]
    assert [r["det_sign"] for r in rows] == want and 1 in want and -1 in want
    assert summarize_skips(rows)["skip_negative_det_count"] == want.count(-1)


def test_diagnostics_measure_how_far_the_skips_moved_from_their_start():
    """||W - W_0||_F: 0 at the start; started at I it is ||W - I||_F; from a Haar start it is
    the distance moved, not the distance from I."""
    import orthogonal_skip_connections as osc
    from orthogonal_skip_connections.diagnostics import skip_weights
    from orthogonal_skip_connections.skips import iter_skips

    torch.manual_seed(0)
    for init in ("identity", "haar"):
        m = get_model("resnet20", 10, skip_layer=osc.skip("learnable_orth", method="steepest", init=init))
        start = skip_weights(m)
        assert len(start) == 9 and all(w.dtype == torch.float64 for w in start.values())
        assert {r["start_distance"] for r in skip_diagnostics(m, start)} == {0.0}
        with torch.no_grad():  # move each W along a rotation, W exp(0.1 (A - A^T)), as an optimiser would
            for _, skip in iter_skips(m):
                A = torch.randn(skip.weight.shape, dtype=torch.float64)
                skip.weight.copy_((skip.weight.double() @ torch.linalg.matrix_exp(0.1 * (A - A.T))).float())
        rows = skip_diagnostics(m, start)
        for r, (name, skip) in zip(rows, iter_skips(m)):
            assert r["start_distance"] == pytest.approx(float(torch.linalg.norm(skip.weight.detach().double() - start[name])))
            if init == "identity":
                assert r["start_distance"] == pytest.approx(r["identity_distance"], rel=1e-12)
            else:
                assert abs(r["start_distance"] - r["identity_distance"]) > 1.0
        moved = [r["start_distance"] for r in rows]
        assert summarize_skips(rows)["skip_start_distance_mean"] == pytest.approx(sum(moved) / len(moved))


def test_residual_mlp_exposes_skip_and_branch():
    torch.manual_seed(0)
    mlp = ResidualMLP(dim=2, depth=3, hidden_mult=4, skip_kind="learnable_orth", num_classes=3, init="haar")
    x = torch.randn(7, 2)
    assert mlp(x).shape == (7, 3)
    block = mlp.blocks[0]
    torch.testing.assert_close(block(x), x @ block.skip.weight.T + block.branch(x))
    assert mlp.features(x, upto=0).shape == (7, 2)
    emb = ResidualMLP(dim=16, depth=2, in_features=5, num_classes=2)
    assert emb(torch.randn(4, 5)).shape == (4, 2)


@pytest.mark.parametrize("kind", SKIP_KINDS)
def test_size_bounds_counted_from_the_config_never_exceed_the_built_model(kind):
    """The memory check's parameter counts (made without building anything) are lower
    bounds of the built models' numel, and exact for the ResidualMLP without skip weights."""
    from orthogonal_skip_connections.models.mlp import residual_mlp_min_parameters
    from orthogonal_skip_connections.models.vit import vit_min_parameters

    def numel(model):
        return sum(p.numel() for p in model.parameters())

    for dim, depth, mult, classes, inputs in [(2, 3, 2.0, 2, None), (5, 2, 1.5, 7, 3), (8, 0, 4.0, None, None)]:
        model = ResidualMLP(dim, depth, hidden_mult=mult, skip_kind=kind, num_classes=classes, in_features=inputs)
        bound = residual_mlp_min_parameters(dim, depth, mult, classes, inputs)
        skips = sum(p.numel() for b in model.blocks for p in b.skip.parameters())
        assert bound == numel(model) - skips, (dim, depth)
    vit = get_model("vit_tiny", 10, kind, width=48, depth=2, heads=3, image_size=8, patch_size=2, in_channels=1)
    bound = vit_min_parameters("vit_tiny", width=48, depth=2, heads=3, image_size=8, patch_size=2, in_channels=1)
    assert 0.8 * numel(vit) < bound <= numel(vit)


def test_memory_check_refuses_only_above_the_machines_memory():
    from orthogonal_skip_connections.runs import UserError, check_memory, machine_memory

    total = machine_memory()
    assert total > 2**28  # read from the system, not a guess
    check_memory("this", total)
    with pytest.raises(UserError, match=r"^this would need at least .* of memory; this machine has") as err:
        check_memory("this", total + 1)
    assert "\n" not in str(err.value)


def test_memory_check_passes_where_the_system_does_not_say(monkeypatch):
    import os

    from orthogonal_skip_connections.runs import check_memory, machine_memory

    monkeypatch.delattr(os, "sysconf")  # as on Windows
    assert machine_memory() is None
    check_memory("this", 1e30)  # nothing to compare with: the run meets its own limits


def test_each_seed_of_a_seed_stack_is_the_model_built_alone_with_that_seed():
    """SeedStack.build([3, 5, 7]): seed s's weights, buffers and logits are those of the model
    built alone after torch.manual_seed(s) (fixed_orth and the layers draw from the global RNG),
    in the order of the seeds; the caller's RNG is left as it was. A stack moved (.double(),
    .to(device)) after a forward evaluates the moved tensors, not the ones it cached."""
    from orthogonal_skip_connections.models.stack import SeedStack

    def make():
        return ResidualMLP(6, 2, skip_kind="fixed_orth", num_classes=3, in_features=4)

    seeds = [3, 5, 7]
    rng = torch.get_rng_state()
    stack = SeedStack.build(make, seeds)
    assert torch.equal(torch.get_rng_state(), rng)
    x = torch.randn(5, 4)
    with torch.no_grad():
        out = stack(x)
        for i, seed in enumerate(seeds):
            torch.manual_seed(seed)
            alone = make()
            state = stack.model(i).state_dict()
            assert state.keys() == alone.state_dict().keys()
            assert all(torch.equal(state[k], v) for k, v in alone.state_dict().items()), seed
            torch.testing.assert_close(out[i], alone(x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[0], out[1])
    stack.double()  # moved after a forward: the next one runs on the moved tensors
    with torch.no_grad():
        torch.testing.assert_close(stack(x.double())[2], stack.model(2)(x.double()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model_type", ["resnet20", "resnet18", "vit_tiny"])
@pytest.mark.parametrize("num_classes", [0, 2.5, True])
def test_a_class_count_that_is_not_a_positive_int_is_a_one_line_value_error(model_type, num_classes):
    """get_model("resnet20", num_classes=2.5) was torch's TypeError from inside nn.Linear."""
    with pytest.raises(ValueError, match="num_classes must be"):
        get_model(model_type, num_classes=num_classes)


# (osc.optimizer checks its model itself: tests/test_optim.py)
TAKES_A_MODULE = [("skip_diagnostics", ()), ("orthogonal_weights", ()), ("patch_skips", ("identity",)),
                  ("baked_copy", ()), ("project_orthogonal_", ()), ("orthogonal_", ("weight",))]


@pytest.mark.parametrize("name,args", TAKES_A_MODULE)
@pytest.mark.parametrize("given", ["x", {"weight": torch.eye(2)}])  # a name, a state_dict
def test_a_public_function_given_no_module_says_what_it_takes(name, args, given):
    """osc.skip_diagnostics("x") was an AttributeError ('str' object has no attribute
    'named_modules') from deep inside the skip contract."""
    import re

    import orthogonal_skip_connections as osc
    from orthogonal_skip_connections.diagnostics import skip_weights

    for fn_name, fn in ((name, getattr(osc, name)), ("skip_weights", skip_weights)):
        with pytest.raises(TypeError, match=rf"^{re.escape(fn_name)} takes [^;]*\(an nn\.Module\)[^;]*; "
                                            rf"got {type(given).__name__}$"):
            fn(given, *(args if fn_name == name else ()))


def test_summarize_skips_given_the_model_says_it_takes_rows():
    """summarize_skips(model) for summarize_skips(skip_diagnostics(model)) was "'ResNet' object is
    not iterable"."""
    model = get_model("resnet20", num_classes=10)
    with pytest.raises(TypeError, match=r"takes the rows of skip_diagnostics\(model\) .*; got ResNet$"):
        summarize_skips(model)
    with pytest.raises(TypeError, match="got a list holding str$"):
        summarize_skips(["identity"])
    assert summarize_skips(skip_diagnostics(model))["skip_identity_distance_max"] is None  # identity: no matrix
