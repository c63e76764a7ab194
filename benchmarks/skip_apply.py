"""What applying a C x C skip matrix costs over an identity skip, by implementation, per
feature-map shape of resnet20 and resnet18 (CIFAR stem), forward + backward.

The question (notes/gpu_findings.md): on an H100 a ``linear`` skip (a plain trainable
matrix, no upkeep) made a bf16 step of resnet20 1.39-1.52x identity's, while the matrix's
FLOPs are a few percent of a block's. Which part is the floor, and which implementation
of ``out + x W^T`` is cheapest on this device? Each variant computes the residual sum of
one block, ``y = out + skip(x)``, from channels_last maps x and out that require grad (as
in a network), and back-propagates a fixed gradient to x, out and W:

- ``identity``: y = out + x (the floor: one elementwise pass, a free backward);
- ``addmm`` (the library's ``apply_matrix_add``): one GEMM over the (N H W, C) rows with
  the sum as its bias; backward g W and g^T x (a reduction over N H W rows);
- ``linear+add``: the product, then the sum (two passes);
- ``conv1x1+add``: ``F.conv2d`` with a 1x1 kernel (cuDNN / oneDNN), then the sum;
- ``addmm splitK``: ``addmm`` forward, and the weight gradient g^T x as a sum over
  ``--chunks`` row blocks (one batched GEMM and a sum): the reduction over N H W rows spread
  over many blocks, in case the GEMM library runs a 16 x 16 result with k = 500k on a
  single block.

Times are medians of rounds interleaved round-robin (``_bench.interleaved_times``), with
the device synchronised around each; ``/ identity`` is the ratio to identity's median in
the same run. The last table weights each shape by the number of blocks that have it in
the network: the skip's share of a step, up to what it does to the layers around it.

    python benchmarks/skip_apply.py                    # CUDA if present, bf16, batch 512
    python benchmarks/skip_apply.py --device cpu --batch 128 --threads 1
    python benchmarks/skip_apply.py --quick            # a smoke run, any machine
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from _bench import header, interleaved_times, median, names, parse_args, positive, resolve_device, table

from orthogonal_skip_connections.skips import apply_matrix_add

# (channels, map side, blocks with this shape) of the CIFAR-stem networks
SHAPES = {
    "resnet20": [(16, 32, 3), (32, 16, 3), (64, 8, 3)],
    "resnet18": [(64, 32, 2), (128, 16, 2), (256, 8, 2), (512, 4, 2)],
}


class SplitKAddmm(torch.autograd.Function):
    """out + x W^T on rows (M, C), whose weight gradient g^T x is summed over ``chunks``
    blocks of rows: (chunks, C, M/chunks) @ (chunks, M/chunks, C), then a sum."""

    @staticmethod
    def forward(ctx, out, x, W, chunks):
        ctx.save_for_backward(x, W)
        ctx.chunks = chunks
        return torch.addmm(out, x, W.mT)

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved_tensors
        k = ctx.chunks
        m, c = x.shape
        dx = g @ W.to(g.dtype)
        gW = torch.bmm(g.view(k, m // k, -1).mT, x.view(k, m // k, c)).sum(0, dtype=torch.float32)
        return g, dx, gW.to(W.dtype), None


def rows(t):
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(n * h * w, c)


def variants(chunks: int) -> dict:
    def splitk(x, W, out):
        n, c, h, w = x.shape
        if (n * h * w) % chunks:
            return apply_matrix_add(x, W, out)
        y = SplitKAddmm.apply(rows(out), rows(x), W.to(x.dtype), chunks)
        return y.view(n, h, w, c).permute(0, 3, 1, 2)

    return {
        "identity": lambda x, W, out: out + x,
        "addmm": apply_matrix_add,
        "linear+add": lambda x, W, out: F.linear(x.permute(0, 2, 3, 1), W).permute(0, 3, 1, 2) + out,
        "conv1x1+add": lambda x, W, out: F.conv2d(x, W[:, :, None, None]) + out,
        "addmm splitK": splitk,
    }


def shape_times(C: int, side: int, args, device, dtype) -> dict[str, float]:
    g = torch.Generator().manual_seed(C)
    make = lambda: torch.randn(args.batch, C, side, side, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    x, out, grad = (make().contiguous(memory_format=torch.channels_last) for _ in range(3))
    x.requires_grad_(), out.requires_grad_()
    W = torch.nn.Parameter(torch.eye(C, device=device) + 0.01 * torch.randn(C, C, generator=g).to(device))
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == torch.bfloat16 else nullcontext()

    def step(fn, backward: bool):
        def run():
            with amp:
                y = fn(x, W, out)
            if backward:
                x.grad = out.grad = W.grad = None
                y.backward(grad)
        return run

    fns = variants(args.chunks)
    steps = {name: step(fn, True) for name, fn in fns.items()}
    steps.update({f"{name} fwd": step(fn, False) for name, fn in fns.items()})
    times = interleaved_times(steps, device, args.rounds, args.calls, warmup=args.warmup)
    # every matrix variant computes addmm's y and gradients (checked, not timed)
    def result(fn):
        with amp:
            y = fn(x, W, out)
        x.grad = out.grad = W.grad = None
        y.backward(grad)
        return y.detach().float(), x.grad.float(), W.grad.float()

    ref = result(fns["addmm"])
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-4
    for name in [n for n in fns if n not in ("identity", "addmm")]:
        for a, b, what in zip(result(fns[name]), ref, ("y", "dx", "dW")):
            err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
            if err > tol:
                raise SystemExit(f"{name} C={C}: {what} differs from addmm's by {err:.1e} (relative)")
    return {name: median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=names(SHAPES, "model"), default="resnet20,resnet18")
    p.add_argument("--batch", type=positive, default=None, help="default 512 on CUDA, 128 on the CPU")
    p.add_argument("--rounds", type=positive, default=5)
    p.add_argument("--calls", type=positive, default=20, help="calls per timing")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--chunks", type=positive, default=64, help="row blocks of the split-K weight gradient")
    p.add_argument("--device", default="auto")
    p.add_argument("--fp32", action="store_true", help="float32 (default: bf16 autocast on CUDA, fp32 on the CPU)")
    p.add_argument("--threads", type=positive, default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: resnet20, batch 8, 2 rounds x 2 calls")
    args = parse_args(p, argv, quick=dict(models="resnet20", batch=8, rounds=2, calls=2, warmup=1))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.batch = args.batch or (512 if device.type == "cuda" else 128)
    dtype = torch.bfloat16 if device.type == "cuda" and not args.fp32 else torch.float32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False  # the library's setting
    print(header(f"residual sum with a C x C skip matrix vs identity, batch {args.batch}, {dtype}, "
                 f"channels_last, forward + backward (fwd: forward alone)", device), flush=True)
    kinds = list(variants(args.chunks))
    for model in args.models:
        totals = dict.fromkeys(kinds, 0.0)
        rows_ = []
        for C, side, blocks in SHAPES[model]:
            t = shape_times(C, side, args, device, dtype)
            base = t["identity"]
            for name in kinds:
                totals[name] += blocks * t[name]
                rows_.append([f"{C} x {side}x{side}", name, f"{1e6 * t[name]:.0f}", f"{t[name] / base:.2f}",
                              f"{1e6 * t[name + ' fwd']:.0f}", f"{t[name + ' fwd'] / t['identity fwd']:.2f}"])
        print(f"\n{model}: one block's residual sum, by shape (C x map)")
        print(table(["shape", "variant", "fwd+bwd us", "/ identity", "fwd us", "fwd / identity"], rows_, "<<>>>>"))
        base = totals["identity"]
        print(f"{model}: all blocks' residual sums (blocks per shape: "
              f"{', '.join(str(b) for *_, b in SHAPES[model])})")
        print(table(["variant", "fwd+bwd us", "/ identity", "over identity us"],
                    [[n, f"{1e6 * totals[n]:.0f}", f"{totals[n] / base:.2f}", f"{1e6 * (totals[n] - base):.0f}"]
                     for n in kinds], "<>>>"), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
