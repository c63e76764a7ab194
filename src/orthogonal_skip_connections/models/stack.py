"""Seed-stacked copies of one model (layer 2): S models of S seeds trained as one.

:class:`SeedStack` holds S copies of one architecture with every parameter and buffer
stacked along a new leading seed axis, ``(S, *shape)`` (``torch.func.stack_module_state``),
and evaluates them with ``torch.func.vmap`` over ``torch.func.functional_call``: the
"model ensembling" recipe of the torch.func documentation. Every skip kind works:
retracted orthogonal matrices are stacked ``(S, n, n)`` and keep their retraction mark
(so :func:`orthogonal_skip_connections.optim.optimizer` with ``batch_dims=1`` steps all
seeds' matrices as one batch), parametrized ones keep their parametrization (its
unconstrained ``original`` and its ``base`` are stacked instead).
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from ..skips.constraint import retracted_parameters

__all__ = ["SeedStack"]


class _Runner(nn.Module):
    """Holds the stacked template as ``model`` and runs ``fn(model, *args)``: lets
    ``functional_call`` (which only calls ``forward``) evaluate any function of the model
    (its logits, its block inputs, a block's branch Jacobians) with one seed's parameters."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable, *args):
        return fn(self.model, *args)


def _set_tensor(root: nn.Module, name: str, value: Tensor, is_param: bool) -> None:
    """Replace parameter/buffer ``name`` (dotted) of ``root`` by ``value`` (any shape).
    A retraction recorded on the module carries over (see ``retracted_parameters``)."""
    *path, leaf = name.split(".")
    module = root
    for part in path:
        module = getattr(module, part)
    if is_param:
        module._parameters[leaf] = nn.Parameter(value)
    else:
        module._buffers[leaf] = value


class SeedStack(nn.Module):
    """S models of one architecture, one per seed, stacked for vectorised training.

    ``SeedStack.build(make_model, seeds)`` calls ``make_model()`` once per seed with torch's
    global RNG seeded by that seed (the caller's RNG state is restored afterwards), so seed s
    starts from the same weights whether it is built alone or beside others.

    Every parameter and buffer of the stored template has shape (S, *shape of one model).
    The template is never called directly; ``stack(X)`` and :meth:`apply` run it with
    ``vmap`` over seeds. The optimiser sees the stacked skips as ordinary skips whose
    matrices have a leading batch axis, which the (..., n, n) maths already handles.
    """

    def __init__(self, models: Sequence[nn.Module], seeds: Sequence[int]):
        super().__init__()
        if len(models) == 0 or len(models) != len(seeds):
            raise ValueError(f"need one model per seed; got {len(models)} models and {len(seeds)} seeds")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct; got {list(seeds)}")
        self.seeds = [int(s) for s in seeds]
        # one unstacked copy, the mould for :meth:`model`
        self._single = [copy.deepcopy(models[0])]  # in a list: not a registered submodule
        params, buffers = stack_module_state(list(models))  # name -> (S, *shape)
        template = copy.deepcopy(models[0])
        for name, value in params.items():
            _set_tensor(template, name, value.detach().clone(), is_param=True)
        for name, value in buffers.items():
            _set_tensor(template, name, value.detach().clone(), is_param=False)
        self.runner = _Runner(template)
        retracted_parameters(template)  # mark the stacked matrices (the guard against plain optimisers)
        self._named = None

    def _apply(self, fn, *args, **kwargs):  # .to(), .double(), ...: tensors may be replaced
        self._named = None
        self._single[0]._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    @classmethod
    def build(cls, make_model: Callable[[], nn.Module], seeds: Sequence[int]) -> "SeedStack":
        models = []
        for seed in seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                models.append(make_model())
        return cls(models, seeds)

    @property
    def template(self) -> nn.Module:
        """The architecture with stacked (S, ...) tensors: for its structure and parameters."""
        return self.runner.model

    def __len__(self) -> int:
        return len(self.seeds)

    def apply(self, fn: Callable, *args, in_dims=None):
        """``fn(model_s, *args_s)`` for every seed s, stacked along a new leading axis.

        ``in_dims``: per argument, 0 if it carries a seed axis (S, ...), None if shared by
        all seeds (default: every argument shared). ``fn`` may return a tensor or a
        tuple/list of tensors. Gradients flow to the stacked parameters."""
        if self._named is None:  # the same tensors every call; rebuilt after .to() (see _apply)
            self._named = (dict(self.runner.named_parameters()), dict(self.runner.named_buffers()))
        params, buffers = self._named
        arg_dims = (None,) * len(args) if in_dims is None else tuple(in_dims)
        if len(arg_dims) != len(args):
            raise ValueError(f"in_dims has {len(arg_dims)} entries for {len(args)} arguments")

        def one_seed(p, b, *a):
            return functional_call(self.runner, (p, b), (fn, *a), tie_weights=False)

        return vmap(one_seed, in_dims=(0, 0, *arg_dims))(params, buffers, *args)

    def forward(self, X: Tensor) -> Tensor:
        """Logits of every seed: X (N, d) shared or (S, N, d) per seed -> (S, N, classes)."""
        return self.apply(lambda m, x: m(x), X, in_dims=(0 if X.ndim == 3 else None,))

    @torch.no_grad()
    def model(self, s: int) -> nn.Module:
        """Seed number s (an index into ``seeds``) as an ordinary, independent module."""
        m = copy.deepcopy(self._single[0])
        state = {k.removeprefix("model."): v[s].clone() for k, v in self.runner.state_dict().items()}
        m.load_state_dict(state)
        return m
