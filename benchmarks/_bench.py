"""What the benchmark scripts share: the device and its name, synchronised timing of
variants interleaved round-robin, the optimiser of this library, and a plain-text table.

Not a module of the library: the scripts import it as a sibling (``python benchmarks/x.py``
puts this folder on ``sys.path``).
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch


def positive(text: str) -> int:
    """An argparse type: an integer >= 1 (a batch, a count of steps, rounds or calls), refused in
    argparse's one error line rather than by a traceback from deep inside the timing."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {value}")
    return value


def names(allowed, what: str):
    """An argparse type: a comma-separated list of names, each one of ``allowed`` (model types,
    methods, ...), refused in argparse's one error line rather than by a KeyError mid-table."""
    import argparse

    allowed = list(allowed)

    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in items if t not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(map(repr, unknown))}; "
                                             f"allowed: {', '.join(allowed)}")
        return items

    return parse


def parse_args(parser, argv=None, quick: dict | None = None):
    """``parser.parse_args(argv)``, where ``--quick`` sets the smoke run's ``quick`` values as
    defaults, so an option given on the command line still wins (``--quick --models resnet18``)."""
    args = parser.parse_args(argv)
    if quick and getattr(args, "quick", False):
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args


def resolve_device(name: str) -> torch.device:
    """``auto``: cuda if there is one, else cpu. A name torch does not know (``gpu``) or a GPU
    this machine lacks is one line and a non-zero exit."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name} was asked for but no CUDA GPU is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise SystemExit(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def header(title: str, device: torch.device) -> str:
    """One line naming what was measured, on which device, with which torch."""
    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    return f"{title}\ndevice: {device_name(device)}; torch {torch.__version__}{cuda}"


def allow_recompiles(n: int) -> None:
    """Let torch.compile keep ``n`` graphs of one function: each skip kind or size compiled side
    by side in one process is a recompilation of the same ``forward``, and past dynamo's limit
    (8) it falls back to eager without a word but a log line, so a table headed "compiled" timed
    eager steps from its 9th variant on (recompile_limit from torch 2.6; cache_size_limit before)."""
    import torch._dynamo.config as config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), n))
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 4 * n))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(
    steps: dict[str, Callable[[], object]],
    device: torch.device,
    rounds: int,
    calls: int,
    warmup: int = 2,
    between: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each function, one number per round.

    Every round times ``calls`` calls of each function in turn (so machine noise and clock
    changes hit every variant alike), with the device synchronised before and after.
    ``between(name)`` runs before each timing, outside it (settings, measurements). A warm-up
    longer than 5 s (compiling, say) is reported on stderr as it ends, so a run cut short by
    a time limit still says where its time went."""
    for name, fn in steps.items():
        if between is not None:
            between(name)
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        synchronize(device)
        if time.perf_counter() - t0 > 5.0:
            print(f"  warm-up of {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            if between is not None:
                between(name)
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            synchronize(device)
            times[name].append((time.perf_counter() - t0) / calls)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def make_optimizer(model: torch.nn.Module, lr: float = 0.1, momentum: float = 0.9,
                   weight_decay: float = 5e-4, retraction_impl: str = "auto") -> torch.optim.Optimizer:
    """SGD from this library: its ``step()`` also keeps the retracted orthogonal matrices
    on O(n) (no separate upkeep call), by SVD/QR (``factor``) or by products (``matmul``)."""
    from orthogonal_skip_connections.optim import optimizer

    return optimizer(model, torch.optim.SGD, lr=lr, momentum=momentum, weight_decay=weight_decay,
                     retraction_impl=retraction_impl)


def impl_rows(methods, impls: list[str], device: torch.device) -> list[tuple[str, str, str]]:
    """(method, impl, suffix) for each retracted method and each retraction impl asked for;
    the impl ``auto`` picks on ``device`` has no suffix, the other is marked ``@factor`` /
    ``@matmul``. Parametrized methods get one row with impl ``auto``."""
    from orthogonal_skip_connections.maths.orthogonal import RETRACTED_METHODS, resolve_impl

    auto = resolve_impl("auto", device)
    rows = []
    for m in methods:
        if m not in RETRACTED_METHODS:
            rows.append((m, "auto", ""))
            continue
        for impl in dict.fromkeys(resolve_impl(i, device) for i in impls):
            rows.append((m, impl, "" if impl == auto else f"@{impl}"))
    return rows


def table(columns: list[str], rows: list[list], aligns: str | None = None) -> str:
    """A plain-text table; floats are written as given (format them first)."""
    cells = [[str(c) for c in columns]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    aligns = aligns or "<" + ">" * (len(columns) - 1)

    def fmt(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if a == "<" else c.rjust(w) for c, w, a in zip(row, widths, aligns))

    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def add_classifier_args(ap) -> None:
    """The options of a benchmark that times one trained-shape classifier on digits images:
    ``--model``, ``--kind`` (kind[/method]), ``--n-eval``, ``--device``, ``--threads``."""
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--kind", default="learnable_orth/steepest", help="kind[/method]")
    ap.add_argument("--n-eval", type=positive, default=512)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=positive, default=1)


def digits_classifier(args, seed: int = 0):
    """(model in eval mode on the device, its ImageData, the device) from
    :func:`add_classifier_args`' options; sets torch's CPU threads."""
    from orthogonal_skip_connections.train.image import ClassifierSpec, build_classifier

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    from orthogonal_skip_connections.runs import UserError

    kind, *method = args.kind.split("/")
    spec = ClassifierSpec("digits", args.model, kind, {"method": method[0]} if method else {})
    try:
        model, data = build_classifier(spec, seed=seed)
    except (UserError, ValueError) as err:  # an unknown --model or --kind: one line, not a traceback
        raise SystemExit(f"--model {args.model} --kind {args.kind}: {err}") from None
    return model.to(device).eval(), data, device
