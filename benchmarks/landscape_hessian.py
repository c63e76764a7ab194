"""Time of a Hessian-vector product and of a whole ``landscape.sharpness()`` call, before
and after, in one run.

Variants, interleaved round-robin (``_bench.interleaved_times``), on the same model, images
and vectors (BatchNorm in eval mode, the loss of :func:`landscape.sharpness`):

- ``old``: :func:`landscape.make_hvp` with ``reuse_graph=False``, the product as it was
  computed before: per product a forward, a backward building g's graph, and a backward of
  g . v; channels_last, as :func:`landscape.landscape_of` runs it;
- ``new``: ``make_hvp`` as ``sharpness()`` now calls it with one part: g and its graph
  built once (outside the timing: that is what a reused graph saves), then one backward of
  g . v per product; channels_last; ``new NCHW``: the same in NCHW; ``new, BN affine``: the
  same with BatchNorm written as its affine map (:func:`landscape.batchnorm_as_affine`), as
  ``sharpness()`` runs it;
- candidates not used by the library: ``old, 4 parts`` (the images split in 4 loss parts,
  as ``batch_size`` < ``n_eval`` splits them); ``forward-over-reverse`` (torch.func.jvp of
  torch.func.grad over functional_call); ``K probes batched`` (K products in one backward,
  ``autograd.grad(..., is_grads_batched=True)`` over the reused graph, per product).

Then whole ``sharpness()`` calls, old (``make_hvp`` forced to ``reuse_graph=False``, BatchNorm's
own double backward) against new (the reused graph, ``new, native BN`` without the affine map), with a fixed number of Lanczos steps (``tol=0``) and probes; every H v of the old and
the new call is compared.

    python benchmarks/landscape_hessian.py [--model resnet56] [--kind learnable_orth/steepest]
        [--n-eval 512] [--rounds 3] [--probes 4] [--iters 4] [--samples 2] [--device auto] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp

from _bench import add_classifier_args, digits_classifier, header, interleaved_times, median, positive, table
from orthogonal_skip_connections import landscape as L


def rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """max |a - b| / max |b| over every tensor of the product."""
    a, b = [t.detach() for t in a], [t.detach() for t in b]
    return max(float((x - y).abs().max()) for x, y in zip(a, b)) / max(float(y.abs().max()) for y in b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_classifier_args(ap)
    ap.add_argument("--rounds", type=positive, default=3)
    ap.add_argument("--probes", type=int, default=4, help="K of the batched-probes candidate (0 to skip)")
    ap.add_argument("--iters", type=positive, default=4, help="Lanczos steps per sharpness() call")
    ap.add_argument("--samples", type=positive, default=2, help="Hutchinson probes per sharpness() call")
    args = ap.parse_args()
    model, data, device = digits_classifier(args)
    x, y = L.eval_subset(data, args.n_eval, device=device)
    n = len(y)
    nchw = copy.deepcopy(model)
    model, x_cl = L.channels_last(model, x)

    def loss_parts(m, images, k=1):  # what sharpness() builds, k parts
        return [lambda xb=xb, yb=yb: F.cross_entropy(m(xb).float(), yb, reduction="sum") / n
                for xb, yb in zip(images.split(-(-n // k)), y.split(-(-n // k)))]

    params, params_nchw = L.hessian_parameters(model), L.hessian_parameters(nchw)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g).to(device) for p in params]
    old = L.make_hvp(loss_parts(model, x_cl), params, reuse_graph=False)
    new = L.make_hvp(loss_parts(model, x_cl), params)
    new_nchw = L.make_hvp(loss_parts(nchw, x), params_nchw)
    new_affine = L.make_hvp(loss_parts(model, x_cl), params)

    def with_affine_bn(v):
        with L.batchnorm_as_affine(model):
            return new_affine(v)

    old_4 = L.make_hvp(loss_parts(model, x_cl, 4), params, reuse_graph=False)
    names = {id(p): name for name, p in model.named_parameters()}

    def loss_of(values):
        out = functional_call(model, {names[id(p)]: t for p, t in zip(params, values)}, (x_cl,))
        return F.cross_entropy(out.float(), y, reduction="sum") / n

    theta = tuple(p.detach() for p in params)
    fns = {"old": lambda: old(v), "new": lambda: new(v), "new, BN affine": lambda: with_affine_bn(v),
           "new NCHW": lambda: new_nchw(v),
           "old, 4 parts": lambda: old_4(v),
           "forward-over-reverse": lambda: list(jvp(grad(loss_of), (theta,), (tuple(v),))[1])}
    per_call = {name: 1 for name in fns}
    if args.probes:
        grads = torch.autograd.grad(loss_parts(model, x_cl)[0](), params, create_graph=True)
        stacked = [torch.stack([t] * args.probes) for t in v]  # K copies of v: each row must give H v
        fns[f"{args.probes} probes batched"] = lambda: [h[0] for h in torch.autograd.grad(
            grads, params, grad_outputs=stacked, retain_graph=True, is_grads_batched=True)]
        per_call[f"{args.probes} probes batched"] = args.probes
    ref = old(v)
    new(v), with_affine_bn(v)  # build the reused graphs before the timing
    diffs = {name: rel_diff(fn(), ref) for name, fn in fns.items()}
    print(header(f"Hessian-vector products for sharpness(), {args.model} {args.kind} on {n} digits images "
                 f"({sum(p.numel() for p in params)} Hessian parameters), {args.rounds} rounds", device))
    times = interleaved_times(fns, device, args.rounds, 1, warmup=1)
    rows = []
    for name in fns:
        k = per_call[name]
        ratios = sorted(t / k / o for t, o in zip(times[name], times["old"]))  # per round: same noise for both
        spread = f"{median(ratios):.2f} [{ratios[0]:.2f}, {ratios[-1]:.2f}]"
        rows.append([name, f"{median(times[name]) / k * 1e3:.0f}", spread, f"{diffs[name]:.1e}"])
    print(table(["variant", "ms / product", "time / old: median [min, max] over rounds",
                 "max rel. diff of H v vs old"], rows))

    # whole sharpness() calls: the old one with make_hvp forced to rebuild the graph per product
    results = {}
    library_make_hvp = L.make_hvp

    library_affine = L.batchnorm_as_affine

    def run(name: str) -> None:
        L.make_hvp = functools.partial(library_make_hvp, reuse_graph=False) if name == "old" else library_make_hvp
        if name != "new":  # BatchNorm's own double backward, as before batchnorm_as_affine
            L.batchnorm_as_affine = lambda model: contextlib.nullcontext()
        try:
            results[name] = L.sharpness(model, x_cl, y, n, args.iters, 0.0, args.samples, seed=0)
        finally:
            L.make_hvp, L.batchnorm_as_affine = library_make_hvp, library_affine

    calls = {name: functools.partial(run, name) for name in ("old", "new, native BN", "new")}
    times = interleaved_times(calls, device, args.rounds, 1, warmup=1)
    old_s, new_s = results["old"], results["new"]
    history = np.abs(np.subtract(new_s["lanczos_history"], old_s["lanczos_history"])) / np.abs(old_s["lanczos_history"])
    products = args.iters + args.samples
    print(f"\nwhole sharpness() calls: {args.iters} Lanczos steps (tol 0) + {args.samples} Hutchinson probes = "
          f"{products} products; top eigenvalue {new_s['top_eigenvalue']:.6g} (old {old_s['top_eigenvalue']:.6g}), "
          f"max rel. diff over the Lanczos history {history.max():.1e}, trace {new_s['trace']:.6g} "
          f"(old {old_s['trace']:.6g})")
    rows = []
    for name in calls:
        ratios = sorted(t / o for t, o in zip(times[name], times["old"]))
        rows.append([name, f"{median(times[name]):.2f}", f"{median(times[name]) / products * 1e3:.0f}",
                     f"{median(ratios):.2f} [{ratios[0]:.2f}, {ratios[-1]:.2f}]"])
    print(table(["sharpness()", "s / call", "ms / product (graph build included)",
                 "time / old: median [min, max] over rounds"], rows))


if __name__ == "__main__":
    main()
