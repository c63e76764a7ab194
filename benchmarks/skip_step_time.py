"""Train-step time of resnet20 with each learnable_orth method, relative to identity skips.

Every variant is timed in the same process, interleaved round-robin over several rounds
(so machine noise hits all of them alike); each round's time is divided by identity's and
by linear's (a plain trainable matrix: the floor of any matrix skip) of the same round,
and the table gives the median and quartiles of those ratios over rounds. A step is
forward + backward + SGD step + the skip's constraint upkeep. ``--baseline-src`` times an
older checkout's variants in the same run (before / after).

    python benchmarks/skip_step_time.py [--batch 128] [--steps 3] [--rounds 10] [--device cpu]
        [--threads N] [--memory-format channels_last|contiguous] [--methods steepest,cayley]
        [--baseline-src ../old-worktree/src]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import orthogonal_skip_connections as osc
from orthogonal_skip_connections.skips import ORTH_METHODS


def load_package(src: str | None):
    """This library, or (``src``: a ``src/`` folder of another checkout, e.g. a git
    worktree of an older commit) that version of it, imported under another name so that
    both run side by side in this process."""
    if src is None:
        return osc
    import importlib
    import shutil
    import sys
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="osc_baseline_"))
    shutil.copytree(Path(src) / "orthogonal_skip_connections", folder / "osc_baseline")
    sys.path.insert(0, str(folder))
    return importlib.import_module("osc_baseline")


def make_step(pkg, kind: str, method: str | None, batch: int, device: torch.device, channels_last: bool):
    torch.manual_seed(0)
    opts = {"method": method} if method else {}
    model = pkg.get_model("resnet20", 10, skip_kind=kind, **opts).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = pkg.optimizer(model, torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4, foreach=True)
    x = torch.randn(batch, 3, 32, 32, device=device).to(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()  # the retraction included

    return step


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="steps per timing")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--memory-format", choices=["channels_last", "contiguous"], default="channels_last",
                   help="layout of inputs and weights (run_experiments' default: channels_last)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--methods", default=",".join(ORTH_METHODS), help="learnable_orth methods to time")
    p.add_argument("--baseline-src", default=None,
                   help="src/ folder of another checkout (e.g. a worktree of an older commit): its variants are "
                        "timed too, interleaved with this checkout's (before/after in one run)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # linear: a plain trainable matrix, the cost of applying any C x C skip without upkeep
    variants = [("identity", None), ("linear", None)] + [("learnable_orth", m) for m in args.methods.split(",") if m]
    versions = {"this": osc} | ({"baseline": load_package(args.baseline_src)} if args.baseline_src else {})
    steps = {(ver, *v): make_step(pkg, *v, args.batch, device, args.memory_format == "channels_last")
             for v in variants for ver, pkg in versions.items()}
    for step in steps.values():  # warm-up
        for _ in range(2):
            step()
    times = {k: [] for k in steps}
    for _ in range(args.rounds):
        for k, step in steps.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync()
            times[k].append((time.perf_counter() - t0) / args.steps)
    # Ratios are taken within each round (variants timed seconds apart see the same machine
    # load), then summarised over rounds by the median and the quartiles: on a shared machine
    # the load changes between rounds far more than within one.
    print(f"resnet20, batch {args.batch}, {args.memory_format}, device {device} "
          f"({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {args.rounds} rounds x {args.steps} steps, variants interleaved")
    print(f"{'version':<9} {'skip':<28} {'median ms':>10} {'/ identity (q1-q3)':>22} {'/ linear (q1-q3)':>22}")
    for ver in versions:
        ident, lin = times[(ver, "identity", None)], times[(ver, "linear", None)]
        for kind, method in variants:
            ts = times[(ver, kind, method)]
            r_id = quartiles([t / b for t, b in zip(ts, ident)])
            r_lin = quartiles([t / b for t, b in zip(ts, lin)])
            name = kind if method is None else f"{kind}/{method}"
            fmt = lambda q: f"{q[1]:.3f} ({q[0]:.3f}-{q[2]:.3f})"  # noqa: E731
            print(f"{ver:<9} {name:<28} {1000 * statistics.median(ts):10.1f} {fmt(r_id):>22} {fmt(r_lin):>22}")


if __name__ == "__main__":
    main()
