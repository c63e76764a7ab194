"""What torch.compile does with compile=true's training path, per skip variant: graphs,
graph breaks, recompilations, compile time, losses against eager, and the compiled step's
time over the eager step's.

For each variant, ``osc run_experiments`` runs twice in fresh processes (dynamo's caches
empty): eager, then ``compile=true`` with ``TORCH_LOGS``-style recompile and graph-break
logging caught in the process. Reported per variant:

- graphs: graphs dynamo handed to the backend (``counters["stats"]["unique_graphs"]``,
  recompilations included); breaks: graph breaks (with their reasons below the table);
- recompiles: "Recompiling function" records (the failed guard of each below the table),
  and whether dynamo hit its recompile limit (then a code object silently runs eagerly);
- compile s: the first epoch's time minus a later epoch's (the warm-up's extra cost; "-"
  with ``--epochs 1``);
- dloss: the difference of the training losses (per step) compiled against eager, same
  seed, at the first step (before any update: the forward's round-off) and the largest over
  the first ``--first`` and ``--record`` steps; ref: the same for eager against eager in the
  other memory layout. Training at the digits defaults amplifies
  a round-off difference about 30x per step (1e-7 -> 1e-2 in 4 steps, eager against eager),
  so only the first steps compare to 1e-4 and later ones to the reference's size;
- step ratio (``--ratio``): a compiled and an eager copy of the model timed side by side in
  one process, steps interleaved round-robin (the library's optimiser, the digits batch).

The CPU's ratio is not a GPU's: inductor's gain on a GPU is mostly the host's launches.

    python benchmarks/compile_audit.py                                     # every variant, resnet20, inductor
    python benchmarks/compile_audit.py --variants identity,learnable_orth/cayley --backend aot_eager
    python benchmarks/compile_audit.py --variants identity --epochs 30 --set scheduler.warmup_epochs=5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KINDS = ["identity", "zero", "fixed_orth", "random", "linear", "scalar", "idempotent"]
METHODS = ["steepest", "svd", "qr", "newton_schulz", "cayley", "exp", "householder"]
ALL = KINDS + [f"learnable_orth/{m}" for m in METHODS]


def variant_overrides(variant: str) -> list[str]:
    kind, *method = variant.split("/")
    return [f"model.skip_kind={kind}"] + ([f"model.method={method[0]}"] if method else [])


# --------------------------------------------------------------------------- child processes


def child_train(spec: dict) -> dict:
    """One run_experiments run; per-step losses and times recorded, dynamo's records caught."""
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    from orthogonal_skip_connections.experiments import run_experiments
    from orthogonal_skip_connections.train import classifier

    records = {"recompiles": [], "graph_breaks": [], "limit": []}

    class Catch(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if record.name.endswith("__recompiles"):
                records["recompiles"].append(msg)
            elif record.name.endswith("__graph_breaks"):
                records["graph_breaks"].append(msg)
            elif "recompile_limit" in msg or "cache_size_limit" in msg:
                records["limit"].append(msg)

    torch._logging.set_logs(recompiles=True, graph_breaks=True)
    for name in ("torch", "torch._dynamo", "torch._inductor"):  # dynamo's and inductor's loggers do not propagate
        logging.getLogger(name).addHandler(Catch())
    losses, times = [], []
    forward = classifier._forward

    def recorded(*args):
        times.append(time.perf_counter())
        out = forward(*args)
        if len(losses) < spec["record"]:
            losses.append(out[0].detach().clone())
        return out

    classifier._forward = recorded
    summary = run_experiments.main.run(spec["overrides"], Path(spec["dir"]))
    metrics = [json.loads(s) for s in (Path(spec["dir"]) / "metrics.jsonl").read_text().splitlines()]
    per_epoch = summary["steps"] // summary["epochs"]
    steps = [b - a for i, (a, b) in enumerate(zip(times, times[1:])) if (i + 1) % per_epoch]  # within epochs
    return {
        "losses": [float(x) for x in losses],
        "test_losses": [m["test_loss"] for m in metrics if m["type"] == "eval"],
        "epoch_times": [m["epoch_time_s"] for m in metrics if m["type"] == "train"],
        "step_median_s": statistics.median(steps[len(steps) // 2:]) if steps else None,
        "graphs": counters["stats"]["unique_graphs"],
        "breaks": dict(counters["graph_break"]),
        "frames": dict(counters["frames"]),
        **records,
    }


def child_ratio(spec: dict) -> dict:
    """Seconds per training step of an eager and a compiled copy of one model (same init),
    timed interleaved on one digits batch, after ``warmup`` compiled steps."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(HERE))
    from _bench import interleaved_times, make_optimizer

    from orthogonal_skip_connections.data.vision import TensorLoader, epoch_generator
    from orthogonal_skip_connections.train.image import ClassifierSpec, build_classifier

    torch.set_num_threads(spec["threads"])
    kind, *method = spec["variant"].split("/")
    cs = ClassifierSpec("digits", spec["model"], kind, {"method": method[0]} if method else {})
    device = torch.device("cpu")
    steps = {}
    for name in ("eager", "compiled"):
        model, data = build_classifier(cs, seed=0)
        model.to(memory_format=torch.channels_last).train()
        opt = make_optimizer(model)
        fwd = torch.compile(model, backend=spec["backend"], mode=spec["mode"]) if name == "compiled" else model
        x, y = next(iter(TensorLoader(data, spec["batch"], True, device, True).epoch(epoch_generator(0, 0))))

        def step(fwd=fwd, opt=opt, x=x, y=y):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(fwd(x), y).backward()
            opt.step()

        steps[name] = step
    t0 = time.perf_counter()
    steps["compiled"]()
    warm = time.perf_counter() - t0
    times = interleaved_times(steps, device, spec["rounds"], spec["calls"], warmup=2)
    return {"warm_s": warm, "eager_s": statistics.median(times["eager"]),
            "compiled_s": statistics.median(times["compiled"])}


def run_child(kind: str, spec: dict, env: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [s for s in p.stdout.splitlines() if s.startswith("{")]
    if p.returncode or not lines:
        return {"error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1][:300]}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- the parent


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(HERE))
    from _bench import positive

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(ALL), help="comma-separated kind[/method] (default: all)")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--epochs", type=positive, default=3, help="epochs per run (compile s needs >= 2)")
    p.add_argument("--backend", default="inductor", help="inductor | aot_eager | eager")
    p.add_argument("--mode", default="default", help="compile_mode: default | reduce-overhead | max-autotune-no-cudagraphs")
    p.add_argument("--record", type=positive, default=20, help="training steps whose losses are compared")
    p.add_argument("--first", type=positive, default=3, help="the first steps' column of loss differences")
    p.add_argument("--channels-last", default=True, action=argparse.BooleanOptionalAction,
                   help="the runs' memory layout (the round-off reference runs in the other)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more run_experiments overrides")
    p.add_argument("--no-eager", action="store_true", help="skip the eager runs (no loss comparison)")
    p.add_argument("--ratio", action="store_true", help="also time compiled vs eager steps interleaved")
    p.add_argument("--rounds", type=positive, default=5)
    p.add_argument("--calls", type=positive, default=5)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        fn = {"train": child_train, "ratio": child_ratio}[args.child[0]]
        print(json.dumps(fn(json.loads(args.child[1]))), flush=True)
        return

    import torch

    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}" + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("TORCH_LOGS", None)
    base = ["dataset=digits", f"model.model_type={args.model}", "device=cpu", "progress=false",
            f"scheduler.epochs={args.epochs}", "save_checkpoint=none", f"channels_last={args.channels_last}", *args.set]
    compiled_keys = ["compile=true", f"compile_backend={args.backend}", f"compile_mode={args.mode}"]
    print(f"compile audit: run_experiments {' '.join(base)} {' '.join(compiled_keys)}")
    print(f"device: CPU ({os.cpu_count()} cores, {env['OMP_NUM_THREADS']} thread(s)); torch {torch.__version__}",
          flush=True)
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
            over = base + variant_overrides(variant)
            eager = ref = None
            if not args.no_eager:
                eager = run_child("train", {"overrides": over, "dir": f"{tmp}/{variant}/eager",
                                            "record": args.record}, env, args.timeout)
                # round-off's own effect: eager again in the other memory layout (other kernels)
                ref = run_child("train", {"overrides": over + [f"channels_last={not args.channels_last}"],
                                          "dir": f"{tmp}/{variant}/reference", "record": args.record}, env,
                                args.timeout)
            # inductor's caches cold for the run (its compile time is a first compile's), warm for the ratio
            venv = {**env, "TORCHINDUCTOR_CACHE_DIR": f"{tmp}/{variant}/inductor_cache"}
            t0 = time.perf_counter()
            comp = run_child("train", {"overrides": over + compiled_keys, "dir": f"{tmp}/{variant}/compiled",
                                       "record": args.record}, venv, args.timeout)
            wall = time.perf_counter() - t0
            if "error" in comp:
                rows.append([variant, "ERROR"] + [""] * 11)
                notes.append(f"{variant}: {comp['error']}")
                continue
            et = comp["epoch_times"]
            compile_s = f"{et[0] - statistics.median(et[1:]):.1f}" if len(et) > 1 else "-"  # needs --epochs >= 2
            dloss = ["-"] * 5
            if eager and "error" not in eager and "error" not in ref:
                d = [abs(a - b) for a, b in zip(eager["losses"], comp["losses"])]
                r = [abs(a - b) for a, b in zip(eager["losses"], ref["losses"])]
                k = args.first
                dloss = [f"{x:.1e}" for x in (d[0], max(d[:k]), max(r[:k]), max(d), max(r))]
            elif eager:
                notes.append(f"{variant} eager: {eager.get('error') or ref.get('error')}")
            ratio = "-"
            if args.ratio:
                r = run_child("ratio", {"variant": variant, "model": args.model, "backend": args.backend,
                                        "mode": None if args.mode == "default" else args.mode, "batch": 128,
                                        "threads": 1, "rounds": args.rounds, "calls": args.calls}, venv, args.timeout)
                ratio = r["error"][:40] if "error" in r else f"{r['compiled_s'] / r['eager_s']:.2f}"
            n_breaks = sum(comp["breaks"].values())
            rows.append([variant, comp["graphs"], n_breaks, len(comp["recompiles"]),
                         "yes" if comp["limit"] else "no", compile_s, f"{wall:.0f}", *dloss, ratio])
            for reason, n in comp["breaks"].items():
                notes.append(f"{variant}: break x{n}: {reason.splitlines()[0][:200]}")
            for msg in comp["recompiles"]:
                lines = [s.strip() for s in msg.splitlines()]
                why = next((s for s in lines if s.startswith("- ") and "/" in s[:8]), lines[0])
                notes.append(f"{variant}: recompile: {lines[0][:120]} | {why[:240]}")
            for msg in comp["limit"]:
                notes.append(f"{variant}: LIMIT: {msg.splitlines()[0][:240]}")
            print(f"  {variant}: done ({wall:.0f} s)", file=sys.stderr, flush=True)

    sys.path.insert(0, str(HERE))
    from _bench import table

    print(table(["variant", "graphs", "breaks", "recompiles", "limit hit", "compile s", "run s",
                 "dloss 1st", f"dloss {args.first}", f"ref {args.first}", f"dloss {args.record}", f"ref {args.record}",
                 "step compiled/eager"], rows, "<" + ">" * 12))
    print(f"dloss 1st / {args.first} / {args.record}: |compiled - eager| training loss at the first step (before any "
          f"update) and the max over the first {args.first} and {args.record} steps; ref: the same for eager against "
          f"eager in the other memory layout (channels_last={not args.channels_last}), round-off's own growth")
    for n in notes:
        print(n)


if __name__ == "__main__":
    main()
