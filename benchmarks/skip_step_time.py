"""Train-step time of resnet20 with each learnable_orth method, relative to identity skips.

Every variant is timed in the same process, interleaved round-robin over several rounds
(so machine noise hits all of them alike); the median and the fastest round's per-step
time are each divided by identity's. A step is forward + backward + SGD step + the skip's constraint upkeep.

    python benchmarks/skip_step_time.py [--batch 128] [--steps 10] [--rounds 5] [--device cpu]
        [--threads N] [--memory-format channels_last|contiguous]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import orthogonal_skip_connections as osc
from orthogonal_skip_connections import get_model
from orthogonal_skip_connections.skips import ORTH_METHODS


def make_step(kind: str, method: str | None, batch: int, device: torch.device, channels_last: bool):
    torch.manual_seed(0)
    opts = {"method": method} if method else {}
    model = get_model("resnet20", 10, skip_kind=kind, **opts).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = osc.optimizer(model, torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32, device=device).to(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()  # the retraction included

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="steps per timing")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--memory-format", choices=["channels_last", "contiguous"], default="channels_last",
                   help="layout of inputs and weights (run_experiments' default: channels_last)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # linear: a plain trainable matrix, the cost of applying any C x C skip without upkeep
    variants = [("identity", None), ("linear", None)] + [("learnable_orth", m) for m in ORTH_METHODS]
    steps = {v: make_step(*v, args.batch, device, args.memory_format == "channels_last") for v in variants}
    for step in steps.values():  # warm-up
        for _ in range(2):
            step()
    times = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v, step in steps.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync()
            times[v].append((time.perf_counter() - t0) / args.steps)
    # ratios of medians over rounds, and of the fastest rounds (machine noise only ever adds
    # time, as timeit's docs advise); on a shared VM the two can differ by 10%
    base_med, base_min = statistics.median(times[variants[0]]), min(times[variants[0]])
    print(f"resnet20, batch {args.batch}, {args.memory_format}, device {device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {args.rounds} rounds x {args.steps} steps")
    print(f"{'skip':<28} {'median ms':>10} {'ratio':>7} {'min ms':>8} {'ratio':>7}")
    for (kind, method), ts in times.items():
        med, fastest = statistics.median(ts), min(ts)
        name = kind if method is None else f"{kind}/{method}"
        print(f"{name:<28} {1000 * med:10.1f} {med / base_med:7.3f} {1000 * fastest:8.1f} {fastest / base_min:7.3f}")


if __name__ == "__main__":
    main()
