"""The parametrized orthogonal skips of a model computed together: one batched call per
(map, size, dtype, device) and forward, instead of one call per skip.

A parametrized skip (``cayley``, ``exp``, ``householder``; :mod:`.constraint`) holds
W = B phi(X) as torch's parametrization: ``skip.weight`` computes it from the skip's own X
and B whenever it is read, one skip at a time. The maps accept stacks (``matrix_exp``,
the Cayley solve, the compact WY form of :func:`~..maths.orthogonal.householder_wy`), so
the k skips of one size can share one call: W_1..W_k = stack(B_i) phi(stack(X_i)). Each
W_i is the same matrix as alone (to round-off), and autograd takes each gradient back
through the stack to its own X_i.

:func:`batch_upkeep` (``model``) registers two hooks on the model. Before its forward
they compute the W's of every group of two or more such skips; each skip's forward then
uses its share (:attr:`OrthogonalSkip.shared_weight`); after the forward (also one that
raised) the shares are dropped, so the next forward, a skip or block called on its own,
and ``skip.weight`` compute W as torch's parametrization does. Inside
``torch.nn.utils.parametrize.cached()`` (evaluation) the batched W's go into torch's
cache instead, where the skips find them: computed once per pass, as without batching.
Nothing is stored: state_dicts, checkpoints and the parametrization are those of the
skips alone. One limit follows: ``torch.utils.checkpoint(..., use_reentrant=False)`` around
part of such a model recomputes that part in the backward pass, after the shares were
dropped, so its skips compute W alone there and torch refuses the differing recomputation
(CheckpointError); such a model needs ``batch_upkeep(model, enabled=False)``.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module
from torch.nn.utils import parametrize

from ..maths import orthogonal as orth
from .constraint import OrthogonalMap
from .contract import Skip

__all__ = ["CPU_MAX_N", "batch_upkeep", "is_batching", "shared_groups", "shared_weights"]

# Largest n batched on the CPU. Forward + backward of the W's, 1 thread, torch 2.14, time per
# skip / batched (benchmarks/skip_step_time.py and a sweep of sizes): resnet20's 3 x (16, 32,
# 64) 1.43x (cayley), 1.48x (exp), 1.48x (householder); 2 x 64 1.3-1.4x; 2-3 x 128 1.02-1.08x;
# 2 x 256 0.92-0.99x; all of resnet18's 2 x (64, 128, 256, 512) 0.93-0.96x: a large matrix
# keeps the core busy alone, and the stack is a copy. (The Cayley solve of a stack of n > 128
# runs one matrix at a time anyway: see OrthogonalMap.phi.) On a GPU every size is batched.
CPU_MAX_N = 128


def _group_key(module: nn.Module, cpu_max_n: int | None = CPU_MAX_N):
    """(map, n, dtype, device) of a skip whose W can be computed in a batch, else None: a
    skip that allows it (``shares_upkeep``) with one :class:`OrthogonalMap` (with base) on a
    square real 2-D ``weight``, of n <= ``cpu_max_n`` on the CPU."""
    if not (isinstance(module, Skip) and module.shares_upkeep and parametrize.is_parametrized(module, "weight")):
        return None
    plist = module.parametrizations.weight
    if len(plist) != 1 or not isinstance(plist[0], OrthogonalMap) or getattr(plist[0], "base", None) is None:
        return None
    X = plist.original
    if X.ndim != 2 or not OrthogonalMap.maps_stacks(X):
        return None
    if cpu_max_n is not None and X.device.type == "cpu" and X.shape[-1] > cpu_max_n:
        return None
    return plist[0].orthogonal_map, X.shape[-1], X.dtype, X.device


# The skips a model may batch, found by a walk over its modules, kept until a module or a
# parameter is registered anywhere (torch's global registration hooks; a replaced skip, a new
# parametrization, load_state_dict(assign=True) are such registrations): the walk cost
# 0.3 ms per forward for resnet20's 131 modules on one CPU thread, and a GPU step waits on
# the host. Keyed weakly by model, so a deep copy or a pickled model carries no stale list;
# each forward still checks every listed skip (_group_key: a removed parametrization, a new
# dtype or device). A skip deleted without a registration (``del``) is still batched, unused,
# until the next registration anywhere.
_generation = [0]
_candidates_of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _registered(*_args) -> None:  # a global registration hook: returns None, changes nothing
    _generation[0] += 1


_module.register_module_module_registration_hook(_registered)
_module.register_module_parameter_registration_hook(_registered)


def _candidates(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that may share their upkeep, in the order of ``modules()``."""
    if torch.compiler.is_compiling():  # traced once into the graph: the walk costs nothing at run time
        return [m for m in model.modules() if _group_key(m, None) is not None]
    cached = _candidates_of.get(model)
    if cached is None or cached[0] != _generation[0]:
        cached = (_generation[0], [m for m in model.modules() if _group_key(m, None) is not None])
        _candidates_of[model] = cached
    return cached[1]


def shared_groups(model: nn.Module, cpu_max_n: int | None = CPU_MAX_N) -> list[list[nn.Module]]:
    """The skips of ``model`` whose W's :func:`batch_upkeep` computes together: lists of two
    or more skips of one (map, size, dtype, device), in the order of ``model.modules()``."""
    groups: dict = {}
    for m in _candidates(model):
        key = _group_key(m, cpu_max_n)
        if key is not None:
            groups.setdefault(key, []).append(m)
    return [g for g in groups.values() if len(g) > 1]


def shared_weights(skips: list[nn.Module]) -> tuple[Tensor, ...]:
    """W_i = B_i phi(X_i) of each skip of one group (see :func:`shared_groups`) in one
    batched call: the same matrices as each ``skip.weight`` (to round-off), differentiable
    with respect to each skip's own X_i. In the weight's precision (autocast off), on one
    thread for CPU matrices (small-matrix work: see ``orthogonal.one_thread``)."""
    plists = [m.parametrizations.weight for m in skips]
    X = torch.stack([p.original for p in plists])  # (k, n, n)
    B = torch.stack([p[0].base for p in plists])
    with torch.autocast(X.device.type, enabled=False), orth.one_thread(X.device.type == "cpu"):
        return (B @ OrthogonalMap.phi(plists[0][0].orthogonal_map, X)).unbind(0)


_GIVEN = "_osc_shares_given"  # on a model, during its forward: the skips its _open gave a share


def _open(model: nn.Module, args) -> None:
    model.__dict__[_GIVEN] = given = []
    groups = shared_groups(model)
    if not groups:
        return
    cache = parametrize._cache if parametrize._cache_enabled else None
    for group in groups:
        if cache is None:
            # a model inside another batching model: the outer one's shares are used as they are
            # (each model's close drops only the shares its own open gave)
            group = [m for m in group if m.shared_weight is None]
        else:  # evaluation under parametrize.cached(): torch's cache holds W for the whole pass
            group = [m for m in group if cache.get((id(m), "weight")) is None]
        if len(group) < 2:
            continue
        for m, W in zip(group, shared_weights(group)):
            if cache is None:
                m.shared_weight = W
                given.append(m)
            else:
                cache[(id(m), "weight")] = W


def _close(model: nn.Module, args, output) -> None:
    # only the skips this model's open gave a share: no walk over the modules (on a GPU, where
    # a step is bound by the host, a walk over resnet20's 131 modules cost 86 us per forward)
    for m in model.__dict__.pop(_GIVEN, ()):
        m.shared_weight = None  # an instance attribute from the start (Skip.__init__): see there


def batch_upkeep(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Make ``model`` compute the W's of its parametrized orthogonal skips in one batched
    call per (map, size, dtype, device) and forward (module docstring), or (``enabled=False``)
    one skip at a time again; returns ``model``. Idempotent. Only a model that has two or more
    such skips of one size (on any device) gets the hooks, so that other models pay nothing:
    call it again after giving a model such skips; skips replaced later are found at the next
    forward."""
    registered = is_batching(model)
    if enabled and not registered and shared_groups(model, cpu_max_n=None):
        model.register_forward_pre_hook(_open)
        model.register_forward_hook(_close, always_call=True)
    elif not enabled and registered:  # found by function (deep copies hold copies of any handle)
        for hooks, fn in ((model._forward_pre_hooks, _open), (model._forward_hooks, _close)):
            for key in [k for k, h in hooks.items() if h is fn]:
                del hooks[key]
                model._forward_hooks_always_called.pop(key, None)
    return model


def is_batching(model: nn.Module) -> bool:
    """Whether :func:`batch_upkeep` is on for ``model``."""
    return any(h is _open for h in model._forward_pre_hooks.values())
