"""``patch_skips``: give an existing model (this library's or torchvision's ResNets) other skips;
``baked_copy``: a trained model with its orthogonal constraints baked into plain weights."""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..runs import check_module
from .batched import batch_upkeep
from .constraint import _MODULE_MARKS
from .contract import Skip
from .kinds import SkipFactory, skip as skip_factory

__all__ = ["baked_copy", "patch_skips"]




class _PatchedShortcut(nn.Module):
    """Shortcut of a patched torchvision block: projection (if any), then skip."""

    def __init__(self, projection: nn.Module | None, skip: Skip):
        super().__init__()
        self.projection = projection
        self.skip = skip

    def forward(self, x: Tensor) -> Tensor:
        if self.projection is not None:
            x = self.projection(x)
        return self.skip(x)


def _torchvision_out_channels(block: nn.Module) -> int | None:
    """The output channels of a torchvision-style BasicBlock / Bottleneck (a ``downsample``
    attribute, ``conv2`` or ``conv3`` last): its last convolution's, whatever its norm layer
    (BatchNorm2d, GroupNorm, the detection backbones' FrozenBatchNorm2d); None for another module."""
    conv = getattr(block, "conv3", None) or getattr(block, "conv2", None)
    if hasattr(block, "downsample") and isinstance(conv, nn.Conv2d):
        return conv.out_channels
    return None


def _placed(make: Callable[[], Skip], block: nn.Module) -> Skip:
    """The skip ``make()`` builds, on the device and in the floating dtype of ``block`` (its
    first floating parameter or buffer): a model moved to a GPU or to float64 before patching
    stays usable. A float64 block's skip is built in float64 (a Haar draw rounded once to it: a
    float32 one cast up is orthogonal to 5e-8 only)."""
    for t in (*block.parameters(), *block.buffers()):
        if t.is_floating_point():
            before = torch.get_default_dtype()
            if t.dtype == torch.float64:
                torch.set_default_dtype(torch.float64)
            try:
                skip = make()
            finally:
                torch.set_default_dtype(before)
            return skip.to(device=t.device, dtype=t.dtype)
    return make()


def patch_skips(model: nn.Module, kind: str | SkipFactory | None = None, *, skip_layer: SkipFactory | None = None,
                **options) -> nn.Module:
    """Replace the identity path of every residual block of ``model`` by another skip.

    The skip is ``kind`` with ``options`` (as :func:`make_skip`), or ``skip_layer``, a
    factory ``channels -> Skip`` such as ``skip("learnable_orth", method="cayley")``.
    Works on this library's models (blocks with a ``skip`` attribute) and on
    torchvision-style ResNets (BasicBlock / Bottleneck with ``downsample``), where the
    skip is applied after the projection shortcut if there is one. ``identity`` on an
    unpatched torchvision model changes nothing, so outputs stay bit-identical. The new skips
    take the device and dtype of the block they go into. Modifies ``model`` in place and returns it.
    """
    check_module("patch_skips", model)
    if isinstance(kind, SkipFactory):
        kind, skip_layer = None, kind
    if (kind is None) == (skip_layer is None):
        raise ValueError("give a skip kind or a skip_layer factory (exactly one)")
    factory = skip_layer if skip_layer is not None else skip_factory(kind, **options)
    if options and skip_layer is not None:
        raise ValueError(f"options {sorted(options)} go into skip(...), not beside skip_layer")
    found = 0
    for module in list(model.modules()):
        old = getattr(module, "skip", None)
        if isinstance(old, Skip) and not isinstance(module, _PatchedShortcut):
            module.skip = _placed(lambda: factory(old.channels), module)
            found += 1
            continue
        channels = _torchvision_out_channels(module)
        if channels is None:
            continue
        found += 1
        shortcut = module.downsample
        projection = shortcut.projection if isinstance(shortcut, _PatchedShortcut) else shortcut
        if factory.kind == "identity":
            module.downsample = projection
        else:
            module.downsample = _PatchedShortcut(projection, _placed(lambda: factory(channels), module))
    if found == 0:
        raise ValueError(
            f"found no residual blocks in {type(model).__name__}: expected blocks with a "
            "`skip` attribute or torchvision BasicBlock/Bottleneck blocks"
        )
    return batch_upkeep(model)  # parametrized skips: each size's W's in one call per forward


@torch.no_grad()
def baked_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in which every constrained weight is a plain ``nn.Parameter``
    holding its current value: each parametrized tensor (``cayley``, ``exp``, ``householder``
    skips and weights, and any other torch parametrization) is W = B phi(A) computed once,
    each retracted matrix (``steepest``, ``svd``, ``qr``, ``newton_schulz``) is unmarked,
    and no batched upkeep runs. It computes what ``model`` computes without recomputing any W,
    and goes where a constrained model cannot: ``torch.save(copy)`` (torch refuses to pickle a
    parametrized module) and plain torch optimisers (its W's are then free matrices, as a
    ``linear`` skip's). ``model`` is left as it was. A ``torch.compile`` wrapper gives the copy of
    the module it wraps, uncompiled (its state_dict keys without the wrapper's ``_orig_mod.``)."""
    check_module("baked_copy", model)
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    out = copy.deepcopy(model)
    batch_upkeep(out, enabled=False)
    for module in list(out.modules()):
        if parametrize.is_parametrized(module):
            # not torch's remove_parametrizations: it edits the module's class, which a deep
            # copy shares with the original (torch makes one class per parametrized module)
            plists = module.parametrizations
            values = {name: (getattr(module, name).detach().clone(),
                             any(p.requires_grad for p in plists[name].parameters())) for name in plists}
            module.__class__ = module.__class__.__bases__[0]  # the module's own class, before parametrizing
            del module._modules["parametrizations"]
            for name, (value, requires_grad) in values.items():
                module.register_parameter(name, nn.Parameter(value, requires_grad=requires_grad))
        module.__dict__.pop(_MODULE_MARKS, None)  # the record; deepcopy left the parameters unmarked
        if isinstance(module, Skip):
            module.upkeep = "none"  # the contract's word for a W kept by nothing: read as is, shared with no skip
    return out
