"""Models with pluggable skip connections; ``get_model`` is the original project's entry point."""

from __future__ import annotations

import inspect

from torch import nn

from ..skips import SKIP_OPTIONS
from .mlp import ResidualMLP, ResidualMLPBlock
from .resnet import RESNETS, STEMS, BasicBlock, Bottleneck, PreActBlock, PreActBottleneck, ResNet, resnet
from .vit import VIT_SIZES, ViT, check_vit, vit

MODEL_TYPES = RESNETS + tuple(VIT_SIZES)
VIT_ONLY_OPTIONS = ("patch_size", "width", "depth", "heads", "mlp_ratio", "pool", "stream_norm")
RESNET_ONLY_OPTIONS = ("stem", "zero_init_residual")

__all__ = ["MODEL_TYPES", "VIT_SIZES", "STEMS",
           "get_model", "check_model_options", "check_vit", "ResNet", "BasicBlock", "Bottleneck", "PreActBlock", "PreActBottleneck",
           "ViT", "ResidualMLP", "ResidualMLPBlock"]


def get_model(model_type: str, num_classes: int, skip_kind: str | None = None, **options) -> nn.Module:
    """Build an image classifier ``model_type`` (one of MODEL_TYPES) with ``skip_kind`` skips.

    options for every model: ``in_channels`` (default 3), ``image_size`` (the input's side;
    a ViT needs it, default 32; a ResNet ignores it), ``residual_mode`` (add |
    orthogonal_update | rotation), ``orthogonal_method`` (channel | global), ``residual_eps``,
    and either the skip options of :func:`orthogonal_skip_connections.skips.make_skip` or
    ``skip_layer=skip(kind, ...)`` (default: identity skips).
    ResNets: ``stem`` (cifar | imagenet), ``zero_init_residual``.
    ViTs: ``patch_size`` (default 4), ``width``, ``depth``, ``heads``, ``mlp_ratio``, ``pool``
    (cls | mean), overriding the named size; ``stream_norm`` (sqrt_d: the tokens rescaled to
    norm sqrt(width) before the first block | none; default sqrt_d under rotation only).
    """
    check_model_options(model_type, options)
    if model_type in VIT_SIZES:
        return vit(model_type, num_classes, skip_kind, **options)
    options = {k: v for k, v in options.items() if k != "image_size"}  # convolutions take any size
    return resnet(model_type, num_classes, skip_kind, **options)


def check_model_options(model_type: str, options) -> None:
    """One-line ValueError for an unknown ``model_type``, an option (name) that belongs
    to the other family (ResNet-only options for a ViT, ViT-only ones for a ResNet), an
    option neither the model nor its skips take (listing both), or an unknown ResNet ``stem``."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; allowed: {', '.join(MODEL_TYPES)}")
    vit_model = model_type in VIT_SIZES
    wrong = sorted(set(options) & set(RESNET_ONLY_OPTIONS if vit_model else VIT_ONLY_OPTIONS))
    if wrong:
        raise ValueError(f"option(s) {wrong} apply to {'ResNet' if vit_model else 'ViT'} models only, "
                         f"not {model_type}")
    named = _named_options(ViT if vit_model else ResNet)
    unknown = sorted(set(options) - set(named) - set(SKIP_OPTIONS))
    if unknown:  # (else a misspelt model option would be called an unknown skip option)
        raise ValueError(f"unknown option(s) {unknown} for {model_type}; allowed: {', '.join(named)}, "
                         f"and the skip options {', '.join(SKIP_OPTIONS)}")
    if "stem" in options and options["stem"] not in STEMS:
        raise ValueError(f"unknown stem {options['stem']!r}; allowed: {', '.join(STEMS)}")


def _named_options(cls: type) -> list[str]:
    """The keyword options of ``get_model`` for models of ``cls``: its constructor's named
    arguments but the ones ``get_model`` sets itself, and ``image_size`` (every model)."""
    fixed = {"self", "block", "blocks_per_stage", "widths", "num_classes", "skip_kind"}
    params = inspect.signature(cls.__init__).parameters.values()
    names = [p.name for p in params if p.name not in fixed and p.kind is not p.VAR_KEYWORD]
    return names + ["image_size"] * ("image_size" not in names)
