"""The skip contract (the mechanism every kind follows).

- A skip is built for ``channels`` channels; ``skip(x)`` maps ``(N, C)``, ``(N, T, C)``
  (channels last) or ``(N, C, H, W)`` (channels first) to the skip path of a residual
  block ``y = skip(x) + f(x)``, and refuses any other channel count.
- A C x C matrix is a 2-D tensor applied to feature maps as a 1x1 convolution
  (``F.conv2d(x, W[:, :, None, None])``, or for channels_last input the same product as
  one GEMM over the channels of a permuted view): no copies in either memory format.
- ``skip.weight`` is the current C x C matrix for every kind that carries one
  (orthogonal for the constrained kinds) and ``None`` otherwise.
- ``skip.upkeep`` says how a constraint is kept: ``"none"``, ``"parametrized"``
  (orthogonal by construction) or ``"retracted"`` (moved on O(n) inside the step of
  :func:`orthogonal_skip_connections.optim.optimizer`); see :mod:`.constraint`.
- ``skip.has_path`` is False when there is no skip path at all (``zero``), so a block
  need not compute its shortcut.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Skip", "apply_matrix", "apply_matrix_add", "iter_skips", "observed"]


def _channels_last(x: Tensor) -> bool:
    """Whether ``x`` is stored channels_last. Inside ``torch.func`` transforms (``vmap``, as
    :class:`~..models.stack.SeedStack` runs its models, and ``grad``) a tensor is a wrapper
    of a batched or tracked one with no memory format of its own: torch refuses the query
    ("NYI: querying is_contiguous inside of vmap for memory_format other than
    torch.contiguous_format"), so wrapped tensors answer False and take the ``F.conv2d``
    path, which vmap batches. Under torch.compile the query is traced as it is."""
    if not torch.compiler.is_compiling() and torch._C._functorch.is_functorch_wrapped_tensor(x):
        return False
    return x.is_contiguous(memory_format=torch.channels_last)


def apply_matrix(x: Tensor, W: Tensor) -> Tensor:
    """y = W x at every position: channels are dim 1 of a 4-D input, else the last dim."""
    if x.ndim == 4:  # (N, C, H, W): a 1x1 convolution
        if _channels_last(x):
            # The same 1x1 convolution as one GEMM over channels: in channels_last the
            # (N, H, W, C) permutation is a view, and so is the result's permutation back.
            # Measured fwd+bwd, batch 128, 16 x 32 x 32: 7 ms vs 18 ms for F.conv2d (CPU).
            return F.linear(x.permute(0, 2, 3, 1), W).permute(0, 3, 1, 2)
        return F.conv2d(x, W[:, :, None, None])
    return F.linear(x, W)  # (N, C) or (N, T, C): x W^T


def apply_matrix_add(x: Tensor, W: Tensor, out: Tensor) -> Tensor:
    """out + W x: a residual sum with a matrix skip, as one GEMM (``addmm``, beta = 1) where
    the layout allows: the product is written straight into the sum, so the skip costs its
    GEMM and no extra pass over the activations. That needs x and out as matrices of rows
    (channels last: (N, H, W, C) views of channels_last maps, or (N, C) / (N, T, C));
    otherwise the product and the sum are two operations."""
    if x.shape == out.shape and x.dtype == out.dtype:
        if x.ndim == 4:
            if _channels_last(x) and _channels_last(out):
                n, c, h, w = x.shape
                rows = lambda t: t.permute(0, 2, 3, 1).reshape(n * h * w, c)  # noqa: E731 - views
                return torch.addmm(rows(out), rows(x), W.mT).view(n, h, w, c).permute(0, 3, 1, 2)
        elif x.is_contiguous() and out.is_contiguous():
            c = x.shape[-1]
            return torch.addmm(out.reshape(-1, c), x.reshape(-1, c), W.mT).view(out.shape)
    return apply_matrix(x, W) + out


def observed(*modules: nn.Module) -> bool:
    """Whether a forward hook watches any of ``modules`` (or every module): a block then
    calls its skip and its residual sum as separate modules, unfused, so the hooks see them."""
    from torch.nn.modules import module as _m

    if _m._global_forward_hooks or _m._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


class Skip(nn.Module):
    """Base class. Subclasses set ``kind`` and ``upkeep``, implement ``forward`` and
    provide ``weight`` (the C x C matrix, or None for kinds without one)."""

    kind = "skip"
    upkeep = "none"
    has_path = True  # False: no skip path at all, so a block need not compute its shortcut
    shares_upkeep = False  # True: a model may compute W with other skips' (see .batched)
    shared_weight = None  # W, while a model's forward computes its skips' W's together (.batched)

    def __init__(self, channels: int):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int; got {channels!r}")
        self.channels = channels
        # in the instance's __dict__ from the start, as after a batched forward's close: torch.compile
        # guards on where the attribute lives, so a class default here compiled the batching
        # hook's graph twice (once before, once after the first forward set it on the instance)
        self.shared_weight = None

    def _check(self, x: Tensor) -> None:
        if x.ndim not in (2, 3, 4) or (x.shape[1] if x.ndim == 4 else x.shape[-1]) != self.channels:
            raise ValueError(
                f"{self.kind} skip expects (N, {self.channels}), (N, T, {self.channels}) or "
                f"(N, {self.channels}, H, W); got {tuple(x.shape)}"
            )

    def add_to(self, x: Tensor, out: Tensor) -> Tensor:
        """``skip(x) + out`` (a residual block's sum); kinds with a matrix fuse the two."""
        return self(x) + out

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def iter_skips(model: nn.Module):
    """Yield ``(name, skip)`` for every skip connection in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, Skip):
            yield name, module


