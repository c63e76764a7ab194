"""What every app shares: the run directory, files written atomically, progress bars,
and the rule that a user's mistake is one clear line and a non-zero exit.

Apps in ``experiments/`` are thin Hydra apps built on :func:`hydra_app`::

    @hydra_app("teacher_student")
    def main(cfg, run_dir):
        ...                         # build from cfg, call the library, save into run_dir
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

__all__ = [
    "UserError",
    "hydra_app",
    "run_dir_of_job",
    "save_config",
    "write_json",
    "read_json",
    "append_jsonl",
    "atomic_torch_save",
    "progress_bar",
    "resolve_device",
    "to_jsonable",
    "compose_config",
]

CONFIG_DIR = str(Path(__file__).parent / "config")


class UserError(ValueError):
    """Bad input from the user: printed as one line, exit code 2, no traceback."""


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types for numpy/torch scalars, arrays, paths and configs; NaN/inf -> None."""
    if isinstance(obj, DictConfig) or OmegaConf.is_list(obj):
        return OmegaConf.to_container(obj, resolve=True)
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


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write to a temporary file beside ``path``, then rename over it: readers see the
    old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda f: json.dump(to_jsonable(obj), f, indent=2, allow_nan=False))


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def append_jsonl(path: Path, obj: Any) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(to_jsonable(obj), allow_nan=False) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f), mode="wb")


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    _atomic_write(Path(run_dir) / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(cfg, resolve=True)))


def progress_bar(iterable=None, enabled: bool = True, **kwargs):
    """tqdm, or a silent pass-through with the same methods when ``enabled`` is false."""
    from tqdm.auto import tqdm

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
        raise UserError(f"unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda was asked for but no CUDA GPU is available; use device=auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("device=mps was asked for but MPS is not available; use device=auto or cpu")
    return device


def run_dir_of_job() -> Path:
    """The current Hydra job's output directory (``hydra.run.dir=...`` sets it)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def hydra_app(config_name: str):
    """Turn ``fn(cfg, run_dir) -> result`` into a Hydra app with our error rule.

    A :class:`UserError` (or any ValueError: the library's checks of configured values)
    becomes one line on
    stderr, ``error: ...``, and exit code 2. The wrapped function is also available
    undecorated as ``main.run(cfg, run_dir)`` for tests and for apps that drive others.
    """
    import hydra

    def decorate(fn: Callable[[DictConfig, Path], Any]):
        @hydra.main(config_path=CONFIG_DIR, config_name=config_name, version_base=None)
        @functools.wraps(fn)
        def main(cfg: DictConfig):
            try:
                return fn(cfg, run_dir_of_job())
            except ValueError as err:  # UserError, or a library check on a configured value
                print(f"error: {err}", file=sys.stderr)
                sys.exit(2)

        main.run = fn
        main.config_name = config_name
        return main

    return decorate


def compose_config(name: str, overrides: list[str] = ()) -> DictConfig:
    """Compose app ``name``'s config with ``overrides``, inside a running Hydra app (as
    ``osc study`` does to drive the other apps) or outside one (tests, scripts)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=name, overrides=list(overrides))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name=name, overrides=list(overrides))
