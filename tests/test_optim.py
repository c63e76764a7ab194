"""The one optimiser: retraction inside step(), groups, schedulers, state_dict, misuse,
and orthogonal_ / skip factories for users' own modules."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import orthogonal_skip_connections as osc
from orthogonal_skip_connections.maths import orthogonal as O
from orthogonal_skip_connections.models import get_model
from orthogonal_skip_connections.optim import OptimConfig, lr_factor, lr_scheduler, param_groups
from orthogonal_skip_connections.skips import (
    PARAMETRIZED_METHODS,
    RETRACTED_METHODS,
    apply_matrix,
    iter_skips,
    make_skip,
    retracted_parameters,
    retraction_of,
)


# --------------------------------------------------------------------------- an oracle


def reference_run(model, data, lr=0.05, momentum=0.9, weight_decay=5e-4, steps=50):
    """The procedure this library used before optim.py (three objects and a copied lr),
    written out independently: plain torch SGD over decay / no-decay groups, then every
    retracted matrix moved one at a time by a Euclidean heavy-ball buffer and its
    retraction, at the optimiser's lr."""
    retracted = [p for p, _ in retracted_parameters(model)]
    parametrized = {id(p) for _, s in iter_skips(model) if s.upkeep == "parametrized" for p in s.parameters()}
    rest = [p for p in model.parameters() if all(p is not w for w in retracted)]
    decay = [p for p in rest if p.ndim >= 2 and id(p) not in parametrized]
    no_decay = [p for p in rest if not (p.ndim >= 2 and id(p) not in parametrized)]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, momentum=momentum)
    opt.__dict__["_osc_checked"] = tuple(len(g["params"]) for g in opt.param_groups)  # it never holds a retracted W
    buffers, losses = {}, []
    for x, y in data[:steps]:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for i, W in enumerate(retracted):
                G = W.grad if i not in buffers else momentum * buffers[i] + W.grad
                buffers[i] = G.clone()
                spec = retraction_of(W)
                W.copy_(O.retract(spec.method, W.detach(), G, lr, spec.ns_steps))
                W.grad = None  # consumed (the SGD above never zeroes it)
        losses.append(loss.item())
    return losses


def library_run(model, data, lr=0.05, momentum=0.9, weight_decay=5e-4, steps=50):
    opt = osc.optimizer(model, torch.optim.SGD, lr=lr, momentum=momentum, weight_decay=weight_decay)
    losses = []
    for x, y in data[:steps]:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def tiny_batches(n=50, seed=0, distinct=4):
    """n steps cycling over ``distinct`` fixed batches (so the loss can fall)."""
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(distinct)]
    return [batches[i % distinct] for i in range(n)]


@pytest.mark.parametrize("kind,method", [("identity", None), ("learnable_orth", "steepest"),
                                         ("learnable_orth", "svd"), ("learnable_orth", "cayley")])
def test_optimizer_reproduces_the_two_object_procedure(kind, method):
    """resnet20's layout with two blocks per stage (a resnet14): every kind of parameter, and
    two skips of each size (16, 32, 64), so the retraction steps stacks as in a resnet20."""
    from orthogonal_skip_connections.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    model = ResNet(BasicBlock, [2, 2, 2], [16, 32, 64], 10, skip_kind=kind, method=method, init="haar", stem="cifar")
    twin = copy.deepcopy(model)
    data = tiny_batches()
    ours, reference = library_run(model, data), reference_run(twin, data)
    assert max(abs(a - b) for a, b in zip(ours, reference)) <= 1e-6
    assert sum(ours[-4:]) < sum(ours[:4])


def regression(C, method, generator):
    target = O.haar_orthogonal(C, generator=generator)
    skip = make_skip("learnable_orth", C, method=method, init="haar", generator=generator)
    model = nn.Sequential(nn.Linear(C, C), skip)

    def loss_fn():
        x = torch.randn(32, C, generator=generator)
        return F.mse_loss(model(x), apply_matrix(x, target))

    return model, skip, loss_fn


@pytest.mark.parametrize("method,setting", [(m, s) for s in ("sgd_cosine", "adamw_onecycle") for m in RETRACTED_METHODS]
                         # Adam's direction in so(n): the same maps, a tangent direction of another size
                         + [(m, "adamw_adaptive_onecycle") for m in ("svd", "newton_schulz")])
def test_retracted_methods_stay_orthogonal_for_1000_steps_under_schedulers(method, setting):
    """fp32, C = 64, 1000 steps with momentum and weight decay, the scheduler driving the
    retracted group's lr through the optimiser's param_groups."""
    g = torch.Generator().manual_seed(1)
    model, skip, loss_fn = regression(64, method, g)
    if setting == "sgd_cosine":
        opt = osc.optimizer(model, torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)
    else:
        opt = osc.optimizer(model, torch.optim.AdamW, lr=1e-3, weight_decay=1e-2,
                            retraction_adaptive=setting == "adamw_adaptive_onecycle")
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=1000)
    retracted = [grp for grp in opt.param_groups if "retraction" in grp]
    assert len(retracted) == 1 and retracted[0]["params"] == [skip.weight] and retracted[0]["weight_decay"] == 0
    first = loss_fn().item()
    lrs = set()
    for _ in range(1000):
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()
        sched.step()
        lrs.add(round(retracted[0]["lr"], 12))
    assert float(O.orth_error(skip.weight.detach())) <= 1e-4
    assert loss_fn().item() < first
    assert len(lrs) > 100  # the scheduler moved the retracted group's lr


@pytest.mark.parametrize("method", RETRACTED_METHODS)
def test_matmul_retractions_follow_the_factor_trajectory_and_stay_orthogonal(method):
    """retraction_impl="matmul" (what CUDA runs by default) on the CPU: the first 50 steps
    follow the SVD/QR trajectory, and 1000 steps of SGD with momentum, decay and a cosine
    schedule leave W orthogonal. steepest follows it for one step only: its direction maps every
    singular value of W^T G - G^T W to 1, and the two impls part (softly, see ``msign``) on those
    below sqrt(eps) times the largest, which this regression's low-rank gradients have."""
    runs = {}
    for impl in ("factor", "matmul"):
        torch.manual_seed(0)  # nn.Linear's initialisation
        g = torch.Generator().manual_seed(1)
        model, skip, loss_fn = regression(64, method, g)
        opt = osc.optimizer(model, torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4, retraction_impl=impl)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)
        first, weights = loss_fn().item(), []
        for step in range(1000 if impl == "matmul" else 50):
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            opt.step()
            sched.step()
            if step < 50:
                weights.append(skip.weight.detach().clone())
        runs[impl] = weights
    compared = 1 if method == "steepest" else 50
    for k, (a, b) in enumerate(zip(runs["factor"][:compared], runs["matmul"])):
        assert float((a - b).abs().max()) <= 1e-4, k
    assert float(O.orth_error(skip.weight.detach())) <= 1e-4
    assert loss_fn().item() < first


def test_retraction_impl_is_checked_and_kept_in_the_groups():
    skip = make_skip("learnable_orth", 8, method="qr")
    opt = osc.optimizer(skip, torch.optim.SGD, lr=0.1, retraction_impl="matmul")
    assert [g["retraction_impl"] for g in opt.param_groups if "retraction" in g] == ["matmul"]
    with pytest.raises(ValueError, match="unknown retraction impl 'svd'"):
        osc.optimizer(skip, torch.optim.SGD, lr=0.1, retraction_impl="svd")


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_a_vits_position_embedding_and_class_token_go_without_decay(pool):
    """They were decayed for having 3 dimensions, though the decay group is documented as weight
    matrices and kernels (DeiT and timm exempt them): a module's no_weight_decay() names them."""
    model = get_model("vit_tiny", 10, pool=pool)
    groups = {g["name"]: {id(p) for p in g["params"]} for g in osc.optimizer(model, torch.optim.AdamW, lr=1e-3,
                                                                               weight_decay=0.05).param_groups}
    assert id(model.pos_embed) in groups["no_decay"] and id(model.patch_embed.weight) in groups["decay"]
    assert pool == "mean" or id(model.cls_token) in groups["no_decay"]
    assert {"cls_token", "pos_embed"} >= {n for n, p in model.named_parameters() if p.ndim >= 2
                                          and id(p) in groups["no_decay"]}


@pytest.mark.parametrize("method", PARAMETRIZED_METHODS)
def test_parametrized_weights_go_without_decay(method):
    skip = make_skip("learnable_orth", 8, method=method)
    model = nn.Sequential(nn.Linear(8, 8), skip)
    opt = osc.optimizer(model, torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4)
    no_decay = {id(p) for grp in opt.param_groups if grp["weight_decay"] == 0 for p in grp["params"]}
    assert all(id(p) in no_decay for p in skip.parameters())
    assert not any("retraction" in grp for grp in opt.param_groups)


def test_state_dict_resumes_bit_for_bit():
    def build():
        torch.manual_seed(3)
        model = get_model("resnet20", 10, "learnable_orth", method="svd", init="haar")
        opt = osc.optimizer(model, torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4)
        return model, opt

    def steps(model, opt, data):
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

    data = tiny_batches(6)
    model, opt = build()
    steps(model, opt, data)
    full = model.state_dict()

    model, opt = build()
    steps(model, opt, data[:3])
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    assert any("retraction_buffer" in s for s in saved["opt"]["state"].values())
    model, opt = build()
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    steps(model, opt, data[3:])
    for k, v in full.items():
        assert torch.equal(v, model.state_dict()[k]), k


@pytest.mark.parametrize("cls,adaptive", [(torch.optim.Adam, False), (torch.optim.RMSprop, False),
                                          (torch.optim.Adagrad, False), (torch.optim.NAdam, False),
                                          (torch.optim.NAdam, True)])
def test_state_dict_of_any_optimizer_loads_into_a_fresh_one_and_resumes_bit_for_bit(cls, adaptive):
    """These classes read every parameter's state["step"] when a state_dict is loaded; a
    retracted matrix's state is its momentum buffer alone (loading once raised KeyError), or
    with retraction_adaptive its Adam moments in so(n) and their step count."""
    def build():
        torch.manual_seed(1)
        model = osc.ResidualMLP(6, 2, num_classes=3, in_features=5, skip_layer=osc.skip("learnable_orth", method="qr"))
        return model, osc.optimizer(model, cls, lr=0.01, retraction_momentum=0.5, retraction_adaptive=adaptive)

    def steps(model, opt, data):
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 5, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(6)]
    model, opt = build()
    steps(model, opt, data)
    full = copy.deepcopy(model.state_dict())
    model, opt = build()
    steps(model, opt, data[:3])
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    model, opt = build()
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    assert any(s.get("retraction_step") == 3 if adaptive else "retraction_buffer" in s for s in opt.state.values())
    steps(model, opt, data[3:])
    for k, v in full.items():
        assert torch.equal(v, model.state_dict()[k]), k


# --------------------------------------------------------------------------- Adam in so(n)


def lie_adam_reference(Ws, grads_per_step, lr, betas, eps, method):
    """retraction_adaptive written out one matrix at a time (the oracle): Omega = skew(W^T G),
    Adam's moments and bias correction per matrix (its own step count: a None gradient is no
    step), then the retraction along W Omega_hat."""
    states = [dict(t=0, m=torch.zeros_like(W), v=torch.zeros_like(W)) for W in Ws]
    Ws = [W.clone() for W in Ws]
    for grads in grads_per_step:
        for i, G in enumerate(grads):
            if G is None:
                continue
            st = states[i]
            Omega = 0.5 * (Ws[i].T @ G - G.T @ Ws[i])
            st["t"] += 1
            st["m"] = betas[0] * st["m"] + (1 - betas[0]) * Omega
            st["v"] = betas[1] * st["v"] + (1 - betas[1]) * Omega * Omega
            m_hat, v_hat = st["m"] / (1 - betas[0] ** st["t"]), st["v"] / (1 - betas[1] ** st["t"])
            Ws[i] = O.retract(method, Ws[i], Ws[i] @ (m_hat / (v_hat.sqrt() + eps)), lr)
    return Ws


@pytest.mark.parametrize("method", ["svd", "qr"])
def test_adaptive_retraction_is_adam_in_the_lie_algebra_matrix_by_matrix(method):
    """float64, three skips of two sizes, 12 steps of AdamW, one skip without a gradient in
    some steps (so the stack's matrices count different steps): the library's stacked step
    equals the one-matrix-at-a-time oracle, and every W stays on O(n)."""
    torch.manual_seed(0)
    skips = nn.ModuleList([make_skip("learnable_orth", n, method=method, init="haar").double() for n in (5, 5, 3)])
    opt = osc.optimizer(skips, torch.optim.AdamW, lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1,
                        retraction_adaptive=True)
    start = [s.weight.detach().clone() for s in skips]
    g = torch.Generator().manual_seed(1)
    grads_per_step = []
    for k in range(12):
        opt.zero_grad(set_to_none=True)
        used = [0, 2] if k % 3 == 1 else [0, 1, 2]
        loss = sum((skips[i](torch.randn(4, skips[i].channels, generator=g, dtype=torch.float64)) ** 3).sum()
                   for i in used)
        loss.backward()
        grads_per_step.append([s.weight.grad.clone() if s.weight.grad is not None else None for s in skips])
        opt.step()
    expected = lie_adam_reference(start, grads_per_step, 0.05, (0.8, 0.95), 1e-6, method)
    for s, W in zip(skips, expected):
        torch.testing.assert_close(s.weight.detach(), W, atol=1e-12, rtol=0)
        assert float(O.orth_error(s.weight.detach())) < 1e-12
    assert [opt.state[s.weight]["retraction_step"] for s in skips] == [12, 8, 12]


def test_adaptive_retraction_is_scale_free_and_steps_as_adam_on_a_cayley_skip():
    """What Adam's normalisation buys: the loss times 1000 takes the same steps (the heavy-ball
    retraction's step grows 1000-fold); and from W = I the first step is the one Adam takes on
    a cayley skip's free matrix (W = cayley(A), A <- A - lr sign(dL/dA)), to O(lr^2)."""
    def run(method, scale, adaptive, steps=5, lr=1e-3):
        torch.manual_seed(0)
        skip = make_skip("learnable_orth", 8, method=method).double()
        target = O.haar_orthogonal(8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        opt = osc.optimizer(skip, torch.optim.Adam, lr=lr, eps=1e-14, retraction_adaptive=adaptive)
        g = torch.Generator().manual_seed(1)
        for _ in range(steps):
            x = torch.randn(16, 8, generator=g, dtype=torch.float64)
            opt.zero_grad(set_to_none=True)
            (scale * F.mse_loss(skip(x), x @ target.T)).backward()
            opt.step()
        return skip.weight.detach()

    torch.testing.assert_close(run("svd", 1000.0, True), run("svd", 1.0, True), atol=1e-12, rtol=0)
    plain = run("svd", 1000.0, False) - run("svd", 1.0, False)
    assert float(plain.norm()) > 1e-2  # without it, the scale is the step
    eye = torch.eye(8, dtype=torch.float64)
    adaptive, cayley = run("svd", 1.0, True, steps=1), run("cayley", 1.0, False, steps=1)
    assert 0.5e-3 < float((adaptive - eye).abs().max()) < 2e-3  # a step of about lr per coordinate
    assert float((adaptive - cayley).abs().max()) < 1e-5  # the same step, to O(lr^2)


def test_adaptive_retraction_is_refused_without_betas():
    model = osc.ResidualMLP(6, 2, num_classes=3, in_features=5, skip_layer=osc.skip("learnable_orth", method="svd"))
    with pytest.raises(ValueError, match="retraction_adaptive.*SGD has none"):
        osc.optimizer(model, torch.optim.SGD, lr=0.1, retraction_adaptive=True)
    assert OptimConfig(name="sgd", retraction_adaptive=True).problems() == [
        "retraction_adaptive needs optimizer adam or adamw (its betas and eps); got 'sgd'"]


def test_the_optimizer_object_pickles_with_its_model_and_steps_on_alike():
    """torch.save(opt) raised PicklingError (the retracting subclass is made at run time)."""
    import io

    torch.manual_seed(0)
    model = osc.ResidualMLP(4, 2, skip_layer=osc.skip("learnable_orth", method="qr", init="haar"))
    opt = osc.optimizer(model, torch.optim.Adam, lr=0.01)
    data = [torch.randn(3, 4) for _ in range(4)]

    def step(model, opt, x):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()

    step(model, opt, data[0])
    buffer = io.BytesIO()
    torch.save({"model": model, "opt": opt}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded["opt"]) is type(opt) and loaded["opt"].param_groups[0]["params"][0] is next(loaded["model"].parameters())
    for x in data[1:]:
        step(model, opt, x)
        step(loaded["model"], loaded["opt"], x)
    for a, b in zip(model.state_dict().values(), loaded["model"].state_dict().values()):
        assert torch.equal(a, b)


def test_skipped_step_skips_the_retraction_too():
    """The loops skip opt.step() on non-finite gradients: nothing moves, W included."""
    skip = make_skip("learnable_orth", 6, method="steepest", init="haar")
    opt = osc.optimizer(skip, torch.optim.SGD, lr=0.1, momentum=0.9)
    W = skip.weight.detach().clone()
    skip(torch.randn(3, 6)).sum().backward()
    torch.testing.assert_close(skip.weight.detach(), W)  # backward alone moves nothing
    opt.step()
    assert not torch.equal(skip.weight.detach(), W)


@pytest.mark.parametrize("method", RETRACTED_METHODS)
def test_a_retracted_matrix_without_gradient_stays_put_like_any_parameter(method):
    """torch's optimisers step no parameter whose grad is None; a retracted matrix that took no
    part in the loss once kept moving along its momentum buffer (by ~0.2-0.5 in 3 steps)."""
    used, unused = (make_skip("learnable_orth", 6, method=method, init="haar") for _ in range(2))
    opt = osc.optimizer(nn.ModuleList([used, unused]), torch.optim.SGD, lr=0.1, momentum=0.9)
    (used(torch.randn(3, 6)).sum() + unused(torch.randn(3, 6)).sum()).backward()
    opt.step()  # both move, both hold a momentum buffer
    W, buf = unused.weight.detach().clone(), opt.state[unused.weight]["retraction_buffer"].clone()
    W_used = used.weight.detach().clone()
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        used(torch.randn(3, 6)).sum().backward()
        opt.step()
    assert torch.equal(unused.weight.detach(), W) and torch.equal(opt.state[unused.weight]["retraction_buffer"], buf)
    assert not torch.equal(used.weight.detach(), W_used)


@pytest.mark.parametrize("method", RETRACTED_METHODS)
def test_retracted_matrices_of_two_precisions_each_move_as_alone(method):
    """Stacks are made per (shape, dtype, device): a float64 and a float32 skip of one size
    (or, on a split model, a CPU and a GPU one: tests/test_cuda.py) each take exactly the
    step they take alone. Stacked by shape alone, torch.stack promoted the float32 matrix to
    float64 and retracted it there (and matrices on two devices could not be stacked)."""
    def make(dtype):
        return make_skip("learnable_orth", 6, method=method, init="haar",
                         generator=torch.Generator().manual_seed(3)).to(dtype)

    def train(skips):
        opt = osc.optimizer(nn.ModuleList(skips), torch.optim.SGD, lr=0.2, momentum=0.9)
        g = torch.Generator().manual_seed(0)
        for _ in range(5):
            x = torch.randn(4, 6, generator=g, dtype=torch.float64)
            opt.zero_grad(set_to_none=True)
            sum((s(x.to(s.weight.dtype)) ** 3).sum() for s in skips).backward()
            opt.step()

    together = [make(torch.float64), make(torch.float32)]
    alone = [make(torch.float64), make(torch.float32)]
    train(together)
    for s in alone:
        train([s])
    for a, b in zip(together, alone):
        assert a.weight.dtype == b.weight.dtype
        assert torch.equal(a.weight.detach(), b.weight.detach())
        eye = torch.eye(6, dtype=a.weight.dtype)
        tol = 1e-12 if a.weight.dtype == torch.float64 else 1e-5
        assert torch.linalg.matrix_norm(a.weight.detach().T @ a.weight.detach() - eye) < tol
    assert not torch.equal(together[0].weight.detach().float(), together[1].weight.detach())  # not one trajectory


def test_maximize_ascends_the_retraction_too():
    """maximize=True on -loss is minimising loss, bit for bit; the retraction once descended -loss."""
    def run(maximize):
        torch.manual_seed(0)
        skip = make_skip("learnable_orth", 5, method="svd")
        opt = osc.optimizer(skip, torch.optim.SGD, lr=0.05, momentum=0.9, maximize=maximize)
        for _ in range(5):
            x = torch.randn(4, 5)
            loss = (skip(x) - x.flip(-1)).square().mean()
            opt.zero_grad()
            (-loss if maximize else loss).backward()
            opt.step()
        return skip.weight.detach()

    assert torch.equal(run(True), run(False)) and not torch.equal(run(False), torch.eye(5))


def test_plain_torch_optimizer_refuses_a_retracted_matrix():
    skip = make_skip("learnable_orth", 8, method="steepest")
    bad = torch.optim.SGD(skip.parameters(), lr=0.1)
    skip(torch.randn(2, 8)).sum().backward()
    W = skip.weight.detach().clone()
    with pytest.raises(TypeError, match=r"plain SGD.*orthogonal_skip_connections.optimizer"):
        bad.step()
    assert torch.equal(skip.weight.detach(), W)
    plain = nn.Linear(3, 3)
    torch.optim.SGD(plain.parameters(), lr=0.1).step()  # unrelated optimisers are untouched


def test_plain_optimizer_refuses_the_matrices_of_a_deep_copy_and_of_replaced_parameters():
    """torch's Parameter.__deepcopy__ drops the mark: a deep-copied model's matrices once went
    through a plain SGD unrefused (||W^T W - I|| ~ 2 after 3 steps)."""
    model = osc.ResidualMLP(4, 2, skip_layer=osc.skip("learnable_orth", method="svd", init="haar"))
    layer = osc.orthogonal_(nn.Linear(4, 4), "weight", method="qr")
    layer.load_state_dict({"weight": torch.eye(4), "bias": torch.zeros(4)}, assign=True)  # a new Parameter
    for m in (copy.deepcopy(model), layer):
        bad = torch.optim.SGD(m.parameters(), lr=0.1)
        m(torch.randn(2, 4)).sum().backward()
        with pytest.raises(TypeError, match="plain SGD"):
            bad.step()
    copied = copy.deepcopy(model)  # ... and the library's optimiser still retracts the copy
    assert [g["name"] for g in osc.optimizer(copied, torch.optim.SGD, lr=0.1).param_groups][-1] == "retracted_svd"


def test_add_param_group_refuses_a_retracted_matrix_in_a_plain_group_and_takes_param_groups():
    """A plain group added to osc.optimizer's optimiser once stepped its retracted matrices by
    the wrapped SGD (||W^T W - I|| 3e-2 after one step); param_groups(module) adds them right."""
    first = osc.ResidualMLP(4, 1, skip_layer=osc.skip("learnable_orth", method="qr"))
    second = osc.ResidualMLP(4, 1, skip_layer=osc.skip("learnable_orth", method="qr", init="haar"))
    opt = osc.optimizer(first, torch.optim.SGD, lr=0.1, momentum=0.9)
    n = len(opt.param_groups)
    with pytest.raises(TypeError, match=r"add_param_group got a retracted orthogonal matrix \(qr\).*param_groups"):
        opt.add_param_group({"params": second.parameters(), "lr": 0.5})
    assert len(opt.param_groups) == n
    opt.add_param_group({"params": nn.Linear(2, 2).weight})  # plain parameters as in torch
    for group in param_groups(second, 5e-4, retraction_momentum=0.9):
        opt.add_param_group({**group, "lr": 0.2})
    skip = next(s for _, s in iter_skips(second))
    W0 = skip.weight.detach().clone()
    for _ in range(20):
        opt.zero_grad()
        x = torch.randn(8, 4)
        F.mse_loss(second(x), x.flip(-1)).backward()
        opt.step()
    assert float(O.orth_error(skip.weight.detach())) < 1e-5 and float((skip.weight.detach() - W0).norm()) > 0.1


def test_a_part_added_later_is_retracted_with_the_optimisers_settings():
    """The README's recipe for another lr on a part (built frozen, then its param_groups added)
    once gave the part's retracted skips momentum 0 and no Adam moments, whatever the optimiser
    had: param_groups' own defaults. They now come from the optimiser, and a plain group gets none."""
    model = get_model("resnet20", 10, skip_layer=osc.skip("learnable_orth", method="svd"), in_channels=1)
    part = model.stages[2].requires_grad_(False)
    opt = osc.optimizer(model, torch.optim.AdamW, lr=1e-3, retraction_adaptive=True, retraction_impl="factor")
    n = len(opt.param_groups)
    part.requires_grad_(True)
    for group in param_groups(part, 5e-4):
        opt.add_param_group({**group, "lr": 1e-4})
    added = opt.param_groups[n:]
    assert [g["name"] for g in added] == ["decay", "no_decay", "retracted_svd"]
    assert {(g["retraction_momentum"], g["retraction_adaptive"], g["retraction_impl"]) for g in opt.param_groups
            if "retraction" in g} == {(0.9, True, "factor")}  # AdamW's first beta
    assert not any(k.startswith("retraction_") for g in added[:2] for k in g)
    # the adaptive step moves the part's skips as it moves the others (without it, svd under AdamW barely moves)
    skip = model.stages[2][1].skip
    W0 = skip.weight.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.randint(0, 10, (4,))).backward()
        opt.step()
    assert float((skip.weight.detach() - W0).norm()) > 1e-2 and float(O.orth_error(skip.weight.detach())) < 1e-5
    # settings given to param_groups are kept; a bad one is refused when the group is added
    keep = get_model("resnet20", 10, skip_layer=osc.skip("learnable_orth", method="qr"), in_channels=1)
    opt.add_param_group(param_groups(keep, retraction_momentum=0.5)[-1])
    assert opt.param_groups[-1]["retraction_momentum"] == 0.5 and opt.param_groups[-1]["retraction_adaptive"]
    with pytest.raises(ValueError, match=r"retraction_momentum must be in \[0, 1\); got 1.5"):
        opt.add_param_group({**param_groups(get_model("resnet20", 10, skip_layer=osc.skip("learnable_orth", method="qr"),
                                                      in_channels=1))[-1], "retraction_momentum": 1.5})


@pytest.mark.parametrize("method", RETRACTED_METHODS)
@pytest.mark.parametrize("optimizer_class", [torch.optim.SGD, torch.optim.AdamW])
def test_a_refused_step_changes_nothing_and_the_next_one_goes_on(method, optimizer_class):
    """A non-finite gradient of a retracted matrix raises NonFiniteError naming its group, before
    either half of the step moves anything: the momentum buffer (or Lie-Adam's moments and step
    count), the Euclidean parameters and W are as they were, and the next finite step is the one
    an optimiser that never saw the NaN takes. Before, the buffers were written first (NaN: every
    later step raised again) and the bias had stepped; qr and newton_schulz wrote NaN into W."""
    from orthogonal_skip_connections.maths.orthogonal import NonFiniteError

    kwargs = {"momentum": 0.9} if optimizer_class is torch.optim.SGD else {"retraction_adaptive": True}
    torch.manual_seed(0)
    model = osc.ResidualMLP(4, 1, skip_layer=osc.skip("learnable_orth", method=method, init="haar"))
    control = copy.deepcopy(model)
    opt = osc.optimizer(model, optimizer_class, lr=0.1, retraction_impl="factor", **kwargs)
    control_opt = osc.optimizer(control, optimizer_class, lr=0.1, retraction_impl="factor", **kwargs)
    x = torch.randn(3, 4)

    def loss_step(m, o, poison=False):
        o.zero_grad()
        m(x).sum().backward()
        if poison:
            next(s for _, s in iter_skips(m)).weight.grad[0, 0] = float("inf")
        o.step()

    loss_step(model, opt)
    loss_step(control, control_opt)
    before = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    with pytest.raises(NonFiniteError, match=rf"param group 'retracted_{method}': a gradient.*not finite.*"
                                             r"nothing was stepped. Skip opt.step\(\)"):
        loss_step(model, opt, poison=True)
    after = (model.state_dict(), opt.state_dict())
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    torch.testing.assert_close(after[1]["state"], before[1]["state"], rtol=0, atol=0)
    loss_step(model, opt)
    loss_step(control, control_opt)
    torch.testing.assert_close(model.state_dict(), control.state_dict(), rtol=0, atol=0)
    assert issubclass(NonFiniteError, ValueError)  # what safe_svd raised before it had a name


@pytest.mark.parametrize("method", RETRACTED_METHODS)
def test_every_factored_retraction_refuses_a_non_finite_step(method):
    """retract() on its factoring path: svd raised NonFiniteError on a NaN step while qr and
    newton_schulz returned NaN matrices without a word."""
    from orthogonal_skip_connections.maths.orthogonal import NonFiniteError, haar_orthogonal, retract

    W = haar_orthogonal(4, dtype=torch.float64)
    G = torch.randn(4, 4, dtype=torch.float64)
    G[1, 2] = float("nan")
    with pytest.raises(NonFiniteError):
        retract(method, W, G, 0.1, impl="factor")
    with pytest.raises(NonFiniteError):
        retract(method, W, torch.randn(4, 4, dtype=torch.float64), float("inf"), impl="factor")


@pytest.mark.parametrize("method", RETRACTED_METHODS)
def test_retract_names_a_gradient_unlike_its_matrix(method):
    """svd, qr and newton_schulz failed inside torch ("mat1 and mat2 shapes cannot be
    multiplied", a dtype error) or broadcast a 2-D G over a batch of W; steepest refused."""
    from orthogonal_skip_connections.maths.orthogonal import haar_orthogonal, retract

    W = haar_orthogonal(3, 2)
    for G in (torch.randn(4, 4), torch.randn(3, 3), torch.randn(2, 3, 3, dtype=torch.float64)):
        with pytest.raises(ValueError, match=r"G must have the shape and dtype of W, \(2, 3, 3\) torch.float32; got"):
            retract(method, W, G, 0.1, impl="factor")


def test_a_negative_learning_rate_set_after_construction_steps_nothing():
    """A group's lr set negative by hand is refused before the Euclidean half steps (it was
    refused only in the retraction, after the bias had moved)."""
    model = osc.ResidualMLP(4, 1, skip_layer=osc.skip("learnable_orth", method="qr"))
    opt = osc.optimizer(model, torch.optim.SGD, lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    before = copy.deepcopy(model.state_dict())
    for g in opt.param_groups:
        if "retraction" in g:
            g["lr"] = -0.1
    with pytest.raises(ValueError, match="learning rate must be >= 0; got -0.1"):
        opt.step()
    torch.testing.assert_close(model.state_dict(), before, rtol=0, atol=0)


def test_optimizer_names_what_was_wrong():
    model = osc.ResidualMLP(4, 1, skip_layer=osc.skip("learnable_orth", method="qr"))
    with pytest.raises(TypeError, match="got an instance of SGD: pass the class itself"):
        osc.optimizer(model, torch.optim.SGD(model.parameters(), lr=0.1), lr=0.1)
    with pytest.raises(TypeError, match="got 'sgd'"):
        osc.optimizer(model, "sgd", lr=0.1)
    # the retraction's momentum follows momentum or the first beta: a bad one is named as given
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\) \(the retraction's.*got 1.5"):
        osc.optimizer(model, torch.optim.SGD, lr=0.1, momentum=1.5)
    with pytest.raises(ValueError, match=r"betas\[0\] must be in \[0, 1\)"):
        osc.optimizer(model, torch.optim.AdamW, lr=0.1, betas=(1.5, 0.9))


def test_lr_zero_keeps_weights_and_bad_arguments_are_refused():
    skip = make_skip("learnable_orth", 4, method="qr", init="haar")
    W = skip.weight.detach().clone()
    opt = osc.optimizer(skip, torch.optim.SGD, lr=0.0, momentum=0.9)
    skip(torch.randn(3, 4)).sum().backward()
    opt.step()
    torch.testing.assert_close(skip.weight.detach(), W)
    with pytest.raises(ValueError, match="lr must be"):
        osc.optimizer(skip, torch.optim.SGD, lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0; got inf"):
        osc.optimizer(skip, torch.optim.SGD, lr=0.1, weight_decay=float("inf"))
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0; got 'a'"):  # was a TypeError of '<='
        osc.optimizer(skip, torch.optim.SGD, lr=0.1, weight_decay="a")
    with pytest.raises(ValueError, match="batch_dims must be an integer >= 0; got -1"):
        osc.optimizer(skip, torch.optim.SGD, lr=0.1, batch_dims=-1)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0; got -0.5"):
        param_groups(skip, weight_decay=-0.5)
    with pytest.raises(TypeError, match="torch.optim.Optimizer subclass"):
        osc.optimizer(skip, dict, lr=0.1)
    with pytest.raises(TypeError, match=r"takes the model \(an nn.Module\).*got list.*param_groups\(part\)"):
        osc.optimizer([{"params": skip.parameters(), "lr": 0.1}], torch.optim.SGD, lr=0.1)


def test_a_tensor_lr_as_torch_allows_trains_as_the_float_one():
    """torch optimisers take lr as a one-element tensor (for compiled steps); osc.optimizer
    refused it ('must be a finite number'). Scheduled, it moves the retraction bit for bit alike."""
    def run(lr):
        torch.manual_seed(0)
        model = osc.ResidualMLP(6, 2, skip_layer=osc.skip("learnable_orth", method="svd", init="haar"))
        opt = osc.optimizer(model, torch.optim.SGD, lr=lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
        for _ in range(4):
            opt.zero_grad()
            x = torch.randn(3, 6)
            F.mse_loss(model(x), x.flip(-1)).backward()
            opt.step()
            sched.step()
        return model.state_dict()

    as_float, as_tensor = run(0.05), run(torch.tensor(0.05))
    assert all(torch.equal(as_float[k], as_tensor[k]) for k in as_float)
    for bad in (torch.tensor([0.1, 0.2]), torch.tensor(float("nan")), True):
        with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
            osc.optimizer(nn.Linear(2, 2), torch.optim.SGD, lr=bad)


def test_batch_dims_tells_stacked_biases_from_matrices():
    model = nn.Linear(4, 4)
    model.weight = nn.Parameter(torch.zeros(3, 4, 4))  # a stack of 3 seeds' matrices
    model.bias = nn.Parameter(torch.zeros(3, 4))  # ... and biases: 2-D, but no matrix
    groups = {g["name"]: g["params"] for g in param_groups(model, 5e-4, batch_dims=1)}
    assert groups["decay"] == [model.weight] and groups["no_decay"] == [model.bias]


def test_build_optimizer_takes_the_retraction_momentum_and_decay_knobs_of_its_config():
    """build_optimizer's rules (optim's docstring): the retraction's momentum is
    cfg.retraction_momentum if set (0.0 too), else cfg.momentum whatever the optimiser (not
    AdamW's first beta); decay_norms_and_biases puts every 1-D parameter (norms' weights and
    biases, the head's bias) into the decayed group, never the retracted matrices nor a
    parametrized skip's free matrices."""
    from orthogonal_skip_connections.optim import build_optimizer

    def model(method):
        torch.manual_seed(0)
        return get_model("resnet20", 10, skip_layer=osc.skip("learnable_orth", method=method), in_channels=1)

    svd = model("svd")

    def retraction_momenta(cfg):
        return {g["retraction_momentum"] for g in build_optimizer(svd, cfg).param_groups if "retraction" in g}

    assert retraction_momenta(OptimConfig(name="adamw", momentum=0.5)) == {0.5}
    assert retraction_momenta(OptimConfig(name="adamw", momentum=0.5, retraction_momentum=0.3)) == {0.3}
    assert retraction_momenta(OptimConfig(name="sgd", momentum=0.9, retraction_momentum=0.0)) == {0.0}
    assert retraction_momenta(OptimConfig(name="sgd", momentum=0.7)) == {0.7}

    for method in ("svd", "cayley"):
        net = svd if method == "svd" else model(method)
        retracted = {id(p) for p, _ in retracted_parameters(net)}
        free = {id(p) for _, s in iter_skips(net) if s.upkeep == "parametrized" for p in s.parameters()}
        assert (len(retracted), len(free) > 0) == ((9, False) if method == "svd" else (0, True))
        vectors = {id(p) for p in net.parameters() if p.ndim < 2 and id(p) not in free}
        matrices = {id(p) for p in net.parameters() if p.ndim >= 2} - retracted - free
        assert len(vectors) > 2 * 19 and matrices  # every BatchNorm's weight and bias, the head's bias
        for on in (False, True):
            opt = build_optimizer(net, OptimConfig(weight_decay=5e-4, decay_norms_and_biases=on))
            groups = {g["name"]: g for g in opt.param_groups}
            decayed = {id(p) for p in groups["decay"]["params"]}
            undecayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
            assert groups["decay"]["weight_decay"] == 5e-4
            assert decayed == (matrices | vectors if on else matrices), (method, on)
            assert undecayed == (free | retracted if on else free | retracted | vectors), (method, on)


# --------------------------------------------------------------------------- users' modules


@pytest.mark.parametrize("method", ["steepest", "svd", "cayley", "matrix_exp"])
def test_orthogonal_on_a_linear_layer_trains_and_stays_orthogonal(method):
    torch.manual_seed(0)
    layer = nn.Linear(16, 16)
    kwargs = {"orthogonal_map": method} if method == "matrix_exp" else {"method": method}
    osc.orthogonal_(layer, "weight", init="haar", **kwargs)
    target = O.haar_orthogonal(16, generator=torch.Generator().manual_seed(1))
    opt = osc.optimizer(layer, torch.optim.AdamW, lr=0.01, weight_decay=1e-2)
    first = None
    for _ in range(200):
        x = torch.randn(32, 16)
        loss = F.mse_loss(layer(x) - layer.bias, x @ target.T)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(O.orth_error(layer.weight.detach())) <= 1e-4
    assert loss.item() < 0.5 * first


def test_orthogonal_on_a_custom_block_keeps_init_none_as_polar_factor():
    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = nn.Parameter(torch.randn(5, 5))
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.scale * x @ self.mix.T

    block = Mixer()
    M = block.mix.detach().clone()
    osc.orthogonal_(block, "mix", method="newton_schulz", init=None, update_rule_iters=60)
    torch.testing.assert_close(block.mix.detach().double(), O.polar(M.double()), atol=1e-5, rtol=0)
    assert retraction_of(block.mix).ns_steps == 60
    opt = osc.optimizer(block, torch.optim.SGD, lr=0.01, momentum=0.9)
    target = O.haar_orthogonal(5, generator=torch.Generator().manual_seed(2))
    for _ in range(50):
        opt.zero_grad()
        x = torch.randn(4, 5)
        (block(x) - x @ target.T).square().sum().backward()
        opt.step()
    assert float(O.orth_error(block.mix.detach())) <= 1e-4


def test_orthogonal_refuses_non_square_and_unknown_methods():
    with pytest.raises(ValueError, match="square matrix"):
        osc.orthogonal_(nn.Linear(3, 4), "weight")
    with pytest.raises(ValueError, match="unknown orthogonal method 'bogus'"):
        osc.orthogonal_(nn.Linear(3, 3), "weight", method="bogus")
    with pytest.raises(ValueError, match="disagree"):
        osc.orthogonal_(nn.Linear(3, 3), "weight", method="svd", update_rule="qr")
    with pytest.raises(ValueError, match="Linear has no parameter 'weigth'; its parameters: weight, bias"):
        osc.orthogonal_(nn.Linear(3, 3), "weigth")
    with pytest.raises(ValueError, match=r"already parametrized \(torch.nn.utils.parametrize\)"):
        osc.orthogonal_(nn.utils.parametrizations.weight_norm(nn.Linear(3, 3)), "weight")
    for second in ("qr", "cayley"):  # once reset W to I, or left cayley's free matrix marked as retracted
        layer = osc.orthogonal_(nn.Linear(3, 3), "weight", method="svd", init="haar")
        W = layer.weight.detach().clone()
        with pytest.raises(ValueError, match=r"Linear.weight is already kept orthogonal \(svd\)"):
            osc.orthogonal_(layer, "weight", method=second)
        assert torch.equal(layer.weight.detach(), W) and not parametrize.is_parametrized(layer)


@pytest.mark.parametrize("method", PARAMETRIZED_METHODS)
def test_lr_scale_is_refused_where_it_would_be_ignored(method):
    """lr_scale scales the retracted step; a parametrized method's free matrix is stepped by
    the optimiser at its group's lr, so lr_scale there did nothing without a word."""
    with pytest.raises(ValueError, match=rf"lr_scale=3 .*{method}"):
        osc.orthogonal_(nn.Linear(4, 4, bias=False), method=method, lr_scale=3)
    with pytest.raises(ValueError, match=rf"lr_scale=0.5 .*{method}"):
        osc.skip("learnable_orth", method=method, lr_scale=0.5)
    osc.skip("learnable_orth", method=method, lr_scale=1.0)(4)  # the default, as the apps pass it
    osc.skip("linear", lr_scale=2.0)(4)  # other kinds take no upkeep at all: nothing to refuse
    assert osc.skip("learnable_orth", method="svd", lr_scale=3)(4).lr_scale == 3


@pytest.mark.parametrize("method", RETRACTED_METHODS)
def test_lr_scale_multiplies_the_retracted_step(method):
    """A retracted skip of lr_scale 3 under lr 0.1 takes the step maths.orthogonal.retract takes
    at step size 0.3 (float64, first step: the momentum buffer is G), not the one at 0.1 that
    the same skip of lr_scale 1 takes."""
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    moved = {}
    for scale in (3.0, 1.0):
        skip = make_skip("learnable_orth", 6, method=method, init="haar", lr_scale=scale,
                         generator=torch.Generator().manual_seed(4)).double()
        opt = osc.optimizer(skip, torch.optim.SGD, lr=0.1, momentum=0.9)
        assert [g["lr_scale"] for g in opt.param_groups if "retraction" in g] == [scale]
        W = skip.weight.detach().clone()
        (skip(x) ** 3).sum().backward()
        G = skip.weight.grad.clone()
        opt.step()
        moved[scale] = skip.weight.detach().clone()
        expected = O.retract(method, W, G, 0.1 * scale, retraction_of(skip.weight).ns_steps)
        torch.testing.assert_close(moved[scale], expected, atol=1e-12, rtol=0)
    assert float((moved[3.0] - moved[1.0]).abs().max()) > 1e-2


def test_skip_layer_factory_in_models_and_patch_skips():
    factory = osc.skip("learnable_orth", method="cayley", init="haar")
    model = osc.get_model("resnet20", 10, skip_layer=factory)
    skips = [s for _, s in iter_skips(model)]
    assert skips and all(s.method == "cayley" and s.init == "haar" for s in skips)
    mlp = osc.ResidualMLP(6, 3, skip_layer=osc.skip("linear"))
    assert all(s.kind == "linear" for _, s in iter_skips(mlp))
    osc.patch_skips(mlp, osc.skip("learnable_orth", update_rule="qr"))
    assert all(s.method == "qr" for _, s in iter_skips(mlp))
    with pytest.raises(ValueError, match="unknown skip kind 'bogus'"):
        osc.skip("bogus")
    with pytest.raises(ValueError, match="unknown skip option"):
        osc.skip("identity", colour="red")


def test_identity_and_scalar_skips_refuse_wrong_channel_counts():
    for kind in ("identity", "scalar"):
        with pytest.raises(ValueError, match=r"expects \(N, 4\)"):
            make_skip(kind, 4)(torch.randn(2, 5))



SCHED_WARNING = r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`"


def test_schedule_moves_on_over_a_skipped_first_step_without_torch_s_order_warning():
    """The loops step the schedule on a skipped step too. torch's order warning is dropped
    for a step said to be skipped, and only then: a schedule stepped before the optimiser
    without saying so (a loop that forgot opt.step()) still warns."""
    cfg = OptimConfig(name="sgd", lr=0.1, schedule="cosine")
    model = nn.Linear(3, 3)
    opt = osc.optimizer(model, torch.optim.SGD, lr=0.1)
    sched = lr_scheduler(opt, cfg, steps_per_epoch=4, epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sched.step(skipped=True)  # the first step was skipped: no optimiser step
        warnings.warn("another warning", UserWarning)  # not hidden
    assert [str(w.message) for w in caught] == ["another warning"]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * lr_factor(1, 4, 1, cfg))  # the schedule moved on
    fresh = lr_scheduler(osc.optimizer(model, torch.optim.SGD, lr=0.1), cfg, steps_per_epoch=4, epochs=1)
    with pytest.warns(UserWarning, match=SCHED_WARNING):
        fresh.step()


def test_an_ema_of_retracted_skips_is_put_back_on_o_n_by_its_polar_factor():
    """An EMA (torch's AveragedModel) of orthogonal matrices leaves O(n); project_orthogonal_
    replaces each retracted matrix by the nearest orthogonal one (scipy's polar as the oracle),
    leaves parametrized skips and orthogonal matrices as they are, and reports how far it moved."""
    import numpy as np
    import scipy.linalg
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    for method in ("svd", "cayley"):
        model = osc.get_model("resnet20", 10, skip_layer=osc.skip("learnable_orth", method=method, init="haar"))
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
        opt = osc.optimizer(model, torch.optim.SGD, lr=0.1, momentum=0.9)
        for _ in range(10):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            ema.update_parameters(model)
        before = [s.weight.detach().clone() for _, s in iter_skips(ema.module)]
        moved = osc.project_orthogonal_(ema.module)
        after = [s.weight.detach() for _, s in iter_skips(ema.module)]
        if method == "cayley":  # W = phi(mean of free matrices): orthogonal already, nothing retracted
            assert moved == 0.0 and all(torch.equal(a, b) for a, b in zip(before, after))
            continue
        assert max(float(O.orth_error(b.double())) for b in before) > 1e-3  # the average left O(n)
        assert max(float(O.orth_error(a.double())) for a in after) < 3e-5  # float32 round-off at n = 64
        for a, b in zip(after, before):
            u, _ = scipy.linalg.polar(b.double().numpy())
            np.testing.assert_allclose(a.numpy(), u, atol=1e-6)
        assert moved == pytest.approx(max(float(torch.linalg.matrix_norm((a - b).double())) for a, b in
                                          zip(after, before)), rel=1e-6)
        assert osc.project_orthogonal_(ema.module) < 3e-5  # a second call finds them orthogonal


def test_orthogonal_weights_lists_a_users_own_constrained_layers():
    """osc.orthogonal_weights finds weights made orthogonal with orthogonal_ outside any skip
    (which skip_diagnostics does not list), retracted and parametrized, by their state_dict
    names, and measures them: on O(n) after training, off it once an edit moves one."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2))
    osc.orthogonal_(net[0], "weight", method="qr", init="haar")
    osc.orthogonal_(net[2], "weight", method="householder", init="haar")
    opt = osc.optimizer(net, torch.optim.Adam, lr=1e-2)
    x, y = torch.randn(64, 6), torch.randint(0, 2, (64,))
    for _ in range(50):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    assert osc.skip_diagnostics(net) == []
    rows = osc.orthogonal_weights(net)
    assert [(r["name"], r["method"], r["n"]) for r in rows] == [("0.weight", "qr", 6), ("2.weight", "householder", 6)]
    assert all(r["orth_error"] < 1e-5 for r in rows)
    assert "0.weight" in net.state_dict() and "2.parametrizations.weight.original" in net.state_dict()
    with torch.no_grad():
        net[0].weight.mul_(1.1)  # an edit outside the retraction
    assert osc.orthogonal_weights(net)[0]["orth_error"] == pytest.approx(0.21 * 6 ** 0.5, rel=1e-3)
