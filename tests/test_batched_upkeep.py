"""A model computes the W's of its parametrized skips in one batched call per size
(skips.batched): the same W's, gradients and training losses as one skip at a time
(float64, against the unbatched path of the same model), torch's parametrization state
and caching untouched, and the skips alone unchanged."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

import orthogonal_skip_connections as osc
from orthogonal_skip_connections.maths import orthogonal as orth
from orthogonal_skip_connections.skips import batched, iter_skips
from orthogonal_skip_connections.skips.batched import batch_upkeep, is_batching, shared_groups

METHODS = ["cayley", "exp", "householder"]


def moved_model(method: str, model_type: str = "resnet20", dtype=torch.float64, **options):
    """``model_type`` with ``method`` skips (haar init), every X moved off its start (A != 0)."""
    torch.manual_seed(0)
    model = osc.get_model(model_type, 10, skip_kind="learnable_orth", method=method, init="haar", **options)
    model = model.to(dtype)
    with torch.no_grad():
        for _, s in iter_skips(model):
            X = s.parametrizations.weight.original
            X.add_(0.2 * torch.randn_like(X))
    return model


def used_weights(model, x):
    """{skip: the W its forward used}, read by a pre-hook on each skip (a pre-hook watches
    the skip: the block calls it unfused, with the same W)."""
    seen = {}
    handles = [s.register_forward_pre_hook(lambda m, a: seen.__setitem__(m, m.matrix(a[0])))
               for _, s in iter_skips(model)]
    out = model(x)
    for h in handles:
        h.remove()
    return out, seen


@pytest.mark.parametrize("method", METHODS)
def test_each_skip_gets_its_own_w_and_gradient(method, monkeypatch):
    model = moved_model(method)
    assert [len(g) for g in shared_groups(model)] == [3, 3, 3]  # resnet20: 3 skips each of 16, 32, 64
    plain = batch_upkeep(copy.deepcopy(model), enabled=False)
    assert is_batching(model) and not is_batching(plain)
    calls = []
    monkeypatch.setattr(batched, "shared_weights", lambda g, f=batched.shared_weights: calls.append(len(g)) or f(g))
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 3, 5, 9])
    out, seen = used_weights(model, x)
    assert calls == [3, 3, 3]  # one call per size, every skip's W from it
    for s, W in seen.items():
        assert W._base is not None  # a share of the batched result ...
        torch.testing.assert_close(W, s.weight, atol=1e-12, rtol=0)  # ... equal to its own W alone
    assert all(s.shared_weight is None for _, s in iter_skips(model))  # dropped after the forward
    F.cross_entropy(out, y).backward()
    F.cross_entropy(plain(x), y).backward()
    assert len(calls) == 3  # the unbatched copy computed its W's one skip at a time
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-12, rtol=0, msg=name)


@pytest.mark.parametrize("method", METHODS)
def test_training_losses_are_those_of_one_skip_at_a_time(method):
    losses = []
    for on in (True, False):
        model = batch_upkeep(moved_model(method), enabled=on)
        opt = osc.optimizer(model, torch.optim.SGD, lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(1)
        run = []
        for _ in range(3):
            x, y = torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (8,), generator=g)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append((run, [s.weight.detach() for _, s in iter_skips(model)]))
    (batched_losses, W_b), (plain_losses, W_p) = losses
    assert batched_losses == pytest.approx(plain_losses, abs=1e-10, rel=0)
    assert batched_losses[0] != batched_losses[-1]  # it trained
    for a, b in zip(W_b, W_p):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_parametrization_state_checkpoint_and_skip_alone_unchanged():
    model = moved_model("cayley", dtype=torch.float32)
    x = torch.randn(2, 3, 8, 8)
    model(x).sum().backward()
    fresh = batch_upkeep(osc.get_model("resnet20", 10, skip_kind="learnable_orth", method="cayley"), enabled=False)
    state = model.state_dict()
    assert state.keys() == fresh.state_dict().keys()  # no state of its own
    fresh.load_state_dict(state)  # a checkpoint of either loads into the other
    for (_, a), (_, b) in zip(iter_skips(model), iter_skips(fresh)):
        torch.testing.assert_close(a.weight, b.weight, atol=0, rtol=0)
    s = model.stages[1][0].skip  # a skip used alone: torch's parametrization, as before
    z = torch.randn(2, 32, 4, 4)
    assert s.shared_weight is None
    torch.testing.assert_close(s(z), F.conv2d(z, s.weight[:, :, None, None]))
    with parametrize.cached():
        assert s.weight is s.weight


def test_evaluation_under_cached_computes_once_per_pass(monkeypatch):
    model = moved_model("exp", dtype=torch.float32).eval()
    calls = []
    monkeypatch.setattr(batched, "shared_weights", lambda g, f=batched.shared_weights: calls.append(len(g)) or f(g))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), parametrize.cached():
        out1 = model(x)
        W = [s.weight for _, s in iter_skips(model)]  # torch's cache: the W's the pass computed
        out2 = model(x)
        assert all(s.weight is w for (_, s), w in zip(iter_skips(model), W))
    assert calls == [3, 3, 3]  # once for the two forwards
    assert torch.equal(out1, out2)
    with torch.no_grad():
        torch.testing.assert_close(out1, batch_upkeep(copy.deepcopy(model), enabled=False)(x), atol=1e-6, rtol=0)


def test_a_forward_that_raises_drops_the_shares():
    model = moved_model("householder", dtype=torch.float32)
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 5, 8, 8))  # wrong channel count: the stem refuses
    assert all(s.shared_weight is None for _, s in iter_skips(model))


def test_nested_batching_models_share_once_clean_up_and_compute_the_same():
    """A batching model inside another: the outer model gives every share (the inner one
    finds them given), the outer skips keep theirs through the inner forward, every share
    is gone afterwards, and the output is that of one skip at a time."""
    inner = moved_model("cayley")
    outer = torch.nn.Sequential(inner)
    outer.add_module("skip_after", osc.skip("learnable_orth", method="cayley")(10))  # on the logits
    outer.add_module("skip_after2", osc.skip("learnable_orth", method="cayley")(10))
    outer.double()
    batch_upkeep(outer)
    assert is_batching(outer) and is_batching(inner)
    seen = {}
    outer.skip_after.register_forward_pre_hook(lambda m, a: seen.setdefault("share", m.shared_weight))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y = outer(x)
    assert seen["share"] is not None  # the outer share survived the inner model's forward
    assert all(s.shared_weight is None for _, s in iter_skips(outer))
    with torch.no_grad():  # the same numbers as one skip at a time
        batch_upkeep(outer, enabled=False), batch_upkeep(inner, enabled=False)
        torch.testing.assert_close(outer(x), y.detach(), rtol=1e-12, atol=1e-12)


def test_large_cpu_matrices_and_lone_sizes_stay_per_skip():
    model = osc.get_model("resnet18", 10, skip_kind="learnable_orth", method="cayley")
    sizes = sorted(g[0].channels for g in shared_groups(model))
    assert sizes == [n for n in (64, 128) if n <= batched.CPU_MAX_N]  # 256 and 512 one at a time on the CPU
    mixed = osc.get_model("resnet20", 10, skip_kind="learnable_orth", method="steepest")
    assert not is_batching(mixed)  # nothing to share: no hooks, no cost per forward
    mixed.stages[1][0].skip = osc.skip("learnable_orth", method="cayley")(32)
    assert shared_groups(mixed) == [] and not is_batching(batch_upkeep(mixed))  # a lone one neither


def test_cayley_stack_of_large_cpu_matrices_is_solved_one_at_a_time():
    """OrthogonalMap.phi on a stack of n > 128 CPU matrices: the per-matrix result (a batched
    CPU LU is wrong there after torch.set_num_threads; see maths.orthogonal)."""
    from torch.nn.utils.parametrizations import _OrthMaps

    from orthogonal_skip_connections.skips.constraint import OrthogonalMap

    g = torch.Generator().manual_seed(0)
    X = 0.01 * torch.randn(2, 160, 160, generator=g, dtype=torch.float64)
    with orth.one_thread():
        Q = OrthogonalMap.phi(_OrthMaps.cayley, X)
    A = X.tril() - X.tril().mT
    for i in range(2):  # the map of one matrix, by maths.orthogonal's own Cayley map
        torch.testing.assert_close(Q[i], orth.cayley(A[i]), atol=1e-13, rtol=0)
    assert float(orth.orth_error(Q).max()) < 1e-12


@pytest.mark.parametrize("method", ["cayley", "exp"])
def test_seed_stack_vmap_batches_each_seed_like_the_model_alone(monkeypatch, method):
    """(exp: inside vmap the map cannot read its squarings on the host, as it does on the CPU
    elsewhere; it takes expm_fixed's fixed sequence, the same W to round-off.)"""
    from orthogonal_skip_connections.models.stack import SeedStack

    make = lambda: osc.ResidualMLP(8, 3, skip_kind="learnable_orth", method=method, init="haar",  # noqa: E731
                                   num_classes=3, in_features=2)
    stack = SeedStack.build(make, [0, 1]).double()
    with torch.no_grad():
        for name, p in stack.named_parameters():
            if name.endswith("original"):
                p.add_(0.2 * torch.randn_like(p))
    assert is_batching(stack.template)
    calls = []
    monkeypatch.setattr(batched, "shared_weights", lambda g, f=batched.shared_weights: calls.append(len(g)) or f(g))
    x = torch.randn(5, 2, dtype=torch.float64)
    out = stack(x)
    assert calls == [3]  # inside vmap each seed's X is one matrix: the 3 skips in one call
    out.square().sum().backward()
    for s in range(2):
        alone = batch_upkeep(stack.model(s), enabled=False)
        torch.testing.assert_close(out[s], alone(x), atol=1e-12, rtol=0)
        alone(x).square().sum().backward()
        for (name, p), q in zip(stack.template.named_parameters(), alone.parameters()):
            torch.testing.assert_close(p.grad[s], q.grad, atol=1e-12, rtol=0, msg=name)


def test_landscape_grid_moves_the_batched_skips_like_the_unbatched_ones():
    """The loss landscape writes each parametrized skip's X in place point after point; the
    batched forward (under the evaluation's parametrize.cached) follows every move."""
    from orthogonal_skip_connections import landscape as L

    model = moved_model("cayley", dtype=torch.float64)
    plain = batch_upkeep(copy.deepcopy(model), enabled=False)
    x, y = torch.randn(16, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (16,))
    grids = []
    for m in (model, plain):
        directions = [L.random_direction(m, seed=0, k=k) for k in (0, 1)]
        grids.append(L.landscape_2d(m, x, y, directions, [-0.5, 0.5], [-0.5, 0.0, 0.5])[0])
    np_grid, np_plain = grids
    assert float(abs(np_grid - np_plain).max()) < 1e-10
    assert len({round(float(v), 6) for v in np_grid.ravel()}) == 6  # every point its own loss


def test_under_ddp_the_wrapped_model_batches_with_the_plain_models_gradients(tmp_path, monkeypatch):
    """DistributedDataParallel (gloo, one process here; tests/test_distributed.py runs two)
    calls the model, whose hooks batch the skips; its gradient hooks on each X still fire."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = moved_model("exp")
        plain = batch_upkeep(copy.deepcopy(model), enabled=False)
        ddp = DistributedDataParallel(model)
        calls = []
        monkeypatch.setattr(batched, "shared_weights", lambda g, f=batched.shared_weights: calls.append(len(g)) or f(g))
        x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 3, 5, 9])
        F.cross_entropy(ddp(x), y).backward()
        F.cross_entropy(plain(x), y).backward()
        assert calls == [3, 3, 3]
        for (name, p), q in zip(model.named_parameters(), plain.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-12, rtol=0, msg=name)
    finally:
        dist.destroy_process_group()


def test_the_walk_over_the_modules_is_made_once_until_a_registration(monkeypatch):
    """The skips that may batch are found by a walk over the modules (0.3 ms per forward for
    resnet20 on a CPU thread, on the host a GPU step waits for); it is kept until a module or
    parameter is registered. Later forwards check only the listed skips, and a skip put in
    after the first forward (a registration) is batched at the next one, the old one not."""
    model = moved_model("cayley", dtype=torch.float32)
    x = torch.randn(2, 3, 8, 8)
    model(x)
    calls = []
    real = batched._group_key
    monkeypatch.setattr(batched, "_group_key", lambda m, *a: calls.append(m) or real(m, *a))
    model(x)
    skips = [s for _, s in iter_skips(model)]
    assert calls == skips  # no walk: each listed skip checked once
    old = model.stages[1][1].skip
    new = osc.skip("learnable_orth", method="cayley")(old.channels)
    model.stages[1][1].skip = new
    calls.clear()
    _, used = used_weights(model, x)
    assert len(calls) > len(list(model.modules())) - 1  # walked again after the registration
    assert used[new] is not None and new in [m for g in shared_groups(model) for m in g]
    assert old not in [m for g in shared_groups(model) for m in g]


def test_a_deep_copy_and_a_new_dtype_batch_their_own_skips():
    """The list of skips is kept per model (weakly), so a deep copy finds its own skips, not
    the original's; a dtype changed after the first forward groups by the new one."""
    model = moved_model("exp", dtype=torch.float32)
    x = torch.randn(2, 3, 8, 8)
    model(x)
    twin = copy.deepcopy(model)
    given = []
    for _, s in iter_skips(twin):
        s.register_forward_pre_hook(lambda m, a: given.append(m.shared_weight is not None))
    twin(x).sum().backward()
    assert given and all(given)
    assert all(s.parametrizations.weight.original.grad is not None for _, s in iter_skips(twin))
    assert all(s.parametrizations.weight.original.grad is None for _, s in iter_skips(model))
    model.double()
    y = model(x.double())
    assert y.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(batch_upkeep(model, enabled=False)(x.double()), y.detach(), rtol=1e-12, atol=1e-12)
