"""Layer 0: what every layer may use. :class:`UserError` (a user's mistake: one line,
exit code 2, no traceback), files written atomically, JSON/JSONL, progress bars, the
device choice and :func:`check_module` (a TypeError for a model that is not one). No Hydra,
no omegaconf: the apps in ``experiments/`` hold those, and run dirs live in
:mod:`~orthogonal_skip_connections.rundir`."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = [
    "UserError",
    "write_json",
    "read_json",
    "read_jsonl",
    "append_jsonl",
    "atomic_torch_save",
    "progress_bar",
    "resolve_device",
    "to_jsonable",
    "atomic_write_text",
    "machine_memory",
    "check_memory",
    "outermost_new",
    "remove_empty",
    "check_module",
]


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2, no traceback.

    Deliberately not a ValueError. A ValueError is a library function refusing its
    arguments; code that passed it a user's value converts it where it knows which key the
    value came from (``except (TypeError, ValueError) as err: raise UserError(...)``, in the
    app's ``Config.check`` when the value can be checked there). Were UserError a
    ValueError, such ``except`` clauses (and any "try, else fall back" on ValueError) would
    also catch and rewrap or swallow user errors, and a library ValueError could be taken
    for a user's mistake; the command line catches UserError only, so a library error
    that no app converted is a traceback: a bug to fix, not a message to hide."""


def check_module(fn: str, obj: Any, takes: str = "a model (an nn.Module)") -> None:
    """Refuse (TypeError, saying what ``fn`` takes) an ``obj`` that is not an ``nn.Module``: a
    string or a state_dict given for a model otherwise fails deep inside, as an AttributeError
    on a name the caller never wrote."""
    if not isinstance(obj, torch.nn.Module):
        raise TypeError(f"{fn} takes {takes}; got {type(obj).__name__}")


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types for numpy/torch scalars, arrays, paths and dataclasses; NaN/inf -> None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.tolist())
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy
        return to_jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


_UMASK = os.umask(0)
os.umask(_UMASK)  # read once (os.umask can only be read by setting it)


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write to a temporary file beside ``path``, then rename over it: readers see the
    old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should read like any other file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_npz(path: Path, arrays: dict, compressed: bool = False) -> None:
    """``np.savez`` (``np.savez_compressed``) through a temporary file and a rename: never a
    half-written file."""
    import numpy as np  # here, not at the top: ``osc list`` imports this module and needs no numpy

    save = np.savez_compressed if compressed else np.savez
    _atomic_write(path, lambda f: save(f, **arrays), mode="wb")


def write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda f: json.dump(to_jsonable(obj), f, indent=2, allow_nan=False))


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def append_jsonl(path: Path, obj: Any) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(to_jsonable(obj), allow_nan=False) + "\n")


def read_jsonl(path: Path) -> list[tuple[int, str, Any]]:
    """The records of a JSON-lines file written by :func:`append_jsonl`, as (line number, line,
    object), blank lines skipped. A last line without its newline that does not parse is a
    write cut short (a run killed mid-append, or one still writing while a report reads it)
    and is left out; any other line that does not parse, or a file that cannot be read as
    text (a dir, bytes that are not UTF-8), is a one-line UserError."""
    try:
        lines = Path(path).read_text().split("\n")  # the last item: what follows the last newline
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path} ({type(err).__name__}): not a JSON-lines file of this library") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append((n, line, json.loads(line)))
        except json.JSONDecodeError as err:
            if n == len(lines):
                break
            raise UserError(f"{path}, line {n}: not JSON ({err.msg}); the file is damaged") from None
    return out


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f), mode="wb")


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text))


def outermost_new(path: Path) -> Path:
    """The outermost of ``path`` and its parents that does not exist yet (what making
    ``path`` would make first)."""
    top = Path(path)
    while not top.parent.exists() and top.parent != top.parent.parent:
        top = top.parent
    return top


def remove_empty(path: Path, top: Path) -> None:
    """Remove ``path`` and its parents up to ``top`` (which must contain it) while they are
    empty: the dirs a refused call made (``top`` from :func:`outermost_new`), and nothing else."""
    path, top = Path(path).absolute(), Path(top).absolute()
    if path != top and top not in path.parents:
        return
    while True:
        try:
            path.rmdir()  # empty dirs only
        except OSError:
            return
        if path == top:
            return
        path = path.parent


def progress_bar(iterable=None, enabled: bool = True, **kwargs):
    """tqdm, or a silent pass-through with the same methods when ``enabled`` is false."""
    import threading

    from tqdm.auto import tqdm

    if not hasattr(tqdm, "_lock"):
        # tqdm's default lock holds a multiprocessing semaphore, which a worker process killed
        # mid-run (a joblib pool shut down on Ctrl-C or SIGTERM) leaks, and the resource
        # tracker then warns about. Only threads share it here (launcher workers are spawned,
        # each with its own), so a thread lock does its job.
        tqdm.set_lock(threading.RLock())
    return tqdm(iterable, disable=not enabled, dynamic_ncols=True, **kwargs)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):  # meta, xpu, ...: torch's, not trained on here
        raise UserError(f"unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N, mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} was asked for but no CUDA GPU is available; use device=auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise UserError(f"device={name} was asked for but this machine has {n} CUDA GPU{'s' if n > 1 else ''} "
                        f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device={name} was asked for but MPS is not available; use device=auto or cpu")
    return device


def machine_memory() -> int | None:
    """Bytes of physical memory of this machine (``os.sysconf``; no psutil), or None where
    the system does not say (Windows has no ``os.sysconf``)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(what: str, nbytes: float) -> None:
    """Refuse (one line) a configuration whose ``nbytes`` (a lower bound of what it will
    allocate, counted from the config without allocating anything) exceed this machine's
    physical memory: it could only die of a MemoryError or be killed after a long wait.
    Only the clearly absurd is refused: the bound counts the largest tensors, never
    activations, so anything that could fit runs and meets its own limits."""
    total = machine_memory()
    if total is not None and nbytes > total:
        raise UserError(f"{what} would need at least {_bytes(nbytes)} of memory; this machine has {_bytes(total)}")


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
