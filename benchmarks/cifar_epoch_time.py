"""Epoch time of ``run_experiments`` on CIFAR-shaped data, per skip variant: the
``scale=full`` setting of ``osc study`` (batch 512, lr 0.2) at a few epochs, end to end
through the app (on-device loader, training loop with its per-step bookkeeping, bf16
autocast on CUDA, channels_last), without a download.

Random CIFAR-10 "python version" files (N training images, 10,000 test images by
default) are written under ``--root`` (a temporary folder by default); each variant is one
run of ``python -m orthogonal_skip_connections.experiments.run_experiments`` with
``data.root=<root> data.download=false``. Every variant trains ``--epochs`` epochs; the
first epoch (cuDNN autotuning, allocator warm-up) is left out and the table gives the
median of the others as seconds and training images/s, and its ratio to identity's.

    python benchmarks/cifar_epoch_time.py                                  # resnet18, 3 epochs
    python benchmarks/cifar_epoch_time.py --model resnet56 --variants identity,learnable_orth/steepest
    python benchmarks/cifar_epoch_time.py --quick                          # seconds on a CPU
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _bench import table

# the classification variants of `osc study scale=full`
FULL_VARIANTS = ("identity,zero,fixed_orth,learnable_orth/steepest,learnable_orth/cayley,linear,scalar,idempotent")
APP = "orthogonal_skip_connections.experiments.run_experiments"


def write_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n):
        return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(n_train // 5), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f)


def overrides(variant: str) -> list[str]:
    kind, _, rest = variant.partition("/")
    out = [f"model.skip_kind={kind}"]
    if rest:
        method, _, init = rest.partition("/")
        out.append(f"model.method={method}")
        if init:
            out.append(f"model.init={init}")
    return out


def run_variant(variant: str, args, root: Path, out: Path) -> dict:
    run_dir = out / variant.replace("/", "-")
    cmd = [sys.executable, "-m", APP, "dataset=cifar10", f"model.model_type={args.model}", f"batch_size={args.batch}",
           "optimizer.lr=0.2", f"scheduler.epochs={args.epochs}", "scheduler.warmup_epochs=1", f"data.root={root}",
           "data.download=false", "progress=false", f"device={args.device}", f"hydra.run.dir={run_dir}",
           *overrides(variant), *args.extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"variant": variant, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    records = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s]
    epoch_times = [r["epoch_time_s"] for r in records if r["type"] == "train"]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"variant": variant, "epoch_times": epoch_times, "wall": wall, "device": summary.get("device"),
            "steps": summary["steps"], "orth": summary.get("skip_orth_error_max"),
            "test_acc": summary.get("test_acc")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--variants", default=FULL_VARIANTS, help="comma-separated kind[/method[/init]]")
    p.add_argument("--n", type=int, default=50_000, help="training images")
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is left out; >= 2)")
    p.add_argument("--device", default="auto")
    p.add_argument("--root", default=None, help="folder for the random CIFAR files (default: a temporary one)")
    p.add_argument("--out", default=None, help="folder for the run dirs (default: a temporary one)")
    p.add_argument("--quick", action="store_true", help="smoke run: resnet20, 1,024 images, 2 epochs, 2 variants")
    p.add_argument("extra", nargs="*", help="more run_experiments overrides")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.n, args.n_test, args.batch, args.epochs = "resnet20", 1024, 256, 128, 2
        args.variants = "identity,learnable_orth/steepest"
    if args.epochs < 2:
        raise SystemExit("--epochs must be >= 2 (the first is left out)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp) / "data"
        out = Path(args.out) if args.out else Path(tmp) / "runs"
        if not (root / "cifar-10-batches-py" / "test_batch").exists():
            write_cifar10(root, args.n, args.n_test)
        results = []
        for variant in args.variants.split(","):
            r = run_variant(variant.strip(), args, root, out)
            results.append(r)
            print(f"  {variant}: " + (f"epochs {', '.join(f'{t:.2f}' for t in r['epoch_times'])} s, "
                                       f"run {r['wall']:.0f} s" if "error" not in r else f"FAILED: {r['error']}"),
                  flush=True)
    import torch

    device = next((r["device"] for r in results if "device" in r), args.device)
    name = torch.cuda.get_device_name() if str(device).startswith("cuda") else "CPU"
    n = args.n // args.batch * args.batch
    base = next((statistics.median(r["epoch_times"][1:]) for r in results
                 if r["variant"] == "identity" and "error" not in r), None)
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["variant"], "failed", "", "", "", "", ""])
            continue
        t = statistics.median(r["epoch_times"][1:])
        rows.append([r["variant"], f"{r['epoch_times'][0]:.2f}", f"{t:.2f}", f"{n / t:,.0f}",
                     f"{t / base:.3f}" if base else "-", "-" if r["orth"] is None else f"{r['orth']:.1e}",
                     f"{r['wall']:.0f}"])
    print(f"\nrun_experiments dataset=cifar10 (random CIFAR-shaped files, {args.n:,} train images) "
          f"model.model_type={args.model} batch_size={args.batch}, {args.epochs} epochs\n"
          f"device: {name} ({device}); torch {torch.__version__}")
    print(table(["variant", "epoch 1 s", "epoch s (later, median)", "train img/s", "ratio", "max orth err",
                 "run wall s"], rows, "<>>>>>>"))


if __name__ == "__main__":
    main(sys.argv[1:])
