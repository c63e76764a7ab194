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

``--baseline-src`` runs every variant also with another checkout's ``src/`` (before /
after a change to the loop), interleaved with this one's over ``--rounds`` rounds, and
adds the ratio this / baseline of each variant. ``--dataset digits`` uses the bundled
digits (1,437 images of 8x8) instead of CIFAR-shaped files.

    python benchmarks/cifar_epoch_time.py                                  # resnet18, 3 epochs
    python benchmarks/cifar_epoch_time.py --model resnet56 --variants identity,learnable_orth/steepest
    python benchmarks/cifar_epoch_time.py --quick                          # smoke run: ~1 min per variant on a CPU
    python benchmarks/cifar_epoch_time.py --dataset digits --model resnet20 --batch 128 --epochs 4 \
        --rounds 3 --variants identity,learnable_orth/cayley --baseline-src ../old-checkout/src
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _bench import parse_args, positive, table

SRC = Path(__file__).resolve().parents[1] / "src"  # this checkout's library

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


def run_variant(variant: str, args, root: Path, out: Path, src: Path = SRC, tag: str = "") -> dict:
    """One run of the app with the library in ``src``; its epoch times and summary."""
    run_dir = out / (variant.replace("/", "-") + tag)
    data = ([f"data.root={root}", "data.download=false"] if args.dataset == "cifar10" else [])
    cmd = [sys.executable, "-m", APP, f"dataset={args.dataset}", f"model.model_type={args.model}",
           f"batch_size={args.batch}", f"optimizer.lr={args.lr}", f"scheduler.epochs={args.epochs}",
           "scheduler.warmup_epochs=1", *data, "progress=false", f"device={args.device}",
           f"hydra.run.dir={run_dir}", *overrides(variant), *args.extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"variant": variant, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    records = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s]
    epoch_times = [r["epoch_time_s"] for r in records if r["type"] == "train"]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"variant": variant, "epoch_times": epoch_times, "wall": wall, "device": summary.get("device"),
            "steps": summary["steps"], "orth": summary.get("skip_orth_error_max"),
            "test_acc": summary.get("test_acc"), "train_loss": summary.get("train_loss")}


def merge(runs: list[dict]) -> dict:
    """The rounds of one variant as one result: epoch 1 of each run left out, later epochs pooled."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    return {**runs[0], "first": [r["epoch_times"][0] for r in runs],
            "later": [t for r in runs for t in r["epoch_times"][1:]], "wall": statistics.median(r["wall"] for r in runs)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--dataset", choices=["cifar10", "digits"], default="cifar10",
                   help="cifar10: random CIFAR-shaped files; digits: the bundled 1,437 8x8 images")
    p.add_argument("--variants", default=FULL_VARIANTS, help="comma-separated kind[/method[/init]]")
    p.add_argument("--n", type=positive, default=50_000, help="training images (cifar10)")
    p.add_argument("--n-test", type=positive, default=10_000)
    p.add_argument("--batch", type=positive, default=512)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--epochs", type=positive, default=3, help="epochs per run (the first is left out; >= 2)")
    p.add_argument("--rounds", type=positive, default=1, help="runs per variant (and version), interleaved")
    p.add_argument("--baseline-src", default=None, help="another checkout's src/ to time side by side")
    p.add_argument("--device", default="auto")
    p.add_argument("--root", default=None, help="folder for the random CIFAR files (default: a temporary one)")
    p.add_argument("--out", default=None, help="folder for the run dirs (default: a temporary one)")
    p.add_argument("--quick", action="store_true", help="smoke run: resnet20, 1,024 images, 2 epochs, 2 variants")
    p.add_argument("extra", nargs="*", help="more run_experiments overrides")
    args = parse_args(p, argv, quick=dict(model="resnet20", n=1024, n_test=256, batch=128, epochs=2,
                                          variants="identity,learnable_orth/steepest"))
    if args.epochs < 2:
        raise SystemExit("--epochs must be >= 2 (the first is left out)")
    versions = {"": SRC} | ({"baseline": Path(args.baseline_src).resolve()} if args.baseline_src else {})
    variants = [v.strip() for v in args.variants.split(",")]
    runs: dict[tuple[str, str], list[dict]] = {(v, k): [] for v in variants for k in versions}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp) / "data"
        out = Path(args.out) if args.out else Path(tmp) / "runs"
        if args.dataset == "cifar10" and not (root / "cifar-10-batches-py" / "test_batch").exists():
            write_cifar10(root, args.n, args.n_test)
        for i in range(args.rounds):
            for variant in variants:
                for key, src in versions.items():
                    r = run_variant(variant, args, root, out, src, f"-{key or 'this'}-{i}")
                    runs[(variant, key)].append(r)
                    name = f"{variant}{' (' + key + ')' if key else ''}"
                    print(f"  {name}: " + (f"epochs {', '.join(f'{t:.2f}' for t in r['epoch_times'])} s, "
                                           f"run {r['wall']:.0f} s" if "error" not in r else f"FAILED: {r['error']}"),
                          flush=True)
    import torch

    results = {k: merge(v) for k, v in runs.items()}
    device = next((r["device"] for r in results.values() if "device" in r), args.device)
    # the device the runs used (cuda:N: its own name); none ran (cuda asked for without a GPU): as asked
    name = torch.cuda.get_device_name(torch.device(device)) if str(device).startswith("cuda") and \
        torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)" if str(device) == "cpu" else str(device)
    # images trained per epoch, from a run's own step count: whole batches of the files' images (--quick's
    # 1,024 are 1,020 in five files of 204, 7 batches of 128: the table divided 1,024 by the epoch's time)
    n = next((r["steps"] // args.epochs * args.batch for r in results.values() if "steps" in r), 0)
    base = {k: statistics.median(r["later"]) for (v, k), r in results.items() if v == "identity" and "error" not in r}
    rows = []
    for (variant, key), r in results.items():
        label = f"{variant}{' (' + key + ')' if key else ''}"
        if "error" in r:
            rows.append([label, "failed", "", "", "", "", "", "", ""])
            continue
        t = statistics.median(r["later"])
        this = results.get((variant, ""), {})
        vs = "-" if not key or "error" in this else f"{statistics.median(this['later']) / t:.3f}"
        # ||W^T W - I|| is an error only for the orthogonal kinds (a linear skip's W need not be)
        orthogonal = r["orth"] is not None and variant.startswith(("learnable_orth", "fixed_orth"))
        rows.append([label, f"{statistics.median(r['first']):.2f}", f"{t:.3f}", f"{n / t:,.0f}",
                     f"{t / base[key]:.3f}" if key in base else "-", vs,
                     f"{r['orth']:.1e}" if orthogonal else "-", repr(r["train_loss"]), f"{r['wall']:.0f}"])
    data = (f"dataset=cifar10 (random CIFAR-shaped files, {args.n:,} train images)" if args.dataset == "cifar10"
            else "dataset=digits")
    print(f"\nrun_experiments {data} model.model_type={args.model} batch_size={args.batch}, {args.epochs} epochs, "
          f"{args.rounds} round(s)\ndevice: {name} ({device}); torch {torch.__version__}")
    print(table(["variant", "epoch 1 s", "epoch s (later, median)", "train img/s", "/ identity",
                 "this / baseline", "max orth err", "train loss", "run wall s"], rows, "<>>>>>>>>"))
    failed = [label for label, *cells in rows if cells[0] == "failed"]
    if failed:  # (it exited 0 with every run failed)
        raise SystemExit(f"{len(failed)} of {len(rows)} run(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main(sys.argv[1:])
