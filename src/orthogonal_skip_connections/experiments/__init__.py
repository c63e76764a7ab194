"""Layer 6: the apps, one module each, all of one shape (:mod:`._app`). ``APPS`` (in :mod:`._app`) is the
registry that ``osc`` and ``osc study`` read (in :mod:`._registry`, which imports neither torch nor Hydra);
no app imports another app."""

from __future__ import annotations

from ._registry import APPS, load_app

__all__ = ["APPS", "load_app"]
