"""Time per point of the loss-landscape grid and 1-D path, before and after, in one run.

Variants, interleaved round-robin (``_bench.interleaved_times``), each evaluating the same
points of the same model on the same images (BatchNorm in eval mode):

- ``old``: the loop as it was before the grid was sped up: per point, the coordinates
  listed again, every tensor rewritten, one float64 SVD per retracted skip, NCHW layout;
- ``new NCHW``: :func:`landscape.landscape_2d` / :func:`landscape.interpolation_1d` (the
  coordinates once, only moving ones rewritten, polar factors batched per size), NCHW;
- ``new``: the same in channels_last, as :func:`landscape.landscape_of` runs them;
- ``weights only``: setting the weights of each grid point, nothing evaluated (old
  ``set_point`` against what ``landscape_2d`` now does per point).

Then the forward alone: one model in channels_last against K copies stacked along a
leading axis and run by ``torch.func.vmap`` (:class:`models.stack.SeedStack`), per point,
the candidate for evaluating K grid points at once (not used by the library: it was
slower on CPU; see notes/landscape_two_stage_findings.md).

    python benchmarks/landscape_grid.py [--model resnet56] [--kind learnable_orth/steepest]
        [--n-eval 512] [--steps 3] [--rounds 3] [--stack 2,4] [--device auto] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from _bench import add_classifier_args, digits_classifier, header, interleaved_times, median, positive, table
from orthogonal_skip_connections import landscape as L
from orthogonal_skip_connections.maths import orthogonal as orth
from orthogonal_skip_connections.models.stack import SeedStack


@torch.no_grad()
def old_set_point(model, base, directions, coeffs):
    """set_point before the change (the baseline), kept verbatim."""
    moved = any(c != 0 for c in coeffs)
    for c in L.coordinates(model):
        value = base[c.name]
        if c.role != "buffer" and moved:
            value = value + sum(float(a) * d[c.name] for a, d in zip(coeffs, directions))
            if c.role == "retracted":
                value = orth.polar(value.double()).to(c.tensor.dtype)
        c.tensor.copy_(value)


@torch.no_grad()
def old_set_interpolation(model, start, end, t):
    """set_interpolation before the change (the baseline), kept verbatim."""
    for c in L.coordinates(model):
        if t == 0 or t == 1:
            value = start[c.name] if t == 0 else end[c.name]
        elif c.name.endswith("running_var"):
            value = start[c.name].clamp_min(1e-30) ** (1 - t) * end[c.name].clamp_min(1e-30) ** t
        else:
            value = (1 - t) * start[c.name] + t * end[c.name]
            if c.role == "retracted":
                value = orth.polar(value.double()).to(c.tensor.dtype)
        c.tensor.copy_(value)


def old_grid(model, x, y, directions, axis, batch_size):
    base = L.snapshot(model)
    out = np.zeros((len(axis), len(axis)))
    for i, a in enumerate(axis):
        for j, b in enumerate(axis):
            old_set_point(model, base, directions, [a, b])
            out[i, j] = L.evaluate_loss(model, x, y, batch_size)[0]
    old_set_point(model, base, [], [])
    return out


def old_path(model, init_state, x, y, ts, batch_size):
    trained = L.snapshot(model)
    out = np.array([(old_set_interpolation(model, init_state, trained, float(t)),
                     L.evaluate_loss(model, x, y, batch_size)[0])[1] for t in ts])
    old_set_point(model, trained, [], [])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_classifier_args(ap)
    ap.add_argument("--steps", type=positive, default=3, help="grid points per axis (odd); the 1-D path gets steps^2")
    ap.add_argument("--rounds", type=positive, default=3)
    ap.add_argument("--stack", default="2,4", help="K of the vmapped forward ('' to skip)")
    args = ap.parse_args()
    model, data, device = digits_classifier(args)
    init = digits_classifier(args, seed=1)[0]  # the 1-D path's start
    x, y = L.eval_subset(data, args.n_eval, device=device)
    directions = [L.random_direction(model, 0, k) for k in (0, 1)]
    axis = L.grid_axis(args.steps, 1.0)
    ts = np.linspace(-0.25, 1.25, args.steps ** 2)
    init_state = L.snapshot(init)
    cl_model, cl_x = L.channels_last(copy.deepcopy(model), x)
    bs = args.n_eval
    points = args.steps ** 2

    grids, paths = {}, {}
    grid_fns = {
        "old": lambda: grids.__setitem__("old", old_grid(model, x, y, directions, axis, bs)),
        "new NCHW": lambda: grids.__setitem__("new NCHW", L.landscape_2d(model, x, y, directions, axis, axis, bs)[0]),
        "new": lambda: grids.__setitem__("new", L.landscape_2d(cl_model, cl_x, y, directions, axis, axis, bs)[0]),
    }
    path_fns = {
        "old": lambda: paths.__setitem__("old", old_path(model, init_state, x, y, ts, bs)),
        "new NCHW": lambda: paths.__setitem__("new NCHW", L.interpolation_1d(model, init_state, x, y, ts, bs)[0]),
        "new": lambda: paths.__setitem__("new", L.interpolation_1d(cl_model, init_state, cl_x, y, ts, bs)[0]),
    }
    print(header(f"loss-landscape grid and 1-D path, {args.model} {args.kind} on {args.n_eval} digits images "
                 f"(one batch), {points} points per call, {args.rounds} rounds", device))
    base = L.snapshot(model)
    moving = L._moving(L.coordinates(model), directions)
    coeffs = [[a, b] for a in axis for b in axis]
    set_fns = {
        "old": lambda: [old_set_point(model, base, directions, c) for c in coeffs],
        "new": lambda: [L._move(moving, base, directions, c) for c in coeffs],  # what landscape_2d does per point
    }
    rows = []
    for what, fns, results in (("2-D grid", grid_fns, grids), ("1-D path", path_fns, paths),
                               ("weights only", set_fns, None)):
        times = interleaved_times(fns, device, args.rounds, 1, warmup=1)
        for name in fns:
            ratios = sorted(t / o for t, o in zip(times[name], times["old"]))  # per round: same noise for both
            diff = "" if results is None else \
                f"{np.max(np.abs(results[name] - results['old']) / np.abs(results['old'])):.1e}"
            rows.append([what, name, f"{median(times[name]) / points * 1e3:.1f}",
                         f"{median(ratios):.2f} [{ratios[0]:.2f}, {ratios[-1]:.2f}]", diff])
    L.restore(model, base)
    print(table(["", "variant", "ms / point", "time / old: median [min, max] over rounds",
                 "max rel. loss diff vs old"], rows))

    stack = [int(k) for k in args.stack.split(",") if k]
    if stack:
        stacks = {k: SeedStack([copy.deepcopy(model) for _ in range(k)], list(range(k))).eval() for k in stack}
        fwd = {"one model, channels_last": (lambda: cl_model(cl_x), 1)}
        fwd.update({f"vmap over {k} stacked copies": ((lambda s=s: s(x)), k) for k, s in stacks.items()})
        with torch.no_grad():
            ref = cl_model(cl_x)
            err = {n: 0.0 if k == 1 else float(((f()[0] - ref).abs().max() / ref.abs().max())) for n, (f, k) in
                   fwd.items()}
            times = interleaved_times({n: f for n, (f, _) in fwd.items()}, device, args.rounds, 1, warmup=1)
        one = times["one model, channels_last"]
        print(f"\nforward only, per point ({args.n_eval} images)")
        rows = []
        for n, (_, k) in fwd.items():
            ratios = sorted(t / k / o for t, o in zip(times[n], one))
            rows.append([n, f"{median(times[n]) / k * 1e3:.1f}", f"{median(ratios):.2f} [{ratios[0]:.2f}, "
                         f"{ratios[-1]:.2f}]", f"{err[n]:.1e}"])
        print(table(["variant", "ms / point", "time / one model: median [min, max]", "max rel. logit diff"], rows))

if __name__ == "__main__":
    main()
