"""One constrained C x C orthogonal layer, trained by SGD, in this library, in geotorch and
in torch: step time and how orthogonal the weight stays; then the per-call cost of each
retraction, batched against one call per matrix.

The layer is y = x W^T with W in O(C), fitted by SGD (momentum 0.9) to a Haar-random
orthogonal teacher: loss = mean (x W^T - x Q^T)^2 over a fixed batch x of B x C normal
inputs; W starts at I everywhere. The variants:

- ``osc <method>``: a ``learnable_orth`` skip of this library (``make_skip``), stepped by
  ``orthogonal_skip_connections.optim.optimizer``; retracted methods (``steepest``, the
  default, ``svd``, ``qr``, ``newton_schulz``) are moved on O(C) inside ``opt.step()``,
  parametrized ones (``cayley``, ``exp``, ``householder``) are torch's parametrization;
- ``torch <map>``: ``nn.Linear`` with ``torch.nn.utils.parametrizations.orthogonal``
  (``matrix_exp``, ``cayley``, ``householder``), plain ``torch.optim.SGD``;
- ``geotorch <triv>``: ``nn.Linear`` with ``geotorch.orthogonal`` (``expm``, ``cayley``),
  plain ``torch.optim.SGD`` (left out, with a note, if geotorch is not installed:
  ``pip install geotorch`` or the project's ``bench`` extra);
- ``osc <method>... compiled`` (with ``--compile``): the products-only retraction of the
  methods in ``--compile-methods`` run through torch.compile, as compile=true runs it
  (``RetractingOptimizer.compile_retraction``; compiling is not in the timings).

All variants of one C run side by side in one process: ``--steps`` steps each (default
1000), in ``--rounds`` interleaved rounds, each round timed with the device
synchronised; step time is the median over rounds, and after every round
||W^T W - I||_F is measured in float64; the table gives the largest over the run and
the last. Target (issue 13): this library's layer no slower than geotorch's and torch's
at every C while at least as orthogonal, checked here against their default maps
(``torch matrix_exp``, ``geotorch expm``); the fastest variant of all is named under each table.

The second table times ``maths.orthogonal.retract`` (and the parametrized maps) on a
stack of K matrices (one call) against K calls on one matrix each. Retracted methods get a
row per ``--impls`` (default both: ``factor``, SVD/QR with host-side tests, the CPU's
default; ``matmul``, products only, CUDA's default; the non-default one is marked ``@``).
The exp map also gets forward-and-backward rows at ||A||_2 ~ 1: torch's ``matrix_exp`` (what
an eager GPU run uses) against ``expm_fixed`` with its degree and squarings read on the host
(the CPU's; on a GPU one synchronisation, as torch's) and with its fixed 12 (compiled code's).

The third table (``--qr-sizes``, default the retraction table's C) times ``cholesky_qr``, shifted
CholeskyQR3 (qr's products-only Q factor), side by side with the unshifted CholeskyQR2 it
replaced (kept below as the baseline), alone and inside a qr@matmul retraction step, on
the same K matrices; the ratio is per round (median and quartiles over the rounds).

    python benchmarks/orthogonal_layer.py                  # C in 16, 64, 256, 512; 1000 steps
    python benchmarks/orthogonal_layer.py --quick          # a smoke run: about a minute on a 2-core CPU
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import torch
import torch.nn.functional as F
from _bench import (allow_recompiles, header, impl_rows, interleaved_times, make_optimizer, median, names,
                    parse_args, positive, resolve_device, table)
from torch import nn

from orthogonal_skip_connections.maths import orthogonal as orth
from orthogonal_skip_connections.skips import ORTH_METHODS, RETRACTED_METHODS, make_skip

try:
    import geotorch
except ImportError:  # optional: the bench extra
    geotorch = None

OURS = "osc steepest"  # this library's default method: the row the target is about
DEFAULTS = ("torch matrix_exp", "geotorch expm")  # torch's (for a square weight) and geotorch's default maps


class Task:
    """A layer, its optimiser and its fixed regression problem; ``weight()`` reads W."""

    def __init__(self, name: str, layer: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor):
        self.name, self.layer, self.opt, self.x, self.target = name, layer, opt, x, target

    def __call__(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        F.mse_loss(self.layer(self.x), self.target).backward()
        self.opt.step()

    @torch.no_grad()
    def weight(self) -> torch.Tensor:
        return self.layer.weight.detach()

    @torch.no_grad()
    def loss(self) -> float:
        return float(F.mse_loss(self.layer(self.x), self.target))


def build_tasks(C: int, batch: int, lr: float, device: torch.device, householder: bool = True,
                impls: tuple[str, ...] = ("factor", "matmul"), compiled: tuple[str, ...] = (),
                backend: str = "inductor") -> dict[str, Task]:
    g = torch.Generator().manual_seed(C)
    x = torch.randn(batch, C, generator=g).to(device)
    Q = orth.haar_orthogonal(C, generator=g).to(device)
    target = x @ Q.T
    tasks = {}
    for method, impl, suffix in impl_rows(ORTH_METHODS, list(impls), device):
        if method == "householder" and not householder:
            continue
        layer = make_skip("learnable_orth", C, method=method, init="identity").to(device)
        name = f"osc {method}{suffix}"
        tasks[name] = Task(name, layer, make_optimizer(layer, lr=lr, weight_decay=0.0, retraction_impl=impl), x,
                           target)
    for method in compiled:
        suffix = "" if orth.resolve_impl("auto", device) == "matmul" else "@matmul"
        layer = make_skip("learnable_orth", C, method=method, init="identity").to(device)
        name = f"osc {method}{suffix} compiled"
        opt = make_optimizer(layer, lr=lr, weight_decay=0.0, retraction_impl="matmul").compile_retraction(backend)
        tasks[name] = Task(name, layer, opt, x, target)
    for omap in ("matrix_exp", "cayley", "householder") if householder else ("matrix_exp", "cayley"):
        layer = nn.Linear(C, C, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.eye(C))
        nn.utils.parametrizations.orthogonal(layer, "weight", orthogonal_map=omap)
        layer.to(device)
        tasks[f"torch {omap}"] = Task(f"torch {omap}", layer, torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9),
                                      x, target)
    if geotorch is not None:
        for triv in ("expm", "cayley"):
            layer = nn.Linear(C, C, bias=False)
            geotorch.orthogonal(layer, "weight", triv=triv)
            layer.weight = torch.eye(C)  # geotorch starts at a random point; start at I like the others
            layer.to(device)
            tasks[f"geotorch {triv}"] = Task(f"geotorch {triv}", layer,
                                             torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9), x, target)
    return tasks


def layer_table(C: int, args, device: torch.device) -> tuple[str, list[str]]:
    tasks = build_tasks(C, args.batch, args.lr, device, householder=C <= args.householder_max, impls=args.impls,
                        compiled=args.compile_methods if args.compile else (), backend=args.compile)
    errors = {name: [] for name in tasks}

    def measure(name: str) -> None:  # runs before each timing: the error after the previous round
        errors[name].append(float(orth.orth_error(tasks[name].weight().double())))

    calls = args.steps // args.rounds
    times = interleaved_times(tasks, device, args.rounds, calls, warmup=args.warmup, between=measure)
    for name in tasks:
        measure(name)
    meds = {name: median(ts) for name, ts in times.items()}
    base = meds["torch matrix_exp"]
    geo = meds.get("geotorch expm")
    rows = []
    for name, task in tasks.items():
        rows.append([name, f"{1e6 * meds[name]:.0f}", f"{meds[name] / base:.2f}",
                     f"{meds[name] / geo:.2f}" if geo else "-", f"{max(errors[name][1:]):.1e}",
                     f"{errors[name][-1]:.1e}", f"{task.loss():.2e}"])
    text = (f"C = {C}: batch {args.batch}, SGD lr {args.lr} momentum 0.9, {calls * args.rounds} steps "
            f"({args.rounds} rounds x {calls}, after {args.warmup} warm-up)")
    if C > args.householder_max:
        text += f"; householder rows left out (C > --householder-max {args.householder_max})"
    text += "\n"
    text += table(["layer", "us/step", "/ torch exp", "/ geotorch", "max orth err", "last orth err", "final loss"],
                  rows, "<>>>>>>")
    # the target: this library's default layer no slower than torch's and geotorch's default
    # layers (matrix_exp, expm), and at least as orthogonal; the fastest of all is named too
    # (and, with --compile, the compiled steepest row checked the same way, reported apart)
    misses = []
    # this library's steepest row: the impl the device picks ("osc steepest"), else the first asked for
    # (--impls matmul on a CPU, factor on a GPU: a KeyError on "osc steepest" before)
    main = OURS if OURS in tasks else next(n for n in tasks if n.startswith(OURS) and not n.endswith(" compiled"))
    for ours in [main] + [n for n in tasks if n.startswith(OURS) and n.endswith(" compiled")]:
        for other in [n for n in DEFAULTS if n in tasks]:
            if meds[ours] > meds[other]:
                misses.append(f"C={C}: {ours} {1e6 * meds[ours]:.0f} us/step is slower than {other} "
                              f"({1e6 * meds[other]:.0f} us/step, {meds[ours] / meds[other]:.2f}x)")
            if max(errors[ours][1:]) > max(errors[other][1:]):
                misses.append(f"C={C}: {ours} max orth err {max(errors[ours][1:]):.1e} > {other}'s "
                              f"{max(errors[other][1:]):.1e}")
    fastest = min(tasks, key=lambda n: meds[n])
    text += f"\nfastest: {fastest} ({meds[fastest] / meds[main]:.2f}x {main}'s time)"
    return text, misses


def _retraction_calls(W: torch.Tensor, G: torch.Tensor, A: torch.Tensor, impls: list[str]) -> dict:
    """Each retraction (once per impl) and parametrized map on the K matrices: one call, and K calls."""
    K = len(W)
    fns = {}
    for method, impl, suffix in impl_rows(RETRACTED_METHODS, impls, W.device):
        fns[f"{method}{suffix} batched"] = lambda m=method, i=impl: orth.retract(m, W, G, 0.05, impl=i)
        fns[f"{method}{suffix} loop"] = lambda m=method, i=impl: [orth.retract(m, W[k], G[k], 0.05, impl=i)
                                                                  for k in range(K)]
    fns["cayley map batched"] = lambda: orth.cayley(A)
    fns["cayley map loop"] = lambda: [orth.cayley(A[i]) for i in range(K)]
    fns["exp map batched"] = lambda: orth.expm(A)
    fns["exp map loop"] = lambda: [orth.expm(A[i]) for i in range(K)]
    # the exp parametrization's W and its backward, at ||A||_2 ~ 1 (a few squarings): torch's
    # matrix_exp (eager GPUs: one host read), expm_fixed with its degree and squarings read on the
    # host (the CPU's; on a GPU one host read, as torch's) and with its fixed 12 (compiled code)
    A1 = orth.skew(torch.randn(W.shape, generator=torch.Generator().manual_seed(1)).to(W.device)) / W.shape[-1] ** 0.5
    maps = {"torch": orth.expm, "fixed read": lambda X: orth.expm_fixed(X, None, read=True),
            "fixed 12": orth.expm_fixed}
    for label, f in maps.items():
        fns[f"exp {label} fwd+bwd batched"] = lambda f=f: _forward_backward(f, A1)
        fns[f"exp {label} fwd+bwd loop"] = lambda f=f: [_forward_backward(f, A1[i]) for i in range(K)]
    return fns


def _forward_backward(f, A: torch.Tensor) -> torch.Tensor:
    """The gradient of sum(f(A)) with respect to A: a parametrized map's forward and backward."""
    X = A.detach().requires_grad_()
    return torch.autograd.grad(f(X).sum(), X)[0]


def retraction_table(Cs: list[int], args, device: torch.device) -> str:
    K = args.k
    rows = []
    for C in Cs:
        g = torch.Generator().manual_seed(C)
        # one draw at a time: a batched det of n >= 256 after torch.set_num_threads can make
        # MKL fail (DLASWP) and hang on the CPU (seen with torch 2.11 and 2.14)
        W = torch.stack([orth.haar_orthogonal(C, generator=g) for _ in range(K)]).to(device)
        G = (1e-2 * torch.randn(K, C, C, generator=g)).to(device)
        fns = _retraction_calls(W, G, orth.skew(G), args.impls)
        times = interleaved_times(fns, device, args.retract_rounds, args.retract_calls, warmup=2)
        for name in [n for n in fns if n.endswith("batched")]:
            base = name[: -len(" batched")]
            b, loop = median(times[name]), median(times[base + " loop"])
            rows.append([str(C), base, f"{1e6 * b:.0f}", f"{1e6 * loop:.0f}", f"{1e6 * b / K:.0f}",
                         f"{loop / b:.1f}"])
    text = (f"per-call cost of each retraction (step 0.05) and each parametrized map on K = {K} matrices: "
            f"one batched call vs {K} calls of one matrix\n")
    return text + table(["C", "retraction", "batched us", "loop us", "us/matrix batched", "loop / batched"], rows,
                        "><>>>>")


def cholesky_qr2(A: torch.Tensor) -> torch.Tensor:
    """``orth.cholesky_qr`` before shifted CholeskyQR3 (the baseline): CholeskyQR2, its body as it was
    (module names qualified)."""
    orth.check_square(A)
    Q, failed = A, None
    for _ in range(2):
        L, info = torch.linalg.cholesky_ex(orth._mm(Q.mT, Q))  # A^T A = L L^T, R = L^T
        Q = torch.linalg.solve_triangular(L, Q.mT, upper=False).mT  # Q R^{-1} = (L^{-1} Q^T)^T
        failed = info != 0 if failed is None else failed | (info != 0)
    return torch.where(failed[..., None, None], torch.full_like(Q, math.nan), Q)


def qr_cost_table(Cs: list[int], args, device: torch.device) -> str:
    """cholesky_qr (shifted CholeskyQR3) against cholesky_qr2 (before) on K matrices, alone and in the
    qr retraction's matmul step (W - eta W skew(W^T G), then the Q factor, as ``orth.retract`` does)."""
    K = args.k
    rows = []
    for C in Cs:
        g = torch.Generator().manual_seed(C)
        W = torch.stack([orth.haar_orthogonal(C, generator=g) for _ in range(K)]).to(device)
        G = (1e-2 * torch.randn(K, C, C, generator=g)).to(device)
        A = W - 0.05 * orth.tangent_gradient(W, G)
        fns = {"new": lambda: orth.cholesky_qr(A), "before": lambda: cholesky_qr2(A),
               "step new": lambda: orth.cholesky_qr(W - 0.05 * orth.tangent_gradient(W, G)),
               "step before": lambda: cholesky_qr2(W - 0.05 * orth.tangent_gradient(W, G))}
        times = interleaved_times(fns, device, args.retract_rounds, args.retract_calls, warmup=2)
        row = [str(C)]
        for new, before in (("new", "before"), ("step new", "step before")):
            ratios = [a / b for a, b in zip(times[new], times[before])]
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
            row += [f"{1e6 * median(times[new]):.0f}", f"{1e6 * median(times[before]):.0f}",
                    f"{median(ratios):.2f} ({q[0]:.2f}-{q[2]:.2f})"]
        rows.append(row)
    text = (f"per-call cost of cholesky_qr, shifted CholeskyQR3, against CholeskyQR2 (before) on K = {K} matrices, "
            f"alone and in a qr@matmul step (step 0.05); new / before per round, median (q1-q3) of "
            f"{args.retract_rounds}\n")
    return text + table(["C", "sCholQR3 us", "CholQR2 us", "new / before", "step new us", "step before us",
                         "new / before"], rows, ">>>>>>>")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="16,64,256,512", help="comma-separated C")
    p.add_argument("--batch", type=positive, default=256, help="rows of x")
    p.add_argument("--steps", type=positive, default=1000, help="timed SGD steps per variant")
    p.add_argument("--rounds", type=positive, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--k", type=positive, default=8, help="matrices per batched retraction call")
    p.add_argument("--retract-calls", type=positive, default=5, help="calls per timing in the retraction table")
    p.add_argument("--retract-sizes", default=None, help="C of the retraction table (default: --sizes; '' for none)")
    p.add_argument("--retract-rounds", type=positive, default=5, help="rounds in the retraction table")
    p.add_argument("--qr-sizes", default=None,
                   help="C of the cholesky_qr cost table (default: the retraction table's; '' for none)")
    p.add_argument("--householder-max", type=int, default=64,
                   help="largest C with householder rows (C Householder reflections per forward: slow)")
    p.add_argument("--device", default="auto", help="auto (cuda if any, else cpu) | cpu | cuda | cuda:N")
    p.add_argument("--impls", type=names(("factor", "matmul"), "impl"), default="factor,matmul",
                   help="retraction impls of the retracted methods (a row each; the one auto picks on this "
                        "device is unmarked, the other marked @factor / @matmul)")
    p.add_argument("--threads", type=positive, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="also a row per method of --compile-methods whose products-only retraction runs through "
                        "torch.compile (default backend inductor), as compile=true runs it")
    p.add_argument("--compile-methods", type=names(RETRACTED_METHODS, "retracted method"), default="steepest",
                   help="retracted methods given a compiled row with --compile (comma-separated)")
    p.add_argument("--quick", action="store_true", help="smoke run: C in 16, 64; 40 steps in 4 rounds")
    args = parse_args(p, argv, quick=dict(sizes="16,64", steps=40, rounds=4, warmup=1, retract_calls=2,
                                          retract_rounds=2))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < args.rounds or args.rounds < 2:
        raise SystemExit("need --rounds >= 2 and --steps >= --rounds")
    device = resolve_device(args.device)
    Cs = [int(c) for c in args.sizes.split(",") if c]
    if any(c < 1 for c in Cs):
        raise SystemExit(f"--sizes must be positive integers; got {args.sizes}")
    if args.compile:  # one graph per size and method of the one retraction: past dynamo's limit, eager
        allow_recompiles(2 * len(Cs) * max(1, len(args.compile_methods)) + 8)
    print(header("a C x C orthogonal layer: this library vs torch.nn.utils.parametrizations.orthogonal vs "
                 "geotorch.orthogonal", device), flush=True)
    if geotorch is None:
        print("geotorch: not installed, its rows are left out (pip install geotorch, or the bench extra)")
    else:
        print(f"geotorch {geotorch.__version__}")
    misses = []
    for C in Cs:
        text, miss = layer_table(C, args, device)
        misses += miss
        print("\n" + text, flush=True)
    retract_sizes = Cs if args.retract_sizes is None else [int(c) for c in args.retract_sizes.split(",") if c]
    if retract_sizes:
        print("\n" + retraction_table(retract_sizes, args, device), flush=True)
    qr_sizes = retract_sizes if args.qr_sizes is None else [int(c) for c in args.qr_sizes.split(",") if c]
    if qr_sizes:
        print("\n" + qr_cost_table(qr_sizes, args, device), flush=True)
    if not Cs:
        return
    print(f"\ntarget ({OURS} no slower than {' and '.join(DEFAULTS)} at every C, and at least as orthogonal): "
          f"{'met' if not misses else f'{len(misses)} missed'}")
    for m in misses:
        print("  " + m)


if __name__ == "__main__":
    main(sys.argv[1:])
