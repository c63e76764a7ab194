"""One-line checks of config values, for the apps' ``Config.check()``: each raises a
:class:`~orthogonal_skip_connections.runs.UserError` naming the key, what is allowed and
what was given. No Hydra, no omegaconf, no torch."""

from __future__ import annotations

import math
import os
from typing import Any

from ..runs import UserError

__all__ = ["require", "threads", "choice", "one_of", "ints_at_least", "number", "path_or_null", "check_seed",
           "MAX_SEED"]

# the largest seed every library a run seeds takes: NumPy's and scikit-learn's 0 .. 2**32 - 1 (torch takes
# more, up to 2**64 - 1, and a larger Python int overflows there: a traceback, not a line)
MAX_SEED = 2**32 - 1


def require(ok: bool, key: str, allowed: str, value: Any) -> None:
    """Raise ``UserError("<key> must be <allowed>; got <value>")`` unless ``ok``."""
    if not ok:
        raise UserError(f"{key} must be {allowed}; got {value!r}")


def threads(value: Any, nullable: bool = True, key: str = "num_threads") -> None:
    """CPU threads: an integer from 1 to this machine's CPU count (or null, torch's default:
    one per core). More threads than cores only slow a run down, and far more make OpenMP
    fail to create them (a segmentation fault at 10^6)."""
    cpus = os.cpu_count()
    null = " or null (torch's default: one per core)" if nullable else ""
    allowed = (f"an integer from 1 to {cpus} (this machine's CPUs){null}" if cpus else f"an integer >= 1{null}")
    ok = (value is None and nullable) or (
        isinstance(value, int) and not isinstance(value, bool) and value >= 1 and (cpus is None or value <= cpus))
    require(ok, key, allowed, value)


def choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise UserError(f"unknown {key} {value!r}; allowed: {', '.join(map(str, allowed))}")


def one_of(key: str, values: list, allowed, low_count: int = 1) -> list:
    """A non-empty list of allowed values, in order, duplicates dropped."""
    require(len(values) >= low_count and all(v in allowed for v in values), key,
            f"a non-empty list of: {', '.join(map(str, allowed))}", values)
    return list(dict.fromkeys(values))


def ints_at_least(key: str, values: list, low: int) -> list[int]:
    """A non-empty list of integers >= low, sorted, duplicates dropped."""
    require(len(values) > 0, key, f"a non-empty list of integers >= {low}", values)
    for v in values:
        if v < low:
            raise UserError(f"every entry of {key} must be an integer >= {low}; got {v!r}")
    return sorted(set(values))


def number(key: str, value: float, low: float = -math.inf, strict: bool = False, high: float = math.inf) -> None:
    ok = math.isfinite(value) and (value > low if strict else value >= low) and value <= high
    bound = " and ".join(b for b in [
        "" if low == -math.inf else f"{'>' if strict else '>='} {low}", "" if high == math.inf else f"<= {high}"] if b)
    require(ok, key, f"a finite number {bound}".strip(), value)


def path_or_null(key: str, value: str | None) -> None:
    """A path key: null or a path, never a blank string (``''`` would read as the current
    directory, where nothing of the run belongs)."""
    require(value is None or value.strip() != "", key, "a path or null", value)


def check_seed(key: str, value: int, high: int = MAX_SEED) -> None:
    """A first seed: an integer from 0 to ``high`` (default :data:`MAX_SEED`; an app whose run
    uses seeds above its first passes ``MAX_SEED`` less what it adds, so that all of them fit)."""
    require(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= high, key,
            f"an integer from 0 to {high} (every seed a run uses must be in NumPy's range 0 .. 2**32 - 1)", value)
