"""Keeping a square weight orthogonal: ``orthogonal_(module, "weight", method=...)``.

The mechanism for any module (a skip, an ``nn.Linear``, a user's block), in the spirit
of geotorch and ``torch.nn.utils.parametrizations.orthogonal``. Two families, one call:

- parametrized methods (``cayley``, ``exp``, ``householder``) register torch's
  ``orthogonal`` parametrization: W = B phi(A) is orthogonal by construction and any
  optimiser may move A (``osc.optimizer`` never decays it: see :mod:`..optim`). The same
  state and the same W as ``torch.nn.utils.parametrizations.orthogonal``; only the
  Householder map of a square weight is computed faster, and stays orthogonal under a plain
  optimiser's weight decay where torch's collapses to 0 (:class:`OrthogonalMap`);
- retracted methods (``steepest``, ``svd``, ``qr``, ``newton_schulz``) leave W a plain
  parameter and mark it with a :class:`Retraction`; the optimiser of
  :func:`orthogonal_skip_connections.optim.optimizer` finds the mark and moves W on O(n)
  inside its own ``step()``. A plain torch optimiser handed a marked matrix refuses to step
  (a deep copy's matrices too).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize

from ..maths import orthogonal as orth
from ..runs import check_module

__all__ = ["OrthogonalMap", "Retraction", "retraction_of", "retraction_among", "recorded_retraction", "mark_retracted", "retracted_parameters", "project_orthogonal_", "orthogonal_", "resolve_method"]

class OrthogonalMap(parametrizations._Orthogonal):
    """torch's orthogonal parametrization (its state_dict, its right_inverse, its W), with
    the Householder map of a square real weight in compact WY form
    (:func:`~orthogonal_skip_connections.maths.orthogonal.householder_wy`): the same Q as
    ``householder_product`` (to round-off) at a fraction of its forward and backward cost,
    and the Cayley map without a host read: torch's ``linalg.solve`` reads the LU's
    singularity flag on the host (on a GPU a synchronisation per skip per forward), but
    I - A/2 with A skew-symmetric is never singular (eigenvalues 1 - i lambda/2, lambda
    real), so on a GPU :func:`torch.linalg.solve_ex` gives the same Q (bit for bit: the same
    LU solve) without the check. On the CPU, where the check reads no device, the solve is
    :func:`~orthogonal_skip_connections.maths.orthogonal.solve_safe` (a large stack one LU at
    a time: torch's batched CPU LU can be wrong). The exponential map is
    :func:`~orthogonal_skip_connections.maths.orthogonal.expm_fixed`, the same exp(A) as
    torch's ``matrix_exp`` to round-off (closer to scipy's): under torch.compile and inside
    ``torch.func`` transforms (vmap over seeds) with its full fixed sequence of products
    (``matrix_exp`` reads its matrices' norms on the host, which a CUDA graph cannot hold and
    vmap cannot batch), elsewhere on the CPU with the degree and squarings the stack needs,
    read on the host (faster than ``matrix_exp``: see ``expm_fixed``); eager on a GPU it is
    torch's ``matrix_exp``."""

    def forward(self, X: Tensor) -> Tensor:
        # W in the weight's own precision, also inside an autocast region (bf16 products would
        # leave it orthogonal to ~1e-2 only, and bf16 has no triangular solve on the CPU); the
        # layer that applies W casts it as autocast says
        with torch.autocast(X.device.type, enabled=False):
            return self._forward(X)

    def _forward(self, X: Tensor) -> Tensor:
        if not self.maps_stacks(X):
            return super().forward(X)
        Q = self.phi(self.orthogonal_map, X)
        if hasattr(self, "base"):
            Q = self.base @ Q
        return Q

    @staticmethod
    def maps_stacks(X: Tensor) -> bool:
        """Whether :meth:`phi` computes this map of ``X``: a square real (..., n, n) weight."""
        return X.size(-1) == X.size(-2) and not X.is_complex()

    @staticmethod
    def phi(orthogonal_map, X: Tensor) -> Tensor:
        """phi(X) of a square real X (..., n, n), the orthogonal factor torch's parametrization
        multiplies its base by (W = B phi(X)); any stack of X at once, each matrix as alone:
        ``matrix_exp`` exp(A), ``cayley`` (I + A/2)(I - A/2)^-1 with A = X_lower - X_lower^T,
        ``householder`` the product of the reflections of X's strictly lower triangle, signed
        by the signs of X's diagonal (+-1, set by torch's right_inverse, no gradient). torch
        reads that diagonal with ``.int()``, which truncates: one step of weight decay (a plain
        AdamW's default 0.01) takes 1 to 0.99999 and W to 0; its sign is the same +-1 at any decay."""
        if X.dtype in (torch.float16, torch.bfloat16):  # half-precision weights: the map in float32
            return OrthogonalMap.phi(orthogonal_map, X.float()).to(X.dtype)  # (no half LU on the CPU)
        maps = parametrizations._OrthMaps
        if orthogonal_map == maps.householder:
            return orth.householder_wy(X) * X.diagonal(dim1=-2, dim2=-1).detach().sign().unsqueeze(-2)
        X = X.tril()
        A = X - X.mT
        if orthogonal_map == maps.matrix_exp:
            if A.device.type != "cpu" and not torch.compiler.is_compiling():
                return torch.matrix_exp(A)  # eager on a GPU: torch's, the same ops as _Orthogonal.forward
            # compiled: nothing read on the host (a CUDA graph can hold it); on the CPU the
            # squarings the stack needs (a fixed 12 inside vmap)
            return orth.expm_fixed(A, None)
        Id = torch.eye(X.size(-1), dtype=A.dtype, device=A.device)
        lhs, rhs = torch.add(Id, A, alpha=-0.5), torch.add(Id, A, alpha=0.5)
        if A.device.type == "cpu":  # the singularity check reads no device; a large stack, one LU at a time
            return orth.solve_safe(lhs, rhs)
        return torch.linalg.solve_ex(lhs, rhs).result


_MARK = "_osc_retraction"  # on a parameter: a cache, lost by copy.deepcopy of the parameter
_MODULE_MARKS = "_osc_retractions"  # on its module, a _Record {name: Retraction}, kept by deepcopy
_TORCH_NAMES = {v: k for k, v in orth.TORCH_MAPS.items()}  # matrix_exp -> exp, ...


@dataclass(frozen=True)
class Retraction:
    """How the optimiser keeps a retracted matrix on O(n): ``method`` (one of
    ``RETRACTED_METHODS``), its step is ``lr * lr_scale``, ``ns_steps`` caps Newton-Schulz."""

    method: str
    lr_scale: float = 1.0
    ns_steps: int = 100

    def __post_init__(self):
        if self.method not in orth.RETRACTED_METHODS:
            raise ValueError(f"unknown retraction {self.method!r}; allowed: {', '.join(orth.RETRACTED_METHODS)}")
        check_lr_scale(self.method, self.lr_scale)
        check_ns_steps(self.ns_steps)


class _Record(dict):
    """{name: Retraction}, the record of a module's retracted matrices, kept in the module's
    ``__dict__``. torch's ``Parameter.__deepcopy__`` copies a tensor without its attributes,
    so the matrices of a deep copy are unmarked; every live record is therefore listed (weakly)
    in ``_RECORDS``, a deep copy's record too (bound to the copied module, which copy's memo
    holds before the module's state is copied), and the guard against plain optimisers marks
    each record's current parameters again (:func:`_mark_recorded`)."""

    def __init__(self, module: nn.Module | None = None, items=()):
        super().__init__(items)
        self.module = weakref.ref(module) if module is not None else lambda: None
        _RECORDS[id(self)] = self

    def __deepcopy__(self, memo):
        return _Record(memo.get(id(self.module())), self)  # specs are frozen: shared

    def __reduce__(self):  # torch.save(model): the module is pickled before its state, so no cycle
        return _Record, (self.module(), dict(self))


_RECORDS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> record (a dict: unhashable)


def _mark_recorded() -> None:
    """Mark the current parameter of every live record (deep copies' included)."""
    for record in list(_RECORDS.values()):
        module = record.module()
        if module is None:
            continue
        for name, spec in record.items():
            p = module._parameters.get(name)
            if p is not None:
                setattr(p, _MARK, spec)


def retraction_of(p: Tensor) -> Retraction | None:
    """The :class:`Retraction` a parameter is marked with, or None."""
    return getattr(p, _MARK, None)


def retraction_among(params) -> Retraction | None:
    """The :class:`Retraction` of the first retracted matrix among ``params`` (the matrices
    of deep copies included), or None."""
    _mark_recorded()
    return next((spec for spec in map(retraction_of, params) if spec is not None), None)


def mark_retracted(p: Tensor, spec: Retraction, module: nn.Module | None = None, name: str | None = None) -> Tensor:
    """Mark ``p`` (a (..., n, n) parameter) as moved by ``spec``'s retraction; returns p.
    With ``module`` and ``name`` the mark is also recorded on the module, where it
    survives ``copy.deepcopy`` and replacing the parameter (see :func:`retracted_parameters`)."""
    orth.check_square(p, "retracted matrix")
    setattr(p, _MARK, spec)
    if module is not None:
        record = module.__dict__.get(_MODULE_MARKS)
        if not isinstance(record, _Record):  # none yet (or a plain dict of an older pickle)
            record = module.__dict__[_MODULE_MARKS] = _Record(module, record or {})
        record[name] = spec
    _guard_plain_optimizers()
    return p


def recorded_retraction(module: nn.Module, name: str) -> Retraction | None:
    """The :class:`Retraction` recorded on ``module`` for its parameter ``name``, or None."""
    return module.__dict__.get(_MODULE_MARKS, {}).get(name)


def retracted_parameters(model: nn.Module) -> list[tuple[nn.Parameter, Retraction]]:
    """Every retracted matrix of ``model`` with its :class:`Retraction`, read from the
    modules' records (so deep copies and seed-stacked copies are found too); each
    parameter is (re)marked on the way, which arms the guard against plain optimisers."""
    out, seen = [], set()
    for module in model.modules():
        for name, spec in module.__dict__.get(_MODULE_MARKS, {}).items():
            p = module._parameters.get(name)
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            out.append((mark_retracted(p, spec), spec))
    return out


@torch.no_grad()
def project_orthogonal_(model: nn.Module) -> float:
    """Put every retracted matrix of ``model`` back on O(n) by its polar factor, the nearest
    orthogonal matrix in Frobenius norm, in place. For matrices set by something other than
    the retraction: an average of weights (``torch.optim.swa_utils.AveragedModel``'s EMA or
    SWA: a mean of orthogonal matrices is not orthogonal), an interpolation, a hand edit.
    Orthogonal matrices stay as they are (to round-off); parametrized methods need nothing
    (an average of their free matrices still maps to O(n)). Returns the largest
    ||W_new - W_old||_F moved, 0.0 for a model without retracted matrices."""
    check_module("project_orthogonal_", model)
    moved = 0.0
    for p, _ in retracted_parameters(model):
        Q = orth.polar(p.detach())
        moved = max(moved, float(torch.linalg.matrix_norm((Q - p).double()).max()))
        p.copy_(Q)
    return moved


_GUARD = []


def _guard_plain_optimizers() -> None:
    """Once per process: a global step pre-hook that stops a plain torch optimiser from
    stepping a retracted matrix (it would move W off O(n) by a Euclidean step). Each
    optimiser's groups are scanned once, and again only when they change."""
    if _GUARD:
        return

    def hook(opt, args, kwargs):
        if getattr(opt, "_osc_retracting", False):
            return
        key = tuple(len(g["params"]) for g in opt.param_groups)
        if opt.__dict__.get("_osc_checked") == key:
            return
        spec = retraction_among(p for g in opt.param_groups for p in g["params"])
        if spec is not None:
            raise TypeError(
                f"a retracted orthogonal matrix ({spec.method}) is in a plain {type(opt).__name__}, "
                "which would step it off O(n); build the optimiser with "
                f"orthogonal_skip_connections.optimizer(model, torch.optim.{type(opt).__name__}, ...)"
            )
        opt.__dict__["_osc_checked"] = key

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    _GUARD.append(register_optimizer_step_pre_hook(hook))


def resolve_method(method: str | None = None, orthogonal_map: str | None = None,
                   update_rule: str | None = None) -> str:
    """One method name from this library's (``method``), torch's (``orthogonal_map``:
    ``matrix_exp``, ``cayley``, ``householder``) or the original project's
    (``update_rule``) vocabulary; they must agree when several are given."""
    given = {}
    if method is not None:
        given["method"] = method
    if orthogonal_map is not None:
        given["orthogonal_map"] = _TORCH_NAMES.get(orthogonal_map, orthogonal_map)
    if update_rule is not None:
        given["update_rule"] = update_rule
    names = set(given.values())
    if len(names) > 1:
        raise ValueError(f"{' and '.join(f'{k}={v!r}' for k, v in given.items())} disagree")
    name = names.pop() if names else orth.DEFAULT_METHOD
    if name not in orth.ORTH_METHODS:
        allowed = ", ".join(orth.ORTH_METHODS) + " (torch's names: " + ", ".join(_TORCH_NAMES) + ")"
        raise ValueError(f"unknown orthogonal method {name!r}; allowed: {allowed}")
    return name


def initial_orthogonal(n: int, init: str, special: bool = True, generator: torch.Generator | None = None,
                       dtype=None, device=None) -> Tensor:
    """I (``identity``) or a Haar draw on SO(n) (O(n) with ``special=False``): (n, n)."""
    if init not in orth.ORTH_INITS:
        raise ValueError(f"unknown orthogonal init {init!r}; allowed: {', '.join(orth.ORTH_INITS)}")
    dtype = dtype or torch.get_default_dtype()  # Haar drawn in float64 and rounded once to it (float64: exact)
    W = orth.haar_orthogonal(n, generator=generator, special=special, dtype=dtype) if init == "haar" else torch.eye(n)
    return W.to(dtype=dtype, device=device)


def check_lr_scale(method: str, lr_scale) -> None:
    """Refuse an ``lr_scale`` that ``method`` would ignore: only a retracted step is scaled; a
    parametrized method's free matrix is a parameter the optimiser steps at its group's lr."""
    if isinstance(lr_scale, bool) or not (isinstance(lr_scale, (int, float)) and 0 < lr_scale < math.inf):
        raise ValueError(f"lr_scale must be a finite number > 0; got {lr_scale!r}")
    if method in orth.PARAMETRIZED_METHODS and lr_scale != 1:
        raise ValueError(
            f"lr_scale={lr_scale:g} scales the step of a retracted method ({', '.join(orth.RETRACTED_METHODS)}); "
            f"{method} is a parametrization whose free matrix the optimiser steps at its own lr (another lr for it: "
            "a param group of its own, see the README)")


def check_ns_steps(ns_steps) -> None:
    """Refuse an ``ns_steps`` (``update_rule_iters``) that is not an integer >= 1 (2.5 or True
    would be truncated to another count without a word)."""
    if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 1:
        raise ValueError(f"ns_steps (update_rule_iters) must be an integer >= 1; got {ns_steps!r}")


def check_special(special) -> None:
    """Refuse a ``special`` that is not a bool (``bool("no")`` would be True)."""
    if not isinstance(special, bool):
        raise ValueError(f"special must be True or False; got {special!r}")


def orthogonal_(
    module: nn.Module,
    name: str = "weight",
    method: str | None = None,
    init: str | None = "identity",
    *,
    orthogonal_map: str | None = None,
    special: bool = True,
    lr_scale: float = 1.0,
    ns_steps: int | None = None,
    generator: torch.Generator | None = None,
    update_rule: str | None = None,
    update_rule_iters: int | None = None,
) -> nn.Module:
    """Constrain the square parameter ``module.<name>`` to O(n); returns ``module``.

    ``method`` (or torch's ``orthogonal_map``, or the original ``update_rule``): one of
    ``ORTH_METHODS``, default ``steepest``. ``init``: ``identity``, ``haar`` or None (keep
    the current weight, projected onto O(n) by its polar factor). ``lr_scale`` and
    ``ns_steps`` (``update_rule_iters``) tune a retracted method. Train with
    ``orthogonal_skip_connections.optim.optimizer(model, ...)``.
    """
    check_module("orthogonal_", module, "the module that holds the parameter (an nn.Module), then its name")
    method = resolve_method(method, orthogonal_map, update_rule)
    check_lr_scale(method, lr_scale)
    if ns_steps is not None and update_rule_iters is not None and ns_steps != update_rule_iters:
        raise ValueError(f"ns_steps={ns_steps} and update_rule_iters={update_rule_iters} disagree")
    ns = ns_steps if ns_steps is not None else update_rule_iters if update_rule_iters is not None else 100
    check_ns_steps(ns)
    check_special(special)
    if parametrize.is_parametrized(module, name):
        raise ValueError(f"{type(module).__name__}.{name} is already parametrized (torch.nn.utils.parametrize); "
                         "orthogonal_ needs a plain nn.Parameter")
    W = getattr(module, name, None)
    if W is None and name not in module._parameters:
        raise ValueError(f"{type(module).__name__} has no parameter {name!r}; its parameters: "
                         f"{', '.join(n for n, _ in module.named_parameters(recurse=False)) or 'none'}")
    if not isinstance(W, nn.Parameter):
        raise ValueError(f"{type(module).__name__}.{name} must be an nn.Parameter; got {type(W).__name__}")
    spec = retraction_of(W) or recorded_retraction(module, name)
    if spec is not None:  # a second call would reset W, or leave a parametrized W marked as retracted
        raise ValueError(f"{type(module).__name__}.{name} is already kept orthogonal ({spec.method}); "
                         "orthogonal_ constrains a weight once")
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"{type(module).__name__}.{name} must be a square matrix; got shape {tuple(W.shape)}")
    if not W.is_floating_point():
        raise TypeError(f"{type(module).__name__}.{name} must be a floating-point matrix; got {W.dtype}")
    with torch.no_grad():
        if init is None:
            W0 = orth.polar(W.detach().double()).to(W.dtype)
        else:
            W0 = initial_orthogonal(W.shape[0], init, special, generator, W.dtype, W.device)
        W.copy_(W0)
    if method in orth.PARAMETRIZED_METHODS:
        # W = B phi(A) with B = W0 and A = 0 at the start (torch's trivialization), registered
        # as torch.nn.utils.parametrizations.orthogonal does
        orth_map = getattr(parametrizations._OrthMaps, orth.TORCH_MAPS[method])
        parametrize.register_parametrization(module, name, OrthogonalMap(W, orth_map, use_trivialization=True),
                                             unsafe=True)
    else:
        mark_retracted(W, Retraction(method, float(lr_scale), ns), module, name)
    return module
