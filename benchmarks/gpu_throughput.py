"""Train-step time of every skip kind and learnable_orth method over identity's, and the
training throughput (images/s) of ResNet-18 with identity skips, on any device.

A step is: zero_grad, forward under autocast (bf16 by default), cross-entropy, backward,
``opt.step()`` of this library's optimiser (which also retracts the retracted orthogonal
skips). Variants of one model are timed side by side in one process, interleaved
round-robin over several rounds with the device synchronised around each timing; the
table gives the median over rounds and its ratio to identity's median (and the same for
the fastest round). The ``opt.step`` column times the optimiser step alone (retraction
included), on the gradients of one backward pass. A second table times ResNet-18 with
identity skips under other settings (fp32, NCHW, cudnn.benchmark off).

Targets (issue 13, on an H100/H200): every learnable_orth method within 1.05x of
identity's step time; ResNet-18 (CIFAR stem) >= 20,000 training images/s in bf16.
``--impls factor,matmul`` times the retracted methods both ways (SVD/QR with host-side
tests, or matrix products only: the default on CUDA). ``--compile`` times compile=true's
step (forward and backward through torch.compile, and the products-only retraction).

    python benchmarks/gpu_throughput.py                     # resnet20 and resnet18, batch 512
    python benchmarks/gpu_throughput.py --quick             # a smoke run: about a minute on a 2-core CPU
    python benchmarks/gpu_throughput.py --models resnet18 --batch 1024 --rounds 7 --steps 30
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from _bench import (allow_recompiles, header, impl_rows, interleaved_times, make_optimizer, median, names,
                    parse_args, positive, resolve_device, synchronize, table)

from orthogonal_skip_connections import get_model
from orthogonal_skip_connections.models import MODEL_TYPES
from orthogonal_skip_connections.skips import ORTH_METHODS, SKIP_KINDS

IMG_TARGET = 20_000  # images/s, ResNet-18 bf16 identity, H100/H200
RATIO_TARGET = 1.05  # learnable_orth step time / identity's, H100/H200


def variants(impls: list[str], device: torch.device) -> list[tuple[str, str | None, str, str]]:
    """(kind, method, retraction impl, label): identity first (the baseline), then every other
    kind, then every learnable_orth method, retracted ones once per impl in ``impls``."""
    kinds = [("identity", None, "auto", "identity")]
    kinds += [(k, None, "auto", k) for k in SKIP_KINDS if k not in ("identity", "learnable_orth")]
    return kinds + [("learnable_orth", m, impl, f"learnable_orth/{m}{suffix}")
                    for m, impl, suffix in impl_rows(ORTH_METHODS, impls, device)]


class Step:
    """One training step of one model on one fixed batch, under one set of settings."""

    def __init__(self, model_type: str, kind: str, method: str | None, batch: int, device: torch.device,
                 amp: bool = True, channels_last: bool = True, cudnn_benchmark: bool = True, impl: str = "auto",
                 compile_backend: str | None = None, compile_mode: str | None = None, fp16: bool = False):
        torch.manual_seed(0)
        opts = {"method": method} if method else {}
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = get_model(model_type, 10, skip_kind=kind, **opts).to(device).to(memory_format=fmt)
        self.opt = make_optimizer(self.model, retraction_impl=impl)
        # compile=true of run_experiments: the forward and backward compiled, and the retraction
        # where it runs from products (matmul impl: the CUDA default); the rest of opt.step eager.
        # The parameters stay the model's own, so the optimiser sees them
        self.forward = (torch.compile(self.model, backend=compile_backend, mode=compile_mode) if compile_backend
                        else self.model)
        if compile_backend:
            self.opt.compile_retraction(compile_backend, compile_mode)
        self.x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
        self.y = torch.randint(0, 10, (batch,), device=device)
        self.amp = amp
        # amp=fp16 of run_experiments (amp=auto's choice on 7.x GPUs): float16 autocast and
        # torch's GradScaler (the loop's unscale before the step, the update after it)
        self.dtype = torch.float16 if fp16 else torch.bfloat16
        self.scaler = torch.amp.GradScaler(device.type) if fp16 and amp else None
        self.device = device
        self.cudnn_benchmark = cudnn_benchmark

    def settings(self) -> None:
        torch.backends.cudnn.benchmark = self.cudnn_benchmark

    def backward(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        ctx = torch.autocast(self.device.type, dtype=self.dtype) if self.amp else nullcontext()
        with ctx:
            loss = F.cross_entropy(self.forward(self.x).float(), self.y)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)

    def __call__(self) -> None:
        self.backward()
        self.opt.step()
        if self.scaler is not None:
            self.scaler.update()


def optimizer_step_times(steps: dict[str, Step], device: torch.device, rounds: int, calls: int) -> dict[str, float]:
    """Median seconds of ``opt.step()`` alone (on the gradients of one backward pass)."""
    for step in steps.values():
        step.settings()
        step.backward()
    times = interleaved_times({name: s.opt.step for name, s in steps.items()}, device, rounds, calls, warmup=1)
    return {name: median(ts) for name, ts in times.items()}


def step_profile(step: Step, device: torch.device, steps: int = 3) -> tuple[int, float | None]:
    """(aten calls the host issues per step, device kernel ms per step or None) over
    ``steps`` steps under torch.profiler. Where the kernels take much less than the step's
    wall time, the step is bound by the host's calls, not by the device."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step.settings()
    try:
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step()
            synchronize(device)
    except Exception as err:  # a device whose profiler cannot attach (CUPTI unavailable): say so, go on
        print(f"profiler unavailable ({type(err).__name__}: {err})")
        return 0, None
    events = prof.key_averages()
    calls = sum(e.count for e in events if e.key.startswith("aten::")) // steps
    if device.type != "cuda":
        return calls, None
    kernel_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in events
                    if str(getattr(e, "device_type", "")).endswith("CUDA"))
    return calls, kernel_us / 1000 / steps


def skip_table(model_type: str, args, device: torch.device) -> tuple[str, list[str]]:
    every = variants(args.impls, device)
    unknown = sorted((args.variants or set()) - {v[3] for v in every})
    if unknown:  # (a typo was dropped without a word, and the table said every target met)
        raise SystemExit(f"unknown --variants {', '.join(unknown)}; allowed: {', '.join(v[3] for v in every)}")
    chosen = [v for v in every if args.variants is None or v[3] in args.variants]
    if not chosen or chosen[0][0] != "identity":
        raise SystemExit("--variants must include identity (the baseline)")
    if args.compile:
        allow_recompiles(2 * len(chosen) + 8)  # one graph per variant of the one forward
    steps = {name: Step(model_type, k, m, args.batch, device, not args.no_amp, impl=impl,
                        compile_backend=args.compile, compile_mode=args.compile_mode)
             for k, m, impl, name in chosen}
    times = interleaved_times(steps, device, args.rounds, args.steps, args.warmup,
                              between=lambda name: steps[name].settings())
    opt_times = optimizer_step_times(steps, device, args.rounds, args.steps)
    profiles = {name: step_profile(s, device) for name, s in steps.items()} if args.profile else {}
    base_med, base_min = median(times["identity"]), min(times["identity"])
    rows, misses = [], []
    for name, ts in times.items():
        med, fastest = median(ts), min(ts)
        ratio = med / base_med
        target = ""
        if name.startswith("learnable_orth"):
            target = "ok" if ratio <= RATIO_TARGET else "MISS"
            if ratio > RATIO_TARGET:
                misses.append(f"{model_type} {name}: {ratio:.3f}x identity (target <= {RATIO_TARGET}x)")
        rows.append([name, f"{1000 * med:.2f}", f"{ratio:.3f}", f"{1000 * fastest:.2f}", f"{fastest / base_min:.3f}",
                     f"{1000 * opt_times[name]:.2f}", f"{args.batch / med:,.0f}", target])
        if args.profile:
            calls, kernel_ms = profiles[name]
            rows[-1][-1:-1] = [f"{calls:,}", "-" if kernel_ms is None else f"{kernel_ms:.2f}"]
    title = (f"{model_type} (CIFAR stem), batch {args.batch}, {'bf16 autocast' if not args.no_amp else 'fp32'}, "
             f"channels_last, cudnn.benchmark on; {args.rounds} rounds x {args.steps} steps, warm-up {args.warmup}"
             + (f"; forward, backward and products-only retraction compiled ({args.compile}"
                + (f", mode {args.compile_mode})" if args.compile_mode else ")") if args.compile else ""))
    columns = ["skip", "median ms", "ratio", "min ms", "ratio", "opt.step ms", "img/s"]
    columns += ["aten calls/step", "kernel ms/step"] if args.profile else []
    text = title + "\n" + table(columns + [f"<= {RATIO_TARGET}x"], rows, "<" + ">" * (len(columns) - 1) + "<")
    return text, misses


def settings_table(args, device: torch.device) -> tuple[str, list[str]]:
    """ResNet-18 with identity skips: images/s under the default and other settings."""
    settings = {
        "bf16, channels_last, cudnn.benchmark": {"amp": True, "channels_last": True, "cudnn_benchmark": True},
        "bf16, channels_last, no cudnn.benchmark": {"amp": True, "channels_last": True, "cudnn_benchmark": False},
        "bf16, NCHW, cudnn.benchmark": {"amp": True, "channels_last": False, "cudnn_benchmark": True},
        "fp16 + loss scaling, channels_last, cudnn.benchmark": {"amp": True, "fp16": True, "channels_last": True,
                                                                "cudnn_benchmark": True},
        "fp32, channels_last, cudnn.benchmark": {"amp": False, "channels_last": True, "cudnn_benchmark": True},
    }
    steps = {name: Step("resnet18", "identity", None, args.batch, device, **kw) for name, kw in settings.items()}
    times = interleaved_times(steps, device, args.rounds, args.steps, args.warmup,
                              between=lambda name: steps[name].settings())
    torch.backends.cudnn.benchmark = True
    rows, misses = [], []
    for name, ts in times.items():
        ips = args.batch / median(ts)
        target = ""
        if name.startswith("bf16, channels_last, cudnn"):
            target = "ok" if ips >= IMG_TARGET else "MISS"
            if ips < IMG_TARGET:
                misses.append(f"resnet18 identity bf16: {ips:,.0f} img/s (target >= {IMG_TARGET:,})")
        rows.append([name, f"{1000 * median(ts):.2f}", f"{ips:,.0f}", f"{max(args.batch / t for t in ts):,.0f}",
                     target])
    text = (f"resnet18 (CIFAR stem), identity skips, batch {args.batch}: training images/s by setting "
            f"(forward + backward + SGD step; no data loading)\n")
    text += table(["setting", "median ms", "img/s", "best img/s", f">= {IMG_TARGET:,}"], rows, "<>>><")
    return text, misses


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=names(MODEL_TYPES, "model"), default="resnet20,resnet18",
                   help="comma-separated model types")
    p.add_argument("--batch", type=positive, default=512)
    p.add_argument("--steps", type=positive, default=20, help="steps per timing")
    p.add_argument("--rounds", type=positive, default=5)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    p.add_argument("--device", default="auto", help="auto (cuda if any, else cpu) | cpu | cuda | cuda:N")
    p.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset, e.g. identity,learnable_orth/householder (default: all)")
    p.add_argument("--no-settings", action="store_true", help="skip the resnet18 settings table")
    p.add_argument("--impls", type=names(("auto", "factor", "matmul"), "impl"), default="auto",
                   help="retraction impls of the retracted methods: auto | factor,matmul (a row each; the one "
                        "auto picks on this device is unmarked, the other marked @factor / @matmul)")
    p.add_argument("--threads", type=positive, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile's mode with --compile (inductor): reduce-overhead replays the step's kernels as "
                        "CUDA graphs, which removes the host's per-launch cost (run_experiments' compile_mode)")
    p.add_argument("--profile", action="store_true",
                   help="also profile 3 steps of each variant: aten calls per step (the host's work) and, on CUDA, "
                        "the kernels' time per step; kernels well under the step's time mean a host-bound step")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile each model's forward and backward (compile=true; default backend inductor), "
                        "and the retraction where it runs from products (the CUDA default; see "
                        "RetractingOptimizer.compile_retraction), the rest of the optimiser step eager: where eager steps are bound by the host's launches, as resnet20's "
                        "on a GPU, this removes most of a skip's per-op cost. Compiling takes a while per variant")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: resnet20 only, batch 16, 2 rounds x 1 step, warm-up 1")
    args = parse_args(p, argv, quick=dict(models="resnet20", batch=16, steps=1, rounds=2, warmup=1))
    if args.compile_mode and not args.compile:
        raise SystemExit("--compile-mode needs --compile")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variants is not None:
        args.variants = {v.strip() for v in args.variants.split(",")}
    device = resolve_device(args.device)
    print(header("train-step time by skip kind, and ResNet-18 training throughput", device), flush=True)
    misses = []
    for model_type in args.models:
        text, miss = skip_table(model_type, args, device)
        misses += miss
        print("\n" + text, flush=True)
    if not args.no_settings:
        text, miss = settings_table(args, device)
        misses += miss
        print("\n" + text, flush=True)
    synchronize(device)
    if device.type == "cuda":
        print(f"\npeak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    print("\ntargets (H100/H200; informative on other devices):",
          "all met" if not misses else f"{len(misses)} missed")
    for m in misses:
        print("  " + m)


if __name__ == "__main__":
    main(sys.argv[1:])
