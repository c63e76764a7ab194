"""Layer 3, optim: one optimiser for every loop, with the retraction inside its ``step()``.

    opt = optimizer(model, torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4)

returns an instance of a subclass of the given torch optimiser class (``isinstance(opt,
torch.optim.SGD)`` holds) whose param groups are

1. ``decay``: weight matrices and convolution kernels, with ``weight_decay``;
2. ``no_decay``: norms, biases, scalars (1-D and 0-D; decayed too with
   ``decay_norms_and_biases``) and the free parameters of parametrized orthogonal
   weights (``cayley``/``exp``/``householder``: decay would pull W = B phi(A) towards B,
   and shrink the +-1 diagonal whose signs the Householder map reads), and the parameters a
   module names in its ``no_weight_decay()`` (timm's convention: a ViT's position embedding
   and class token, which are neither matrices nor kernels, decayed towards 0);
3. ``retracted`` (one group per retraction method, ``lr_scale`` and ``ns_steps``): the
   matrices marked by :func:`~orthogonal_skip_connections.skips.orthogonal_` with a
   retracted method. ``step()`` first runs the wrapped optimiser on groups 1-2, then moves
   every retracted matrix on O(n) with step size ``group["lr"] * group["lr_scale"]``, so
   any ``torch.optim.lr_scheduler`` drives it like any other group; no weight decay.

Momentum of the retraction (chosen to match the original project's upkeep): a heavy-ball
buffer of the Euclidean gradient, m <- mu m + G (m = G on the first step), and the
retraction moves W along -m. ``mu`` is the group's ``retraction_momentum``, fixed at
construction (a scheduler that cycles ``momentum`` or ``betas``, as ``OneCycleLR`` does, moves
the wrapped optimiser's, not this one). Two rules set it:

- :func:`optimizer` (and the teacher-student loop, which calls it): the
  ``retraction_momentum`` argument if given, else the optimiser's ``momentum`` (SGD),
  else its first beta (Adam family), else 0 (as passed, else the class's default);
- :func:`build_optimizer` (the classifier and small-model loops, from an
  :class:`OptimConfig`): ``cfg.retraction_momentum`` if set, else ``cfg.momentum``,
  whatever the optimiser (under Adam too, not its first beta).

Heavy-ball on the Euclidean gradient keeps the buffer in one fixed coordinate system; the
retraction itself projects the step onto the tangent space (``svd``/``qr``/``newton_schulz``)
or takes the spectral-norm steepest step (``steepest``), see
:func:`~orthogonal_skip_connections.maths.orthogonal.retract`.

Adam's normalisation for the retraction (``retraction_adaptive=True``, Adam-family optimisers
only): instead of the heavy-ball buffer, Adam's two moments of the Riemannian gradient in the
Lie algebra, Omega = skew(W^T G) in so(n) (left-trivialised: the tangent vector is W Omega),
m <- b1 m + (1 - b1) Omega, v <- b2 v + (1 - b2) Omega * Omega (elementwise), and the step
W Omega_hat with Omega_hat = m_hat / (sqrt(v_hat) + eps), bias-corrected as Adam's (Kingma & Ba
2015), with the group's ``betas`` and ``eps``. m and Omega_hat stay skew (v is symmetric), so
W Omega_hat is a tangent vector that every retraction takes as it is. It is what Adam does to a
parametrized method's free matrix (W = B phi(A), Adam on A; Lezcano-Casado 2019), with the
base moved to the current W at every step, and the moments kept in so(n) (the
left-trivialised frame, as Kong, Wang & Tao 2023 for Adam on the Stiefel manifold). Each
matrix's steps are counted in ``opt.state`` for the bias correction. Without it, under Adam
the gradient-sized retractions (``svd``, ``qr``, ``newton_schulz``) step by lr x |G| and at
Adam's learning rates barely move. ``compile_retraction`` compiles it too (the bias
corrections enter as device tensors).

Matrices of one group, shape, dtype and device are stacked and retracted as one batch. On CUDA the
retractions use matrix products only (``retraction_impl="auto"``, see
:data:`~orthogonal_skip_connections.maths.orthogonal.RETRACTION_IMPLS`): no batched SVD, and
nothing read back to the host inside ``step()``. The
buffers live in ``opt.state`` like any optimiser state, so one ``state_dict()`` holds
everything. When a step is skipped (the loops skip ``opt.step()`` on non-finite
gradients) both halves are skipped. A step refused for a negative learning rate, or for a
non-finite gradient of a retracted matrix where the retraction factors (the CPU default:
:class:`~orthogonal_skip_connections.maths.orthogonal.NonFiniteError`), raises before either
half has moved anything, state included, so that a caller who catches it can go on. (A
finite gradient whose step overflows, lr x gradient past the float range, raises from the
retraction itself, after the other parameters and the momentum buffers moved.) A
matrix whose ``grad`` is None (it took no part in
the loss since ``zero_grad()``) is not moved and its buffer is kept, as torch's optimisers
treat any parameter without a gradient. With the wrapped class's ``maximize=True`` the
retraction ascends too.

Also here: the learning-rate schedule every loop uses (:func:`lr_factor`,
:func:`lr_scheduler`, a :class:`StepSchedule` that moves on over skipped steps), described by
:class:`OptimConfig`.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _Orthogonal as _TorchOrthogonal  # ours subclass it

from .maths import orthogonal as orth
from .skips.constraint import retracted_parameters, retraction_among

__all__ = [
    "optimizer",
    "RetractingOptimizer",
    "param_groups",
    "OptimConfig",
    "OPTIMIZERS",
    "SCHEDULES",
    "build_optimizer",
    "lr_factor",
    "lr_scheduler",
    "StepSchedule",
]

OPTIMIZERS = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
SCHEDULES = ("cosine", "step", "constant")


def _orthogonal_parametrized(model: nn.Module) -> set[int]:
    """ids of the free parameters behind torch ``orthogonal`` parametrizations."""
    ids = set()
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for plist in module.parametrizations.values():
            if any(isinstance(p, _TorchOrthogonal) for p in plist):
                ids.update(id(p) for p in plist.parameters())
    return ids


def _named_no_decay(model: nn.Module) -> set[int]:
    """ids of the parameters that a module of ``model`` names in its ``no_weight_decay()``
    (names of its own parameters, as timm's models give them)."""
    ids = set()
    for module in model.modules():
        names = getattr(module, "no_weight_decay", None)
        if callable(names):
            for name in names():
                p = getattr(module, name, None)
                if isinstance(p, nn.Parameter):
                    ids.add(id(p))
    return ids


def param_groups(
    model: nn.Module,
    weight_decay: float = 0.0,
    decay_norms_and_biases: bool = False,
    batch_dims: int = 0,
    retraction_momentum: float | None = None,
    retraction_impl: str | None = None,
    retraction_adaptive: bool | None = None,
) -> list[dict]:
    """The param groups described in the module docstring (empty groups left out).
    A retraction setting left None is left out of the retracted groups: the optimiser they
    are given to fills it in (:meth:`RetractingOptimizer.add_param_group`), so that a part
    added to ``osc.optimizer``'s optimiser later is retracted as the rest.

    ``batch_dims``: leading axes that stack copies of a model (1 for the seed-stacked
    models, whose bias is (S, out)); a parameter is a weight matrix when
    ``p.ndim - batch_dims >= 2``. ``retraction_impl``: how the retractions compute their
    projection (:data:`~orthogonal_skip_connections.maths.orthogonal.RETRACTION_IMPLS`;
    ``auto``: products only on CUDA, SVD/QR on the CPU). ``retraction_adaptive``: Adam's
    moments in so(n) instead of the heavy-ball buffer (module docstring; the optimiser
    must carry ``betas`` and ``eps``, as the Adam family does)."""
    _check_weight_decay(weight_decay)
    if isinstance(batch_dims, bool) or not isinstance(batch_dims, int) or batch_dims < 0:
        raise ValueError(f"batch_dims must be an integer >= 0; got {batch_dims!r}")
    settings = {k: v for k, v in (("retraction_momentum", retraction_momentum), ("retraction_impl", retraction_impl),
                                  ("retraction_adaptive", retraction_adaptive)) if v is not None}
    _check_retraction_settings(settings)
    exempt = _orthogonal_parametrized(model) | _named_no_decay(model)  # never decayed, whatever their shape
    decay, no_decay, retracted = [], [], defaultdict(list)
    specs = {id(p): spec for p, spec in retracted_parameters(model)}
    seen = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        spec = specs.get(id(p))
        if spec is not None:
            retracted[spec].append(p)
        elif id(p) not in exempt and (p.ndim - batch_dims >= 2 or decay_norms_and_biases):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    for spec, params in retracted.items():
        groups.append({"params": params, "weight_decay": 0.0, "name": f"retracted_{spec.method}",
                       "retraction": spec.method, "lr_scale": spec.lr_scale, "ns_steps": spec.ns_steps, **settings})
    return [g for g in groups if g["params"]]


# a retracted group's settings, and what they are when neither the group nor its optimiser sets them
RETRACTION_SETTINGS = {"retraction_momentum": 0.0, "retraction_impl": "auto", "retraction_adaptive": False}


def _check_weight_decay(weight_decay) -> None:
    if isinstance(weight_decay, bool) or not (isinstance(weight_decay, (int, float)) and 0 <= weight_decay < math.inf):
        raise ValueError(f"weight_decay must be a finite number >= 0; got {weight_decay!r}")


def _check_retraction_settings(settings: dict) -> None:
    """ValueError for a retraction setting out of range (an unknown impl: now, not at the first step)."""
    if "retraction_impl" in settings:
        orth.resolve_impl(settings["retraction_impl"], "cpu")
    mu = settings.get("retraction_momentum", 0.0)
    if isinstance(mu, bool) or not (isinstance(mu, (int, float)) and 0.0 <= mu < 1.0):
        raise ValueError(f"retraction_momentum must be in [0, 1); got {mu!r}")
    if not isinstance(settings.get("retraction_adaptive", False), bool):
        raise ValueError(f"retraction_adaptive must be true or false; got {settings['retraction_adaptive']!r}")


class RetractingOptimizer:
    """Mixin placed before a torch optimiser class (see :func:`optimizer`): groups with a
    ``retraction`` key are stepped on O(n) after the wrapped optimiser's own step."""

    _osc_retracting = True

    def _split(self) -> tuple[list[dict], list[dict]]:
        """(the wrapped optimiser's groups, the retracted groups), cached: found again only
        when ``param_groups`` is replaced (``load_state_dict``) or grows (``add_param_group``)."""
        groups = self.param_groups
        cached = self.__dict__.get("_osc_split")
        if cached is None or cached[0] is not groups or cached[1] != len(groups):
            euclidean = [g for g in groups if "retraction" not in g]
            retracted = [g for g in groups if "retraction" in g]
            cached = (groups, len(groups), euclidean, retracted)
            self.__dict__["_osc_split"] = cached
        return cached[2], cached[3]

    def add_param_group(self, param_group: dict) -> None:
        """torch's ``add_param_group``; a group without a ``retraction`` key must hold no
        retracted matrix (the wrapped optimiser would step it off O(n)). A module's groups,
        retracted ones included: ``for g in param_groups(module): opt.add_param_group(g)``.
        A retracted group takes the retraction settings it lacks from the optimiser's
        (``osc.optimizer``'s ``retraction_momentum``, ``retraction_impl``, ``retraction_adaptive``),
        else :data:`RETRACTION_SETTINGS`."""
        own = set(param_group)
        if "retraction" in param_group:
            for key, fallback in RETRACTION_SETTINGS.items():
                param_group.setdefault(key, self.defaults.get(key, fallback))
            _check_retraction_settings(param_group)
        else:
            params = param_group["params"]
            param_group["params"] = params = [params] if isinstance(params, Tensor) else list(params)
            spec = retraction_among(params)
            if spec is not None:
                raise TypeError(
                    f"add_param_group got a retracted orthogonal matrix ({spec.method}) in a group without a "
                    "retraction, which would step it off O(n); add the groups of "
                    "orthogonal_skip_connections.optim.param_groups(module) instead")
        super().add_param_group(param_group)
        if "retraction" not in param_group:  # torch filled in the optimiser's retraction settings: not this group's
            for key in RETRACTION_SETTINGS.keys() - own:
                param_group.pop(key, None)

    def __reduce_ex__(self, protocol):
        """Pickled by the class it wraps: the subclass is made at run time, so pickle cannot
        find it by name (``torch.save(opt)`` raised PicklingError). The state is torch's."""
        wrapped = type(self).__dict__.get("_osc_wrapped")  # a class of one's own pickles as usual
        if wrapped is None:
            return super().__reduce_ex__(protocol)
        return _new_retracting, (wrapped,), self.__getstate__()

    def __setstate__(self, state: dict) -> None:
        """``load_state_dict`` (and unpickling) end here. The wrapped class's own
        ``__setstate__`` reads its per-parameter state (Adam, RMSprop, Adagrad, ...: each
        state's ``step``) over every group; a retracted matrix's state is the retraction's
        own (``retraction_buffer``, or with ``retraction_adaptive`` ``retraction_step``,
        ``retraction_exp_avg`` and ``retraction_exp_avg_sq``), with no ``step``, so it is
        held back from that reading and put back after."""
        retracted = {id(p) for g in state.get("param_groups", ()) if "retraction" in g for p in g["params"]}
        own = state.get("state", {})
        held = {p: own.pop(p) for p in list(own) if id(p) in retracted}
        super().__setstate__(state)
        self.state.update(held)

    def _wrapped_step(self, closure=None):
        """The wrapped class's own ``step``. torch wraps a class's ``step`` in its profiling
        and hook-calling wrapper once a plain instance of it exists; that wrapper already
        ran around this ``step``, so it is unwrapped here (hooks run once, not twice)."""
        fn = super().step
        if getattr(fn, "hooked", False):
            return fn.__wrapped__(self, closure)
        return fn(closure)

    def step(self, closure=None):
        euclidean, retracted = self._split()
        if not retracted:  # nothing to retract: the wrapped optimiser's step, as it is
            return self._wrapped_step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_retracted(retracted)
        groups = self.param_groups
        if euclidean:
            self.param_groups = euclidean  # the wrapped optimiser sees only its own groups
            try:
                self._wrapped_step()
            finally:
                self.param_groups = groups
        on_cpu = any(p.device.type == "cpu" for g in retracted for p in g["params"])
        # small matrices: one thread, see orthogonal.one_thread
        with torch.no_grad(), orth.one_thread(on_cpu):
            for group in retracted:
                try:
                    self._retract(group)
                except orth.NonFiniteError as err:
                    raise orth.NonFiniteError(
                        f"param group {group.get('name', group['retraction'])!r}: {err}: a gradient (or momentum) of "
                        "its orthogonal matrices is not finite, as when the loss diverges; skip opt.step() on a "
                        "non-finite gradient, as the library's training loops do") from None
        return loss

    def _check_retracted(self, retracted: list[dict]) -> None:
        """What a retracted group's step would refuse, refused before either half of the step
        moves anything: a negative learning rate, and a non-finite gradient where the
        retraction factors (one host read for all groups; the products-only path, CUDA's,
        reads nothing back and is not checked here: the training loops check every step)."""
        flags = []  # (group, all its factored gradients finite: a device bool)
        for group in retracted:
            lr = group["lr"]
            if float(lr) < 0:
                raise ValueError(f"learning rate must be >= 0; got {float(lr)}")
            impl = group.get("retraction_impl", "auto")  # older checkpoints lack the key
            grads = [p.grad for p in group["params"]
                     if p.grad is not None and orth.resolve_impl(impl, p.device) == "factor"]
            by_device = defaultdict(list)
            for g in grads:
                by_device[g.device].append(g.reshape(-1))
            for flat in by_device.values():  # (several devices: model parallel)
                flags.append((group, torch.isfinite(torch.cat(flat)).all().cpu()))
        if flags and not bool(torch.stack([ok for _, ok in flags]).all()):
            group = next(g for g, ok in flags if not bool(ok))
            raise orth.NonFiniteError(
                f"param group {group.get('name', group['retraction'])!r}: a gradient of its orthogonal matrices is "
                "not finite, as when the loss diverges; nothing was stepped. Skip opt.step() on a non-finite "
                "gradient, as the library's training loops do")

    def compile_retraction(self, backend: str = "inductor", mode: str | None = None):
        """Run the retraction of every group that retracts from matrix products only
        (``retraction_impl`` ``matmul``, the CUDA default) through ``torch.compile``: one
        graph per group, every shape's stack in it (the stacking, the momentum buffer, the
        retraction and the copy back). Its host calls are the retraction's GEMMs and a few
        fused kernels instead of the several hundred calls of an eager retraction (on a GPU
        the eager step is bound by those calls; resnet20's steepest: 788 -> 369 aten calls,
        106 of them GEMMs). The step size
        enters as a device tensor, so a changing learning rate does not compile again;
        ``steepest``'s polar iteration is sized for a power-of-two bound on it (at least the
        schedule's ``initial_lr``), so its result agrees with the eager step to round-off.
        Groups that factor (SVD, QR: the CPU default) read the host on purpose and stay
        eager. ``mode`` as in ``torch.compile`` (``reduce-overhead``: CUDA graphs; the
        parameters and buffers are marked as static addresses). Returns the optimiser."""
        self.__dict__["_osc_compiled"] = torch.compile(_retract_stacks, backend=backend, mode=mode, dynamic=False)
        self.__dict__["_osc_compile_mode"] = mode
        return self

    def _retract(self, group: dict) -> None:
        lr = group["lr"]
        if isinstance(lr, Tensor):
            lr = float(lr)
        eta = lr * group["lr_scale"]  # (lr >= 0: _check_retracted)
        mu = group["retraction_momentum"]
        impl_name = group.get("retraction_impl", "auto")  # older checkpoints lack the key
        adaptive = group.get("retraction_adaptive", False)
        adam = (*group["betas"], group["eps"]) if adaptive else None
        # one stack per (shape, dtype, device): a model split over devices (pipeline or model
        # parallel) or holding skips of two precisions retracts each part where it lives; with
        # Adam's moments also per step count (one bias correction per stack)
        by_kind = defaultdict(list)
        for p in group["params"]:
            if p.grad is not None:  # as torch's optimisers: no gradient, no step (and no momentum)
                step = self.state[p].get("retraction_step", 0) if adaptive else 0
                by_kind[(p.dtype, p.device, tuple(p.shape), step)].append(p)
        by_place = defaultdict(list)  # (dtype, device) -> its stacks: (params, grads, momentum buffers, moments)
        for (dtype, device, _shape, _step), params in by_kind.items():
            grads = [p.grad.neg() if group.get("maximize", False) else p.grad for p in params]  # ascent
            bufs = moments = None
            if adaptive:  # Adam in so(n): the step W Omega_hat, no heavy-ball buffer
                moments = self._lie_adam_moments(params, adam)
            elif mu > 0:  # m <- mu m + G, m = G on the first step (from m = 0: the same numbers)
                states = [self.state[p] for p in params]
                for st, p in zip(states, params):
                    if "retraction_buffer" not in st:
                        st["retraction_buffer"] = torch.zeros_like(p)
                bufs = [st["retraction_buffer"] for st in states]
            by_place[(dtype, device)].append((params, grads, bufs, moments))
        for (_dtype, device), stacks in by_place.items():
            impl = orth.resolve_impl(impl_name, device)
            compiled = self.__dict__.get("_osc_compiled") if impl == "matmul" else None
            if compiled is None:
                _retract_stacks(stacks, mu, group["retraction"], eta, group["ns_steps"], impl, adam=adam)
            else:
                self._retract_compiled(compiled, stacks, group, eta, lr, mu, impl, adam)

    def _retract_compiled(self, compiled, stacks: list, group: dict, eta: float, lr: float, mu: float,
                          impl: str, adam: tuple | None) -> None:
        """The compiled retraction of one (dtype, device)'s stacks (see :meth:`compile_retraction`):
        the step size and Adam's bias corrections enter as device tensors (no recompilation as
        they change)."""
        p0 = stacks[0][0][0]
        eta_t = self._scalar_tensor(p0, "eta", eta)
        if adam is not None:
            stacks = [(params, grads, bufs, (m, v, self._scalar_tensor(p0, ("bc1", i), bc1),
                                             self._scalar_tensor(p0, ("bc2", i), bc2)))
                      for i, (params, grads, bufs, (m, v, bc1, bc2)) in enumerate(stacks)]
        eta_max = None
        if group["retraction"] == "steepest":  # a bound that moves rarely: few compilations
            eta_max = 2.0 ** math.ceil(math.log2(max(eta, group.get("initial_lr", lr) * group["lr_scale"],
                                                     2.0 ** -20)))
        if self.__dict__.get("_osc_compile_mode") == "reduce-overhead":
            for params, _grads, bufs, moments in stacks:
                for t in params + (bufs or []) + (moments[0] + moments[1] if moments else []):
                    torch._dynamo.mark_static_address(t, guard=False)  # 2.11+ default; 2.4 guarded
        with orth._ieee_matmul(eta_t.device):
            compiled(stacks, mu, group["retraction"], eta_t, group["ns_steps"], impl, eta_max, adam)

    def _lie_adam_moments(self, params: list[Tensor], adam: tuple) -> tuple:
        """(first moments, second moments, 1 - b1^t, 1 - b2^t) of one stack whose matrices
        have each taken t - 1 steps: the state of Adam in so(n) (module docstring), the step
        counted here; the moments themselves are updated by :func:`_retract_stacks`."""
        beta1, beta2, _eps = adam
        states = [self.state[p] for p in params]
        for st, p in zip(states, params):
            if "retraction_exp_avg" not in st:
                st["retraction_step"] = 0
                st["retraction_exp_avg"] = torch.zeros_like(p)
                st["retraction_exp_avg_sq"] = torch.zeros_like(p)
            st["retraction_step"] += 1
        t = states[0]["retraction_step"]  # one count per stack (see _retract)
        return ([st["retraction_exp_avg"] for st in states], [st["retraction_exp_avg_sq"] for st in states],
                1 - beta1 ** t, 1 - beta2 ** t)

    def _scalar_tensor(self, p: Tensor, slot, value: float) -> Tensor:
        """A 0-d tensor of p's dtype and device holding ``value`` (filled by a kernel there, no
        transfer), one per ``slot``: carries a number that changes every step into compiled
        steps."""
        held = self.__dict__.setdefault("_osc_scalars", {})
        key = (p.dtype, p.device, slot)
        if key not in held:
            held[key] = torch.zeros((), dtype=p.dtype, device=p.device)
        return held[key].fill_(value)


def _retract_stacks(stacks: list[tuple], mu: float, method: str, eta: float | Tensor, ns_steps: int, impl: str,
                    eta_max: float | None = None, adam: tuple | None = None) -> None:
    """One retraction of a group, in place, one (B, n, n) stack per shape: for each
    ``(params, grads, bufs, moments)`` of ``stacks``, either (``moments``, with ``adam`` =
    (b1, b2, eps)) Adam's moments of Omega = skew(W^T G) in so(n) and the direction
    W Omega_hat, or m <- mu m + G into the momentum buffers ``bufs`` (None: no momentum);
    then W <- retract(W, that direction)."""
    for params, grads, bufs, moments in stacks:
        W = torch.stack([p.detach() for p in params])  # (B, ..., n, n)
        G = torch.stack(grads)
        if moments is not None:  # Adam in so(n) (optim's module docstring)
            m_bufs, v_bufs, bc1, bc2 = moments
            beta1, beta2, eps = adam
            Omega = orth.skew(W.mT @ G)  # the Riemannian gradient, left-trivialised
            m = torch.stack(m_bufs).mul_(beta1).add_(Omega, alpha=1 - beta1)
            v = torch.stack(v_bufs).mul_(beta2).addcmul_(Omega, Omega, value=1 - beta2)
            for b, x in zip(m_bufs + v_bufs, m.unbind(0) + v.unbind(0)):
                b.copy_(x)
            G = W @ ((m / bc1) / ((v / bc2).sqrt() + eps))  # W Omega_hat: Omega_hat is skew
        elif bufs is not None:
            G = torch.stack(bufs).mul_(mu).add_(G)
            for b, g in zip(bufs, G.unbind(0)):
                b.copy_(g)
        W_new = orth.retract(method, W, G, eta, ns_steps, impl, eta_max=eta_max)
        for p, w in zip(params, W_new.unbind(0)):
            p.detach().copy_(w)


_CLASSES: dict[type, type] = {}


def _retracting_class(cls: type) -> type:
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        got = (f"an instance of {type(cls).__name__}: pass the class itself" if isinstance(cls, torch.optim.Optimizer)
               else repr(cls))
        raise TypeError(f"optimizer_class must be a torch.optim.Optimizer subclass; got {got}")
    if issubclass(cls, RetractingOptimizer):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Retracting{cls.__name__}", (RetractingOptimizer, cls),
                             {"__module__": __name__, "_osc_wrapped": cls})
    return _CLASSES[cls]


def _new_retracting(cls: type) -> torch.optim.Optimizer:
    """An empty instance of the retracting subclass of ``cls``, for unpickling (see
    :meth:`RetractingOptimizer.__reduce_ex__`)."""
    retracting = _retracting_class(cls)
    return retracting.__new__(retracting)


def optimizer(
    model: nn.Module,
    optimizer_class: type = torch.optim.SGD,
    *,
    lr: float | Tensor,
    weight_decay: float = 0.0,
    decay_norms_and_biases: bool = False,
    retraction_momentum: float | None = None,
    retraction_impl: str = "auto",
    retraction_adaptive: bool = False,
    batch_dims: int = 0,
    **kwargs,
) -> torch.optim.Optimizer:
    """An optimiser of ``optimizer_class`` (any torch optimiser: SGD, AdamW, ...) over
    every trainable parameter of ``model``, retracted orthogonal matrices included.

    ``kwargs`` go to ``optimizer_class`` (``momentum``, ``nesterov``, ``betas``, ...).
    See the module docstring for the groups and the retraction's momentum rule;
    ``retraction_impl`` as in :func:`param_groups`; ``retraction_adaptive`` (Adam family):
    Adam's moments in so(n) for the retraction instead of the heavy-ball buffer."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimizer takes the model (an nn.Module), whose param groups it makes itself; got "
                        f"{type(model).__name__} (another lr for a part: opt.add_param_group per group of "
                        "orthogonal_skip_connections.optim.param_groups(part), with its own lr)")
    value = float(lr) if isinstance(lr, Tensor) and lr.numel() == 1 and lr.is_floating_point() else lr
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"lr must be a finite number >= 0 (a float or, as torch allows, a one-element tensor); "
                         f"got {lr!r}")
    _check_weight_decay(weight_decay)
    _retracting_class(optimizer_class)  # refuses what is not an optimiser class first
    if retraction_momentum is None:
        retraction_momentum = kwargs.get("momentum", kwargs.get("betas", (0.0,))[0])
        given = "momentum" if "momentum" in kwargs else "betas[0]" if "betas" in kwargs else None
        if given is not None and not (isinstance(retraction_momentum, (int, float)) and 0 <= retraction_momentum < 1):
            raise ValueError(f"{given} must be in [0, 1) (the retraction's momentum follows it unless "
                             f"retraction_momentum is given); got {retraction_momentum!r}")
        if given is None:  # the class's own default
            import inspect

            defaults = inspect.signature(optimizer_class.__init__).parameters
            if "momentum" in defaults and isinstance(defaults["momentum"].default, (int, float)):
                retraction_momentum = defaults["momentum"].default
            elif "betas" in defaults and isinstance(defaults["betas"].default, tuple):
                retraction_momentum = defaults["betas"].default[0]
    groups = param_groups(model, weight_decay, decay_norms_and_biases, batch_dims, retraction_momentum,
                          retraction_impl, retraction_adaptive)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    opt = _retracting_class(optimizer_class)(groups, lr=lr, **kwargs)
    # for the groups added later (add_param_group), as torch's defaults are
    opt.defaults.update(retraction_momentum=float(retraction_momentum), retraction_impl=retraction_impl,
                        retraction_adaptive=bool(retraction_adaptive))
    if retraction_adaptive and not ("betas" in opt.defaults and "eps" in opt.defaults):
        raise ValueError(f"retraction_adaptive takes Adam's betas and eps from the optimiser; "
                         f"{optimizer_class.__name__} has none (use Adam, AdamW, NAdam, RAdam, Adamax, ...)")
    return opt


# --------------------------------------------------------------------------- configured


@dataclass
class OptimConfig:
    """An optimiser and its schedule as the loops and apps configure them."""

    name: str = "sgd"  # sgd | adamw | adam
    lr: float = 0.1
    momentum: float = 0.9  # sgd; also the retraction's momentum unless retraction_momentum is set
    nesterov: bool = False  # sgd
    weight_decay: float = 5e-4
    decay_norms_and_biases: bool = False
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    retraction_momentum: float | None = None  # None: momentum
    retraction_adaptive: bool = False  # adam, adamw: Adam's moments in so(n) for the retraction
    schedule: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 1.0
    milestones: list[int] = field(default_factory=list)  # step schedule, in epochs
    gamma: float = 0.1  # step schedule factor

    def problems(self) -> list[str]:
        """What is wrong with this configuration, one line each (empty: nothing)."""
        checks = [
            (self.name in OPTIMIZERS, f"unknown optimizer {self.name!r}; allowed: {', '.join(OPTIMIZERS)}"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr must be > 0; got {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1); got {self.momentum}"),
            (0 <= self.weight_decay < math.inf, f"weight_decay must be a finite number >= 0; got {self.weight_decay}"),
            (self.retraction_momentum is None or 0 <= self.retraction_momentum < 1,
             f"retraction_momentum must be in [0, 1); got {self.retraction_momentum}"),
            (not self.retraction_adaptive or self.name in ("adam", "adamw"),
             f"retraction_adaptive needs optimizer adam or adamw (its betas and eps); got {self.name!r}"),
            (not self.nesterov or (self.name == "sgd" and self.momentum > 0),  # else it was dropped unsaid
             f"nesterov needs the sgd optimizer with momentum > 0; got optimizer {self.name!r}, momentum {self.momentum}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; allowed: {', '.join(SCHEDULES)}"),
            (0 <= self.warmup_epochs < math.inf,
             f"warmup_epochs must be a finite number >= 0; got {self.warmup_epochs}"),
            (0 < self.gamma <= 1, f"gamma must be in (0, 1]; got {self.gamma}"),
            (all(m >= 0 for m in self.milestones), f"milestones must be epochs >= 0; got {self.milestones}"),
        ]
        return [message for ok, message in checks if not ok]


def build_optimizer(model: nn.Module, cfg: OptimConfig, batch_dims: int = 0) -> torch.optim.Optimizer:
    """:func:`optimizer` from an :class:`OptimConfig`. The retraction's momentum is
    ``cfg.retraction_momentum``, else ``cfg.momentum`` (whatever the optimiser)."""
    mu = cfg.momentum if cfg.retraction_momentum is None else cfg.retraction_momentum
    common = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, decay_norms_and_biases=cfg.decay_norms_and_biases,
                  retraction_momentum=mu, batch_dims=batch_dims, foreach=True)
    if cfg.name == "sgd":
        return optimizer(model, torch.optim.SGD, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                         **common)
    return optimizer(model, OPTIMIZERS[cfg.name], betas=tuple(cfg.betas), retraction_adaptive=cfg.retraction_adaptive,
                     **common)


def lr_factor(step: int, steps_per_epoch: int, epochs: int, cfg: OptimConfig) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    Linear warm-up over ``warmup_epochs`` starting at 1/warmup_steps (never 0 on the first
    step), then cosine to 0 over the remaining steps, step decay by ``gamma`` at each
    milestone epoch, or constant."""
    total = epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if cfg.schedule == "step":
        epoch = step // steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    return 1.0


class StepSchedule(torch.optim.lr_scheduler.LambdaLR):
    """A ``LambdaLR`` that moves on over skipped optimiser steps.

    The loops step the schedule once per step, the skipped ones included
    (``sched.step(skipped=True)``). torch warns "Detected call of `lr_scheduler.step()`
    before `optimizer.step()`" when the very first step was skipped; that order is
    deliberate here, so that one warning is dropped for a step the loop says it skipped.
    Every other warning, and that one for a step not said to be skipped (a loop that
    forgot ``opt.step()``), is shown. Same state_dict as ``LambdaLR``."""

    def step(self, epoch: int | None = None, skipped: bool = False) -> None:
        if not skipped:
            return super().step(epoch)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before "
                                    r"`optimizer\.step\(\)`", category=UserWarning)
            return super().step(epoch)


def lr_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> StepSchedule:
    """A :class:`StepSchedule` stepped once per optimiser step (skipped ones too) with :func:`lr_factor`."""
    return StepSchedule(opt, lambda k: lr_factor(k, steps_per_epoch, epochs, cfg))
