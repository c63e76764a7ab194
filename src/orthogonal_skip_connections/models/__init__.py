"""Models with pluggable skip connections; ``get_model`` is the original project's entry point."""

from __future__ import annotations

from torch import nn

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
    to the other family (ResNet-only options for a ViT, ViT-only ones for a ResNet), or an
    unknown ResNet ``stem``."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; allowed: {', '.join(MODEL_TYPES)}")
    vit_model = model_type in VIT_SIZES
    wrong = sorted(set(options) & set(RESNET_ONLY_OPTIONS if vit_model else VIT_ONLY_OPTIONS))
    if wrong:
        raise ValueError(f"option(s) {wrong} apply to {'ResNet' if vit_model else 'ViT'} models only, "
                         f"not {model_type}")
    if "stem" in options and options["stem"] not in STEMS:
        raise ValueError(f"unknown stem {options['stem']!r}; allowed: {', '.join(STEMS)}")
