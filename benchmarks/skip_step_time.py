"""Train-step time of resnet20 with each learnable_orth method, relative to identity skips.

Every variant is timed in the same process, interleaved round-robin over several rounds
(so machine noise hits all of them alike); each round's time is divided by identity's and
by linear's (a plain trainable matrix: the floor of any matrix skip) of the same round,
and the table gives the median and quartiles of those ratios over rounds. A step is
forward + backward + SGD step + the skip's constraint upkeep. ``--baseline-src`` times an
older checkout's variants in the same run (before / after).

A second table times the upkeep of the parametrized methods alone (``--upkeep-models``):
forward and backward of the W's of all a model's skips (resnet20: 3 skips each of 16, 32,
64 channels; resnet18: 2 each of 64, 128, 256, 512), one call per skip (``skip.weight``,
torch's parametrization) against one batched call per size (``skips.batched``, what a
model's forward does), interleaved round-robin, median and quartiles over rounds.

    python benchmarks/skip_step_time.py [--batch 128] [--steps 3] [--rounds 10] [--device cpu]
        [--threads N] [--memory-format channels_last|contiguous] [--methods steepest,cayley]
        [--baseline-src ../old-worktree/src] [--upkeep-models resnet20,resnet18] [--upkeep-rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import orthogonal_skip_connections as osc
from orthogonal_skip_connections.maths.orthogonal import one_thread
from orthogonal_skip_connections.skips import ORTH_METHODS, PARAMETRIZED_METHODS, iter_skips
from orthogonal_skip_connections.skips.batched import CPU_MAX_N, shared_groups, shared_weights


def load_package(src: str | None):
    """This library, or (``src``: a ``src/`` folder of another checkout, e.g. a git
    worktree of an older commit) that version of it, imported under another name so that
    both run side by side in this process."""
    if src is None:
        return osc
    import atexit
    import importlib
    import shutil
    import sys
    import tempfile
    from pathlib import Path

    package = Path(src) / "orthogonal_skip_connections"
    if not package.is_dir():
        raise SystemExit(f"--baseline-src {src}: no orthogonal_skip_connections/ in it (give a checkout's src/)")
    folder = Path(tempfile.mkdtemp(prefix="osc_baseline_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # the copy is this run's alone
    shutil.copytree(package, folder / "osc_baseline")
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


def upkeep_calls(model_type: str, method: str, device: torch.device):
    """(per skip, batched): forward + backward of the W's of every skip of ``model_type``
    with ``method`` skips, moved off A = 0 (a random X) so that the maps do their full work."""
    torch.manual_seed(0)
    model = osc.get_model(model_type, 10, skip_kind="learnable_orth", method=method, init="haar").to(device)
    skips = [s for _, s in iter_skips(model)]
    with torch.no_grad():
        for s in skips:
            X = s.parametrizations.weight.original
            X.add_(0.1 * torch.randn_like(X))
    R = [torch.randn(s.channels, s.channels, device=device) for s in skips]  # a fixed gradient per W
    cpu = device.type == "cpu"

    def per_skip():
        with one_thread(cpu):  # as OrthogonalSkip.matrix computes W
            Ws = [s.weight for s in skips]
        sum((W * r).sum() for W, r in zip(Ws, R)).backward()

    groups = shared_groups(model)
    alone = [s for s in skips if not any(s is m for g in groups for m in g)]
    order = [m for g in groups for m in g] + alone
    R_b = [R[next(i for i, s in enumerate(skips) if s is m)] for m in order]

    def batched():
        Ws = [W for g in groups for W in shared_weights(g)]
        with one_thread(cpu):
            Ws += [s.weight for s in alone]
        sum((W * r).sum() for W, r in zip(Ws, R_b)).backward()

    return per_skip, batched


def upkeep_table(models: list[str], methods: list[str], rounds: int, calls: int, device: torch.device) -> str:
    from _bench import interleaved_times, table

    fns = {}
    for model_type in models:
        for method in methods:
            per_skip, batched = upkeep_calls(model_type, method, device)
            fns[(model_type, method, "per skip")] = per_skip
            fns[(model_type, method, "batched")] = batched
    times = interleaved_times(fns, device, rounds, calls, warmup=2)
    rows = []
    for model_type in models:
        for method in methods:
            loop, bat = times[(model_type, method, "per skip")], times[(model_type, method, "batched")]
            q = quartiles([a / b for a, b in zip(loop, bat)])
            rows.append([model_type, method, f"{1000 * statistics.median(loop):.2f}",
                         f"{1000 * statistics.median(bat):.2f}", f"{q[1]:.2f} ({q[0]:.2f}-{q[2]:.2f})"])
    from _bench import device_name

    return (f"upkeep alone: forward + backward of every skip's W, ms (median of {rounds} rounds x {calls} calls), "
            f"device {device_name(device)}, torch {torch.__version__}; batched: n <= {CPU_MAX_N} on the CPU\n"
            + table(["model", "method", "per skip", "batched", "per skip / batched (q1-q3)"], rows, "<<>>>"))


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


def main() -> None:
    from _bench import names, positive
    from orthogonal_skip_connections.models import MODEL_TYPES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=positive, default=128)
    p.add_argument("--steps", type=positive, default=3, help="steps per timing")
    p.add_argument("--rounds", type=positive, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--memory-format", choices=["channels_last", "contiguous"], default="channels_last",
                   help="layout of inputs and weights (run_experiments' default: channels_last)")
    p.add_argument("--threads", type=positive, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--methods", type=names(ORTH_METHODS, "method"), default=",".join(ORTH_METHODS),
                   help="learnable_orth methods to time")
    p.add_argument("--baseline-src", default=None,
                   help="src/ folder of another checkout (e.g. a worktree of an older commit): its variants are "
                        "timed too, interleaved with this checkout's (before/after in one run)")
    p.add_argument("--upkeep-models", type=names(MODEL_TYPES, "model"), default="resnet20,resnet18",
                   help="models of the upkeep-alone table ('' for none)")
    p.add_argument("--upkeep-rounds", type=positive, default=15)
    p.add_argument("--upkeep-calls", type=positive, default=3)
    p.add_argument("--no-steps", action="store_true", help="only the upkeep-alone table")
    p.add_argument("--clock", choices=["wall", "process"], default="wall",
                   help="wall: elapsed time; process: this process's CPU time (CPU only; on a shared machine "
                        "not inflated while other processes hold the core; with --threads 1 the step's own work)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from _bench import resolve_device

    device = resolve_device(args.device)
    methods, upkeep_models = args.methods, args.upkeep_models
    if args.clock == "process" and device.type != "cpu":
        raise SystemExit("--clock process measures CPU time: use it with --device cpu")
    versions = {"this": osc} | ({"baseline": load_package(args.baseline_src)} if args.baseline_src else {})
    if upkeep_models and [m for m in methods if m in PARAMETRIZED_METHODS]:
        print(upkeep_table(upkeep_models, [m for m in methods if m in PARAMETRIZED_METHODS], args.upkeep_rounds,
                           args.upkeep_calls, device) + "\n", flush=True)
    if args.no_steps:
        return
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    # linear: a plain trainable matrix, the cost of applying any C x C skip without upkeep
    variants = [("identity", None), ("linear", None)] + [("learnable_orth", m) for m in methods]
    steps = {(ver, *v): make_step(pkg, *v, args.batch, device, args.memory_format == "channels_last")
             for v in variants for ver, pkg in versions.items()}
    for step in steps.values():  # warm-up
        for _ in range(2):
            step()
    times = {k: [] for k in steps}
    for _ in range(args.rounds):
        for k, step in steps.items():
            sync()
            t0 = clock()
            for _ in range(args.steps):
                step()
            sync()
            times[k].append((clock() - t0) / args.steps)
    # Ratios are taken within each round (variants timed seconds apart see the same machine
    # load), then summarised over rounds by the median and the quartiles: on a shared machine
    # the load changes between rounds far more than within one.
    from _bench import device_name

    print(f"resnet20, batch {args.batch}, {args.memory_format}, device {device_name(device)}, "
          f"torch {torch.__version__}, {args.rounds} rounds x {args.steps} steps, variants interleaved, "
          f"{args.clock} clock")  # (device_name: the GPU's name, or the CPU's with its thread count)
    base_col = f" {'/ baseline (q1-q3)':>22}" if len(versions) > 1 else ""
    print(f"{'version':<9} {'skip':<28} {'median ms':>10} {'/ identity (q1-q3)':>22} {'/ linear (q1-q3)':>22}"
          + base_col)
    for ver in versions:
        ident, lin = times[(ver, "identity", None)], times[(ver, "linear", None)]
        for kind, method in variants:
            ts = times[(ver, kind, method)]
            r_id = quartiles([t / b for t, b in zip(ts, ident)])
            r_lin = quartiles([t / b for t, b in zip(ts, lin)])
            name = kind if method is None else f"{kind}/{method}"
            fmt = lambda q: f"{q[1]:.3f} ({q[0]:.3f}-{q[2]:.3f})"  # noqa: E731
            # the same variant of the two versions, timed one after the other in each round
            r_base = "" if ver == "baseline" or len(versions) == 1 else \
                f" {fmt(quartiles([t / b for t, b in zip(ts, times[('baseline', kind, method)])])):>22}"
            print(f"{ver:<9} {name:<28} {1000 * statistics.median(ts):10.1f} {fmt(r_id):>22} {fmt(r_lin):>22}"
                  + r_base)


if __name__ == "__main__":
    main()
