"""compile=true: the training step through torch.compile, with a parametrized (cayley) and a
retracted (steepest) orthogonal skip in one model, matches eager training.

Backend: inductor's C++ code generation takes minutes on the 2 shared CPU cores of CI (a
3-block ResNet took 300 s to compile), so these tests compile with ``aot_eager``: the same
graph capture (Dynamo) and forward/backward tracing (AOTAutograd) that inductor receives,
run with eager kernels. Set OSC_TEST_INDUCTOR=1 to run the inductor case too (slow).
"""

import copy
import json
import os

import pytest
import torch

from helpers import small_digits
from orthogonal_skip_connections.models.resnet import BasicBlock, ResNet
from orthogonal_skip_connections.runs import UserError
from orthogonal_skip_connections.skips import orthogonal_, retracted_parameters, skip
from orthogonal_skip_connections.train.classifier import COMPILE_MIN_TORCH, TrainConfig, torch_release, train_classifier

# compile=true is refused on an older torch (TrainConfig.validate); compile_retraction is not
needs_compile = pytest.mark.skipif(torch_release() < COMPILE_MIN_TORCH, reason="compile=true needs torch >= 2.5")
BACKENDS = ["aot_eager"] + (["inductor"] if os.environ.get("OSC_TEST_INDUCTOR") == "1" else [])


def mixed_model(with_exp: bool = True) -> ResNet:
    """The smallest CIFAR-style ResNet (one block per stage): a retracted steepest skip, a
    parametrized Cayley skip in the middle stage and (``with_exp``) an exp skip in the last."""
    torch.manual_seed(0)
    model = ResNet(BasicBlock, [1, 1, 1], [16, 32, 64], 10, in_channels=1,
                   skip_layer=skip("learnable_orth", method="steepest", init="haar"))
    model.stages[1][0].skip = skip("learnable_orth", method="cayley", init="haar")(32)
    if with_exp:
        model.stages[2][0].skip = skip("learnable_orth", method="exp", init="haar")(64)
    return model


def train(tmp_path, name, **options):
    model = mixed_model()
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, channels_last=True, progress=False, **options)
    summary = train_classifier(model, small_digits(), cfg, tmp_path / name, torch.device("cpu"))
    records = [json.loads(s) for s in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return model, summary, records


@needs_compile
@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_training_matches_eager_with_parametrized_and_retracted_skips(tmp_path, backend):
    eager, s_eager, r_eager = train(tmp_path, "eager")
    compiled, s_comp, r_comp = train(tmp_path, "compiled", compile=True, compile_backend=backend)
    assert s_comp["steps"] == s_eager["steps"] == 2 * (256 // 64)
    for a, b in zip(r_eager, r_comp):  # every logged loss: 2 epochs of training and evaluation
        for key in ("train_loss", "test_loss"):
            if key in a:
                assert abs(a[key] - b[key]) < 1e-4, (key, a[key], b[key])
    for (name, p), q in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-4), name
    assert s_comp["skip_orth_error_max"] < 1e-4  # the retraction still ran (eagerly, in opt.step)
    assert compiled.stages[1][0].skip.upkeep == "parametrized" and compiled.stages[0][0].skip.upkeep == "retracted"
    # what is saved is the model's own state_dict, not the compiled wrapper's
    saved = torch.load(tmp_path / "compiled" / "checkpoint.pt", weights_only=True)["model"]
    assert saved.keys() == eager.state_dict().keys()


def test_compile_backend_is_checked():
    with pytest.raises(UserError, match="unknown compile_backend 'fast'; allowed: inductor, aot_eager, eager"):
        TrainConfig(compile=True, compile_backend="fast").validate()
    with pytest.raises(UserError, match="unknown compile_mode 'fastest'; allowed: default, reduce-overhead"):
        TrainConfig(compile=True, compile_mode="fastest").validate()
    with pytest.raises(UserError, match="compile_mode=reduce-overhead needs compile=true"):
        TrainConfig(compile_mode="reduce-overhead").validate()
    with pytest.raises(UserError, match="compile_mode=max-autotune is a mode of the inductor backend; "
                                        "compile_backend is aot_eager"):
        TrainConfig(compile=True, compile_backend="aot_eager", compile_mode="max-autotune").validate()


def test_compile_true_on_a_torch_older_than_its_floor_is_one_line(monkeypatch):
    """pyproject allows torch 2.4, whose compiler splits these models into dozens of graphs:
    compile=true there is refused in one line naming the version it needs and the one running."""
    from torch.torch_version import TorchVersion

    monkeypatch.setattr(torch, "__version__", TorchVersion("2.4.1+cu121"))
    with pytest.raises(UserError, match=r"^compile=true needs torch >= 2\.5 .*; this is torch 2\.4\.1\+cu121$"):
        TrainConfig(compile=True).validate()
    TrainConfig().validate()  # without compile: nothing to refuse
    for allowed in ("2.5.1", "2.5.0a0+git1234", "2.10.0", "3.0.0.dev20270101"):  # 2.5's pre-releases too
        monkeypatch.setattr(torch, "__version__", TorchVersion(allowed))
        TrainConfig(compile=True).validate()


@needs_compile
def test_compile_mode_reaches_the_model_and_the_retraction(tmp_path, monkeypatch):
    """compile_mode=reduce-overhead from the app's command line: torch.compile is asked for that
    mode for the model and for the retraction (what it does there is a GPU's business: CUDA
    graphs; on the CPU, inductor's default code). torch.compile is recorded, not run."""
    from orthogonal_skip_connections.experiments import run_experiments

    calls = []

    def record(fn, **kwargs):
        calls.append((getattr(fn, "__name__", type(fn).__name__), kwargs))
        return fn

    monkeypatch.setattr(torch, "compile", record)
    base = ["dataset=digits", "model.model_type=resnet20", "device=cpu", "progress=false", "scheduler.epochs=1",
            "batch_size=512", "model.skip_kind=learnable_orth", "model.method=steepest"]
    summary = run_experiments.main.run([*base, "compile=true", "compile_mode=reduce-overhead"], tmp_path / "run")
    assert summary["config"]["compile_mode"] == "reduce-overhead"
    assert [(name, kw["backend"], kw["mode"]) for name, kw in calls] == [
        ("ResNet", "inductor", "reduce-overhead"), ("_retract_stacks", "inductor", "reduce-overhead")]
    calls.clear()
    run_experiments.main.run([*base, "compile=true"], tmp_path / "default")
    assert [kw["mode"] for _, kw in calls] == [None, None]


@needs_compile
def test_run_experiments_compile_true_matches_eager(tmp_path):
    """The app's compile=true key end to end (digits, one epoch): a one-block ViT, whose two
    Cayley skips of one size are computed as one batch, traced in under half resnet20's time
    (a ResNet's parametrized and retracted skips compiled: the first test of this file)."""
    from orthogonal_skip_connections.experiments import run_experiments

    base = ["dataset=digits", "model.model_type=vit_tiny", "model.depth=1", "model.width=16", "model.heads=2",
            "device=cpu", "progress=false", "scheduler.epochs=1", "batch_size=256", "model.skip_kind=learnable_orth",
            "model.method=cayley", "model.init=haar"]
    eager = run_experiments.main.run(base, tmp_path / "eager")
    compiled = run_experiments.main.run([*base, "compile=true", "compile_backend=aot_eager"], tmp_path / "compiled")
    assert compiled["config"]["compile"] is True and eager["config"]["compile"] is False
    for key in ("train_loss", "test_loss"):
        assert abs(eager[key] - compiled[key]) < 1e-4, key


@pytest.mark.parametrize("enabled", [False, True])
def test_a_one_thread_block_compiles_as_plain_code(enabled):
    """The skips' small-matrix blocks run in ``one_thread(device is the CPU)``: dynamo must trace
    through it either way (a thread switch, or a torch call before the enabled test, made
    dynamo leave the whole frame eager: resnet20 with cayley skips compiled to 6 graphs on
    the CPU, now 2, the batching hook's and the model's)."""
    from orthogonal_skip_connections.maths import orthogonal as orth

    def f(x):
        with orth.one_thread(enabled):
            y = x * 2
        return y + 1

    torch._dynamo.reset()
    explained = torch._dynamo.explain(f)(torch.randn(3))
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with orth.one_thread(True):  # eager, it still switches
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- the retraction compiled


def retracted_model(method: str, seed: int = 0) -> ResNet:
    """Two blocks per stage: two skips per shape (8, 16, 32), so every group stacks."""
    torch.manual_seed(seed)
    return ResNet(BasicBlock, [2, 2, 2], [8, 16, 32], 10, in_channels=1,
                  skip_layer=skip("learnable_orth", method=method, init="haar"))


def exp_model() -> ResNet:
    """One stage of two blocks (8 channels): two exp skips of one size, so they stack (the
    batched W's), in a third of :func:`retracted_model`'s graph."""
    torch.manual_seed(0)
    return ResNet(BasicBlock, [2], [8], 10, in_channels=1, skip_layer=skip("learnable_orth", method="exp", init="haar"))


def counting(backend: str = "aot_eager"):
    """A torch.compile backend that records each graph it is given, then compiles it with ``backend``."""
    inner = torch._dynamo.lookup_backend(backend)
    graphs = []

    def compile_graph(gm, example_inputs):
        graphs.append(gm)
        return inner(gm, example_inputs)

    return compile_graph, graphs


def train_steps(model, opt, steps: int, seed: int = 0) -> list[float]:
    """``steps`` SGD steps on random 8 x 8 images under a warm-up then 1/k schedule."""
    from torch.nn import functional as F

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: (k + 1) / 3 if k < 3 else 3 / (k + 1))
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    losses = []
    for _ in range(steps):
        x, y = torch.randn(16, 1, 8, 8, generator=g).to(device), torch.randint(0, 10, (16,), generator=g).to(device)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


def lockstep_steps(models, opts, steps: int) -> float:
    """:func:`train_steps` (its batches, its schedule) on the pair (eager, compiled), the eager
    one restarted each step from the compiled one's weights and optimiser state: the largest
    difference one step makes between them (any parameter, any step). Step by step because a
    whole trajectory is chaotic: a pre-activation within round-off of a ReLU's kink takes the
    other branch, and a 1e-7 difference in W became 5e-4 at the eighth step (steepest, torch
    2.14 on CPU) with each step's retraction still the eager one's to 1e-7."""
    from torch.nn import functional as F

    base = [[g["lr"] for g in o.param_groups] for o in opts]
    device = next(models[0].parameters()).device
    for o in opts:
        for group in o.param_groups:
            group.setdefault("initial_lr", group["lr"])  # as a scheduler sets it
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for k in range(steps):
        models[0].load_state_dict(models[1].state_dict())
        opts[0].load_state_dict(copy.deepcopy(opts[1].state_dict()))  # shares no buffer with opts[1]
        x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
        x, y = x.to(device), y.to(device)
        for m, o, lrs in zip(models, opts, base):
            for group, lr in zip(o.param_groups, lrs):
                group["lr"] = lr * ((k + 1) / 3 if k < 3 else 3 / (k + 1))
            o.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            o.step()
        worst = max([worst] + [float((p - q).detach().abs().max())
                               for p, q in zip(models[0].parameters(), models[1].parameters())])
    return worst


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["steepest", "svd", "qr", "newton_schulz"])
def test_compiled_retraction_is_the_eager_retraction(method, backend):
    """compile_retraction: the same steps as eager (matmul impl, momentum, a changing learning
    rate), one graph for the whole group however the rate moves, W on O(n), the same state."""
    from orthogonal_skip_connections.maths import orthogonal as orth
    from orthogonal_skip_connections.optim import optimizer

    torch._dynamo.reset()
    backend, graphs = counting(backend)
    models = [retracted_model(method), retracted_model(method)]
    opts = [optimizer(m, torch.optim.SGD, lr=0.2, momentum=0.9, retraction_impl="matmul") for m in models]
    opts[1].compile_retraction(backend)
    # every step the eager one's to round-off (steepest's compiled polar iteration is sized for
    # a bound on eta, not eta: a few ulps; the others' graphs compute the same products)
    assert lockstep_steps(models, opts, 8) <= 1e-6
    assert len(graphs) == 1  # one group, three shapes, eight learning rates: one graph
    Ws = [W for W, _spec in retracted_parameters(models[1])]
    assert len(Ws) == 6 and max(float(orth.orth_error(W.detach())) for W in Ws) <= 1e-5
    states = [o.state_dict()["state"] for o in opts]
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        for key, value in states[0][k].items():
            torch.testing.assert_close(states[1][k][key], value, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["svd", "steepest"])
def test_compiled_adaptive_retraction_is_the_eager_one_in_one_graph(method):
    """retraction_adaptive under compile_retraction: Adam's moments in so(n) and the retraction
    in one graph for eight steps (the bias corrections and the learning rate change every step
    and enter as device tensors), the eager steps to round-off, the same optimiser state."""
    from orthogonal_skip_connections.optim import optimizer

    torch._dynamo.reset()
    backend, graphs = counting("aot_eager")
    models = [retracted_model(method), retracted_model(method)]
    opts = [optimizer(m, torch.optim.AdamW, lr=0.01, retraction_impl="matmul", retraction_adaptive=True)
            for m in models]
    opts[1].compile_retraction(backend)
    assert lockstep_steps(models, opts, 8) <= 1e-6  # every step the eager one's to round-off
    assert len(graphs) == 1
    states = [o.state_dict()["state"] for o in opts]
    steps = [s["retraction_step"] for s in states[1].values() if "retraction_step" in s]
    assert len(steps) == 6 and set(steps) == {8}
    for k in states[0]:
        for key, value in states[0][k].items():
            if key.startswith("retraction"):
                torch.testing.assert_close(torch.as_tensor(states[1][k][key]), torch.as_tensor(value),
                                           atol=1e-5, rtol=0)


def test_compiled_retraction_keeps_w_orthogonal_over_a_thousand_steps():
    """steepest, compiled, 1000 momentum steps on random gradients: W stays on O(n)."""
    from orthogonal_skip_connections.maths import orthogonal as orth
    from orthogonal_skip_connections.optim import optimizer

    torch._dynamo.reset()
    torch.manual_seed(0)
    layers = torch.nn.ModuleList([orthogonal_(torch.nn.Linear(n, n, bias=False), method="steepest", init="haar")
                                  for n in (8, 8, 32)])
    W = [layer.weight for layer in layers]
    opt = optimizer(layers, torch.optim.SGD, lr=0.05, momentum=0.9, retraction_impl="matmul")
    opt.compile_retraction("aot_eager")
    g = torch.Generator().manual_seed(0)
    for _ in range(1000):
        for p in W:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    assert max(float(orth.orth_error(p.detach())) for p in W) <= 2e-6


def test_a_factoring_retraction_stays_eager_under_compile_retraction():
    """The CPU default (SVD with host-side rank tests) is not handed to torch.compile."""
    from orthogonal_skip_connections.optim import optimizer

    torch._dynamo.reset()
    backend, graphs = counting()
    models = [retracted_model("steepest"), retracted_model("steepest")]
    opts = [optimizer(m, torch.optim.SGD, lr=0.2, momentum=0.9) for m in models]
    opts[1].compile_retraction(backend)
    a, b = (train_steps(m, o, 3) for m, o in zip(models, opts))
    assert graphs == [] and a == b


def test_compiled_exp_skips_take_the_host_free_exponential():
    """Compiled, the exp map is expm_fixed's full fixed sequence (torch's matrix_exp reads the
    host, which a CUDA graph cannot hold). The graphs hold the exponential and no matrix_exp
    (the skips' one_thread blocks are traced as plain code); the loss and every gradient are
    eager's (squarings read on the host) to round-off."""
    from torch.nn import functional as F

    torch._dynamo.reset()
    backend, graphs = counting()
    eager, model = exp_model(), exp_model()
    with torch.no_grad():  # away from W = B: exp of a non-zero A, a few squarings
        for m in (eager, model):
            for name, p in m.named_parameters():
                if "original" in name:
                    p.copy_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    compiled = torch.compile(model, backend=backend)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    losses = [F.cross_entropy(m(x), y) for m in (eager, compiled)]
    for loss in losses:
        loss.backward()
    assert abs(float(losses[0].detach()) - float(losses[1].detach())) <= 1e-5
    for (name, p), q in zip(eager.named_parameters(), model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
    targets = {str(node.target) for gm in graphs for node in gm.graph.nodes if node.op == "call_function"}
    assert any("exp2" in t for t in targets) and not any("matrix_exp" in t for t in targets), targets


@needs_compile
def test_training_loop_compiles_once_over_epochs(tmp_path):
    """train_classifier with compile=true over several epochs (warm-up then cosine decay,
    mixup, label smoothing, clipping, an evaluation every epoch) compiles its two graphs (the
    batching hook's and the model's) in the first step and never again: nothing that changes
    per step or per epoch (the learning rate, mixup's lambda, train/eval) reaches a guard. A
    recompilation per epoch would, after torch's limit of 8 per code object, leave the rest
    of a long run silently eager. Two guards did change after the first forward (3 graphs, the
    hook's twice): the skips' ``shared_weight`` moved from the class to the instance, and the
    exp map's table of theta_m grew on first use."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = exp_model()  # two exp skips of one size: batched W's
    cfg = TrainConfig(epochs=4, batch_size=64, lr=0.05, warmup_epochs=1.5, mixup_alpha=0.2, label_smoothing=0.1,
                      grad_clip=1.0, channels_last=True, progress=False, compile=True, compile_backend="eager")
    summary = train_classifier(model, small_digits(192, 64), cfg, tmp_path / "run", torch.device("cpu"),
                               save_checkpoint=False)
    assert summary["steps"] == 4 * 3
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
