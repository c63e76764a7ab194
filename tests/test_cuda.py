"""The CUDA path: bf16 training steps with every skip kind (ResNet and ViT, every residual
mode), resume on CUDA, the on-device loader on CUDA, compile=true with inductor, the loss
landscape and the Hessian on CUDA. Skipped (at collection cost only) where no CUDA GPU is present, as on CI;
run on a GPU machine with ``python -m pytest -q -o addopts= tests/test_cuda.py`` (one process;
the GPU images have no pytest-xdist).

``OSC_CUDA_REHEARSAL=1`` runs them on the CPU instead (about 3 minutes on 2 cores, more with a
cold inductor cache; ``device_check.sh --quick`` does), so that a test broken since the last GPU
run shows before device time is spent on it: the synchronisation checks become no-ops, the GPU
reports compute capability 0.0 (no TF32, no half precision by ``amp=auto``), and the one test
about a CUDA-only limit skips."""

import json
import os
import types

import pytest
import torch
import torch.nn.functional as F

import orthogonal_skip_connections as osc
from orthogonal_skip_connections.data.vision import TensorLoader, epoch_generator, load_image_data
from orthogonal_skip_connections.skips import ORTH_METHODS, SKIP_KINDS
from orthogonal_skip_connections.train.classifier import MetricSink, TrainConfig, train_classifier

REHEARSAL = os.environ.get("OSC_CUDA_REHEARSAL") == "1"
pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() or REHEARSAL), reason="needs a CUDA GPU")

CUDA = torch.device("cpu" if REHEARSAL else "cuda")
# torch.cuda's calls made by these tests; on the CPU (rehearsal) they do nothing
cuda = types.SimpleNamespace(synchronize=lambda: None, set_sync_debug_mode=lambda mode: None,
                             get_sync_debug_mode=lambda: 0, get_device_capability=lambda: (0, 0)) if REHEARSAL else torch.cuda
VARIANTS = [(k, None) for k in SKIP_KINDS if k != "learnable_orth"] + [("learnable_orth", m) for m in ORTH_METHODS]


@pytest.fixture
def no_tf32():
    """TF32 off for cuDNN and cuBLAS during the test (float32 against float32), the flags as they
    were afterwards. Not by monkeypatch: pytest 9.2 undoes a setattr by deleting the attribute when
    it was not in the instance's ``__dict__``, and cuBLAS's flags are served by
    ``cuBLASModule.__getattr__``, so the undo raised."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before


def bf16_steps(model, opt, x, y, steps: int = 3, unused_grad=lambda name: False) -> None:
    """``steps`` SGD steps under bf16 autocast: bf16 logits, a finite loss and finite
    gradients in each parameter's own dtype (a parameter may lack a gradient only where
    ``unused_grad(name)`` says so)."""
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(CUDA.type, dtype=torch.bfloat16):
            logits = model(x)
        assert logits.dtype == torch.bfloat16
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        assert torch.isfinite(loss)
        for name, p in model.named_parameters():
            if p.grad is None:
                assert unused_grad(name), name
                continue
            assert p.grad.dtype == p.dtype and torch.isfinite(p.grad).all(), name
        opt.step()


@pytest.mark.parametrize("kind,method", VARIANTS, ids=[k if m is None else f"{k}-{m}" for k, m in VARIANTS])
def test_bf16_training_step_every_skip(kind, method):
    opts = {"method": method, "init": "haar"} if method else {}
    model = osc.get_model("resnet20", 10, skip_kind=kind, **opts).to(CUDA).to(memory_format=torch.channels_last)
    opt = osc.optimizer(model, torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(16, 3, 32, 32, device=CUDA).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,), device=CUDA)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # a zero skip never computes the projection shortcut
    bf16_steps(model, opt, x, y, unused_grad=lambda name: kind == "zero" and ".shortcut." in name)
    moved = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert moved  # the step did something
    rows = osc.skip_diagnostics(model)
    assert rows and all(r["kind"] == kind for r in rows)
    for r in rows:
        if kind in ("learnable_orth", "fixed_orth"):
            # float32 weights measured in float64: round-off of C x C fp32 products, C <= 64
            assert r["orth_error"] < 1e-4, (r["name"], r["orth_error"])
    if kind == "learnable_orth":
        # the skip matrices moved on O(n): some W changed, and each is still orthogonal
        assert any(r["identity_distance"] > 0 for r in rows)


@pytest.mark.parametrize("impl", ["factor", "matmul"])
def test_retractions_on_cuda_agree_with_the_cpu_and_matmul_reads_nothing_back(impl):
    """Every retracted method on CUDA: the CPU's factor result to 1e-4, orthogonal to
    round-off, and with impl="matmul" (CUDA's default) no host synchronisation at all."""
    from orthogonal_skip_connections.maths import orthogonal as O

    g = torch.Generator().manual_seed(0)
    for n in (16, 64, 256):
        W = torch.stack([O.haar_orthogonal(n, generator=g) for _ in range(4)])
        G = torch.randn(4, n, n, generator=g)
        for method in O.RETRACTED_METHODS:
            want = O.retract(method, W, G, 0.1, impl="factor")
            Wc, Gc = W.to(CUDA), G.to(CUDA)
            cuda.synchronize()
            if impl == "matmul":
                cuda.set_sync_debug_mode("error")  # any host read raises
            try:
                got = O.retract(method, Wc, Gc, 0.1, impl=impl)
            finally:
                cuda.set_sync_debug_mode(0)
            assert float((got.cpu() - want).abs().max()) <= 1e-4, (n, method)
            assert float(O.orth_error(got.double()).max()) <= 1e-5 * n, (n, method)


@pytest.mark.parametrize("flag", ["allow_tf32", "fp32_precision", "torch.backends.fp32_precision"])
def test_retractions_stay_float32_exact_with_tf32_on_by_any_flag(flag):
    """TF32 on for cuBLAS, by the old flag or torch >= 2.9's new ones: the retractions still
    run in full float32 (W^T W = I to float32 round-off; TF32's 10-bit mantissa leaves ~1e-3),
    raise nothing (reading the old flag raises once a new one is set), and the user's
    setting is on again afterwards."""
    from orthogonal_skip_connections.maths import orthogonal as O

    matmul = torch.backends.cuda.matmul
    new_api = hasattr(torch.backends, "fp32_precision")
    if flag != "allow_tf32" and not new_api:
        pytest.skip("torch < 2.9 has only allow_tf32")
    g = torch.Generator().manual_seed(1)
    n = 256
    W = torch.stack([O.haar_orthogonal(n, generator=g) for _ in range(4)]).to(CUDA)
    G = torch.randn(4, n, n, generator=g).to(CUDA)
    try:
        if flag == "allow_tf32":
            matmul.allow_tf32 = True
        elif flag == "fp32_precision":
            matmul.fp32_precision = "tf32"
        else:
            torch.backends.fp32_precision = "tf32"
        if cuda.get_device_capability() >= (8, 0):  # the premise: a TF32 W^T W is this coarse
            assert float(O.orth_error(W).max()) > 1e-3  # (expected ~8e-3 at n = 256; float32: ~1e-5)
        for method in O.RETRACTED_METHODS:
            got = O.retract(method, W, G, 0.1)
            assert float(O.orth_error(got.double()).max()) <= 1e-5 * n, method
        assert (matmul.fp32_precision == "tf32") if new_api else matmul.allow_tf32
    finally:
        matmul.allow_tf32 = False
        if new_api:
            matmul.fp32_precision = "none"
            torch.backends.fp32_precision = "none"


def test_optimizer_step_on_cuda_reads_nothing_back():
    """opt.step() of resnet20 with retracted skips (CUDA's default impl): no synchronisation."""
    model = osc.get_model("resnet20", 10, skip_kind="learnable_orth", method="steepest", init="haar").to(CUDA)
    opt = osc.optimizer(model, torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=True)
    x = torch.randn(8, 3, 32, 32, device=CUDA)
    y = torch.randint(0, 10, (8,), device=CUDA)
    for _ in range(2):  # the second step also reads the momentum buffers
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        cuda.synchronize()
        cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            cuda.set_sync_debug_mode(0)
    assert max(r["orth_error"] for r in osc.skip_diagnostics(model)) < 1e-4


class _DieAtEpoch(MetricSink):
    """Kills the run when epoch ``epoch``'s train record arrives (before its checkpoint)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def log(self, record):
        if record["type"] == "train" and record["epoch"] == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("method,amp", [("steepest", "bf16"), ("cayley", "bf16"), ("svd", "fp16")])
def test_resume_on_cuda_matches_uninterrupted(tmp_path, monkeypatch, method, amp, fake_cifar):
    """(fp16: the GradScaler's loss scale resumes too)"""
    # deterministic kernels: on CUDA, "the same numbers" needs cuDNN's deterministic algorithms
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    fake_cifar(tmp_path / "data", "cifar10", n_train=80, n_test=40)
    data = load_image_data("cifar10", tmp_path / "data", download=False)

    def run(run_dir, sinks=(), resume=False):
        torch.manual_seed(0)
        model = osc.get_model("resnet20", 10, skip_kind="learnable_orth", method=method, init="haar")
        cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, amp=amp, channels_last=True, progress=False,
                          mixup_alpha=0.2, seed=1)
        return train_classifier(model, data, cfg, run_dir, CUDA, sinks=list(sinks), resume=resume)

    full = run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed", sinks=[_DieAtEpoch(2)])
    assert not (tmp_path / "resumed" / "summary.json").exists()
    resumed = run(tmp_path / "resumed", resume=True)

    assert full["status"] == resumed["status"] == "completed" and resumed["epochs"] == 3
    assert full["device"].startswith(CUDA.type) and full["precision"] == amp
    timing = {"train_time_s", "seconds_per_epoch"}
    a = {k: v for k, v in full.items() if k not in timing}
    b = {k: v for k, v in resumed.items() if k not in timing}
    assert a == b
    wa = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["model"]
    for key in wa:
        assert torch.equal(wa[key], wb[key]), (key, float((wa[key].float() - wb[key].float()).abs().max()))

    def lines(p):
        return [{k: v for k, v in json.loads(s).items() if k != "epoch_time_s"}
                for s in (p / "metrics.jsonl").read_text().splitlines()]

    assert lines(tmp_path / "full") == lines(tmp_path / "resumed")


def test_amp_auto_picks_the_gpus_native_half_precision():
    """amp=auto on this GPU: bf16 on compute capability 8.0+ (the H100/H200 class), fp16 on
    7.x, float32 on older GPUs."""
    from orthogonal_skip_connections.train.classifier import amp_dtype

    major = cuda.get_device_capability()[0]
    assert amp_dtype(CUDA, "auto") == (torch.bfloat16 if major >= 8 else torch.float16 if major == 7 else None)
    assert amp_dtype(CUDA, "fp16") == torch.float16 and amp_dtype(CUDA, "off") is None
    assert amp_dtype(torch.device("cpu"), "auto") is None


@pytest.mark.parametrize("channels_last", [False, True])
def test_on_device_loader_same_batches_on_cuda_as_on_cpu(tmp_path, channels_last, fake_cifar):
    fake_cifar(tmp_path / "data", "cifar10", n_train=100, n_test=30)
    data = load_image_data("cifar10", tmp_path / "data", download=False)
    for train in (True, False):
        cpu = TensorLoader(data, 16, train, torch.device("cpu"), channels_last)
        gpu = TensorLoader(data, 16, train, CUDA, channels_last)
        assert len(cpu) == len(gpu)
        for epoch in (0, 1):
            gens = (epoch_generator(3, epoch), epoch_generator(3, epoch)) if train else (None, None)
            batches_cpu = list(cpu.epoch(gens[0]))
            batches_gpu = list(gpu.epoch(gens[1]))
            assert len(batches_cpu) == len(batches_gpu) == len(cpu)
            for (xc, yc), (xg, yg) in zip(batches_cpu, batches_gpu):
                assert xg.device.type == yg.device.type == CUDA.type
                assert xg.is_contiguous(memory_format=torch.channels_last) == channels_last
                assert torch.equal(yc, yg.cpu())
                torch.testing.assert_close(xg.cpu(), xc, rtol=1e-6, atol=1e-6)


SYNC_FREE = {  # skips whose upkeep has no retraction (a retraction's maths reads the host; not the loop's)
    "identity": {},
    "linear": {},
    "cayley": {"skip_kind": "learnable_orth", "method": "cayley", "init": "haar"},
    # householder too; not exp: torch's matrix_exp picks its degree from the matrices' norms on the host
    "householder": {"skip_kind": "learnable_orth", "method": "householder", "init": "haar"},
}


@pytest.mark.parametrize("name", sorted(SYNC_FREE))
@pytest.mark.parametrize("extras", [{}, {"mixup_alpha": 0.2, "grad_clip": 1.0, "label_smoothing": 0.1},
                                    {"amp": "fp16", "grad_clip": 1.0}],
                         ids=["plain", "mixup-clip", "fp16-clip"])
def test_training_steps_synchronise_only_for_their_one_read(tmp_path, monkeypatch, name, extras, fake_cifar):
    """Every training step (the loader's batch included) runs under
    ``cuda.set_sync_debug_mode("error")``, so any synchronising CUDA call in it raises;
    the one exception is the step's read of its loss and gradient norm (``Tensor.tolist``,
    let through and counted): at most one per step. Epoch ends (metrics, evaluation,
    checkpoint) run in the default mode."""
    fake_cifar(tmp_path / "data", "cifar10", n_train=160, n_test=40)
    data = load_image_data("cifar10", tmp_path / "data", download=False)
    real_epoch, real_tolist = TensorLoader.epoch, torch.Tensor.tolist
    reads, steps = [0], []

    def epoch(self, gen=None):
        if not self.train:
            yield from real_epoch(self, gen)
            return
        cuda.set_sync_debug_mode("error")
        try:
            for batch in real_epoch(self, gen):
                before = reads[0]
                yield batch
                steps.append(reads[0] - before)
        finally:
            cuda.set_sync_debug_mode("default")

    def tolist(self):
        mode = cuda.get_sync_debug_mode()
        cuda.set_sync_debug_mode("default")
        try:
            reads[0] += 1
            return real_tolist(self)
        finally:
            cuda.set_sync_debug_mode(mode)

    monkeypatch.setattr(TensorLoader, "epoch", epoch)
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    opts = {"skip_kind": name, **SYNC_FREE[name]}
    torch.manual_seed(0)
    model = osc.get_model("resnet20", 10, **opts)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, channels_last=True, progress=False, **extras)
    try:
        summary = train_classifier(model, data, cfg, tmp_path / "run", CUDA)
    finally:
        cuda.set_sync_debug_mode("default")
    assert summary["status"] == "completed" and summary["device"].startswith(CUDA.type)
    assert len(steps) == 2 * (160 // 32) and max(steps) <= 1, steps


def test_landscape_grid_and_sharpness_on_cuda_match_the_cpu(no_tf32):
    """The loss landscape's grid (channels_last, only moving coordinates rewritten, batched
    polar factors) and the Hessian's top eigenvalue and trace give the CPU's numbers on CUDA
    (TF32 off: float32 against float32)."""
    from test_landscape import mixed_resnet

    from orthogonal_skip_connections import landscape as L

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    axis = L.grid_axis(3, 1.0)
    results = []
    for device in (torch.device("cpu"), CUDA):
        model = mixed_resnet().to(device).eval()
        directions = [L.random_direction(model, 5, k) for k in (0, 1)]
        fast, fast_x = L.channels_last(model, x.to(device))
        loss, acc = L.landscape_2d(fast, fast_x, y.to(device), directions, axis, axis, batch_size=32)
        sharp = L.sharpness(fast, fast_x, y.to(device), batch_size=64, iters=5, tol=0.0, samples=2)
        results.append((loss, sharp))
    (loss_cpu, s_cpu), (loss_cuda, s_cuda) = results
    assert loss_cpu.std() > 0.05  # the grid moved the model
    torch.testing.assert_close(torch.from_numpy(loss_cuda), torch.from_numpy(loss_cpu), rtol=1e-4, atol=1e-5)
    for key in ("top_eigenvalue", "trace"):
        assert abs(s_cuda[key] - s_cpu[key]) <= 1e-3 * abs(s_cpu[key]) + 1e-5, (key, s_cpu[key], s_cuda[key])


@pytest.mark.parametrize("residual_mode", ["add", "orthogonal_update", "rotation"])
@pytest.mark.parametrize("method", ["steepest", "cayley"])
def test_vit_bf16_steps_on_cuda_every_residual_mode(residual_mode, method):
    """A small ViT with orthogonal skips trains in bf16 on CUDA in every residual mode:
    finite loss and gradients, bf16 logits, the skips still orthogonal after three steps."""
    torch.manual_seed(0)
    model = osc.get_model("vit_tiny", 10, skip_kind="learnable_orth", method=method, init="haar",
                          residual_mode=residual_mode, width=64, depth=2, heads=2).to(CUDA)
    opt = osc.optimizer(model, torch.optim.SGD, lr=0.05, momentum=0.9)
    x, y = torch.randn(16, 3, 32, 32, device=CUDA), torch.randint(0, 10, (16,), device=CUDA)
    bf16_steps(model, opt, x, y)
    rows = osc.skip_diagnostics(model)
    assert rows and max(r["orth_error"] for r in rows) < 1e-4


@pytest.mark.parametrize("method", ["cayley", "exp", "householder"])
def test_batched_parametrized_upkeep_on_cuda_is_the_per_skip_one(method):
    """resnet18 on CUDA batches every size (64 to 512, no CPU limit there): the same logits
    and gradients as one skip at a time, float64."""
    if REHEARSAL:
        pytest.skip("the CPU batches sizes up to 128 only")
    import copy

    from orthogonal_skip_connections.skips.batched import batch_upkeep, shared_groups

    torch.manual_seed(0)
    model = osc.get_model("resnet18", 10, skip_kind="learnable_orth", method=method, init="haar").to(CUDA).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("original"):
                p.add_(0.1 * torch.randn_like(p))
    assert sorted(g[0].channels for g in shared_groups(model)) == [64, 128, 256, 512]
    plain = batch_upkeep(copy.deepcopy(model), enabled=False)
    x = torch.randn(2, 3, 32, 32, device=CUDA, dtype=torch.float64)
    a, b = model(x), plain(x)
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    a.sum().backward()
    b.sum().backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-9, rtol=0, msg=name)


@pytest.mark.parametrize("method,adaptive", [("steepest", False), ("svd", True)])
def test_compiled_retraction_on_cuda_matches_eager_and_reads_nothing_back(method, adaptive):
    """compile_retraction with inductor on CUDA (what compile=true does there): the eager
    steps to round-off, W on O(n), and no synchronisation in opt.step() once compiled; also
    with Adam's moments in so(n) (retraction_adaptive: its bias corrections are device tensors)."""
    from test_compile import lockstep_steps, retracted_model

    models = [retracted_model(method).to(CUDA), retracted_model(method).to(CUDA)]
    if adaptive:
        opts = [osc.optimizer(m, torch.optim.AdamW, lr=0.01, retraction_adaptive=True, foreach=True) for m in models]
    else:
        opts = [osc.optimizer(m, torch.optim.SGD, lr=0.2, momentum=0.9, foreach=True) for m in models]
    opts[1].compile_retraction("inductor")
    # step by step (a whole trajectory is chaotic: see lockstep_steps)
    assert lockstep_steps(models, opts, 4) <= 1e-4
    x = torch.randn(16, 1, 8, 8, device=CUDA)
    y = torch.randint(0, 10, (16,), device=CUDA)
    opts[1].zero_grad(set_to_none=True)
    F.cross_entropy(models[1](x), y).backward()
    cuda.synchronize()
    cuda.set_sync_debug_mode("error")
    try:
        opts[1].step()
    finally:
        cuda.set_sync_debug_mode(0)
    assert max(r["orth_error"] for r in osc.skip_diagnostics(models[1])) < 1e-4


def test_compiled_exp_skips_on_cuda_read_nothing_back():
    """exp skips compiled for CUDA take expm_fixed: once compiled, a forward and backward
    synchronise nothing (eager, torch's matrix_exp reads its norms on the host)."""
    from test_compile import retracted_model

    model = retracted_model("exp").to(CUDA)
    compiled = torch.compile(model)
    x = torch.randn(16, 1, 8, 8, device=CUDA)
    y = torch.randint(0, 10, (16,), device=CUDA)
    F.cross_entropy(compiled(x), y).backward()  # compiles
    cuda.synchronize()
    cuda.set_sync_debug_mode("error")
    try:
        F.cross_entropy(compiled(x), y).backward()
    finally:
        cuda.set_sync_debug_mode(0)
    assert max(r["orth_error"] for r in osc.skip_diagnostics(model)) < 1e-4


# last: inductor compiles for a while, and the device check runs this file under a time limit
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compile_true_on_cuda_with_inductor_matches_eager(tmp_path, no_tf32, mode):
    """compile=true as a GPU user runs it (inductor, bf16 autocast off so the two runs can be
    compared closely; TF32 off for the same reason): a retracted skip and a parametrized one
    (cayley) in one model, 2 epochs on digits, the same losses and weights as eager. With
    compile_mode=reduce-overhead the compiled graphs replay as CUDA graphs, and an exp skip
    joins (its map must hold no host read there; left out of the default case to keep part 1
    of the device check within its time). Compiled kernels round differently from eager ones,
    and through BatchNorm on 2 x 2 maps a round-off difference grows about 30x per step
    (notes/compile_findings.md; inductor on the CPU, 8 steps, one thread: losses 6.5e-4 apart,
    weights up to 12% of the distance they moved). So each weight is held to a quarter of the
    distance it moved in training: a compiled step that lost an update would be about 100% off."""
    from test_compile import mixed_model, small_digits


    def train(name, **options):
        model = mixed_model(with_exp=mode == "reduce-overhead")
        cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, amp="off", channels_last=True, progress=False,
                          **options)
        summary = train_classifier(model, small_digits(), cfg, tmp_path / name, CUDA)
        records = [json.loads(s) for s in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return model, summary, records

    init = mixed_model(with_exp=mode == "reduce-overhead").state_dict()
    eager, s_eager, r_eager = train("eager")
    compiled, s_comp, r_comp = train("compiled", compile=True, compile_backend="inductor", compile_mode=mode)
    assert s_comp["steps"] == s_eager["steps"] > 0
    for a, b in zip(r_eager, r_comp):
        for key in ("train_loss", "test_loss"):
            if key in a:
                assert abs(a[key] - b[key]) < 1e-3, (key, a[key], b[key])
    for (name, p), q in zip(eager.state_dict().items(), compiled.state_dict().values()):
        if p.is_floating_point():
            moved = float((p.cpu() - init[name]).abs().max())
            assert float((q - p).abs().max()) <= 0.25 * moved + 1e-5, (name, moved)
        else:
            assert torch.equal(p, q), name  # BatchNorm's step counters
    assert s_comp["skip_orth_error_max"] < 1e-4


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("method", ["steepest", "svd"])
def test_a_model_split_over_cpu_and_cuda_retracts_each_part_where_it_lives(method, compiled):
    """Model parallelism by hand: one skip on the CPU, one of the same size on the GPU, one
    optimiser. Stacks are made per (shape, dtype, device), so each moves as it does alone
    (stacked by shape alone, torch.stack refused the two devices)."""
    from orthogonal_skip_connections.skips import make_skip

    def make(device):
        return make_skip("learnable_orth", 16, method=method, init="haar",
                         generator=torch.Generator().manual_seed(5)).to(device)

    def train(skips):
        opt = osc.optimizer(torch.nn.ModuleList(skips), torch.optim.SGD, lr=0.2, momentum=0.9)
        if compiled:
            opt.compile_retraction("inductor")  # the CUDA part compiled; the CPU part factors, eagerly
        g = torch.Generator().manual_seed(0)
        for _ in range(4):
            x = torch.randn(8, 16, generator=g)
            opt.zero_grad(set_to_none=True)
            sum((s(x.to(s.weight.device)) ** 3).sum().cpu() for s in skips).backward()
            opt.step()

    together, alone = [make("cpu"), make(CUDA)], [make("cpu"), make(CUDA)]
    train(together)
    for s in alone:
        train([s])
    for a, b in zip(together, alone):
        assert a.weight.device == b.weight.device
        torch.testing.assert_close(a.weight, b.weight, atol=1e-6, rtol=0)
        W = a.weight.detach().double()
        assert torch.linalg.matrix_norm(W.T @ W - torch.eye(16, dtype=W.dtype, device=W.device)) < 1e-4
