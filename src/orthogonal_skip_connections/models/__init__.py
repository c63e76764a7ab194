"""Models with pluggable skip connections; ``get_model`` is the original project's entry point."""

from __future__ import annotations

from torch import nn

from .mlp import ResidualMLP, ResidualMLPBlock
from .resnet import RESNETS, BasicBlock, Bottleneck, PreActBlock, PreActBottleneck, ResNet, resnet
from .vit import VIT_SIZES, ViT, vit

MODEL_TYPES = RESNETS + tuple(VIT_SIZES)
VIT_ONLY_OPTIONS = ("patch_size", "width", "depth", "heads", "mlp_ratio", "pool")
RESNET_ONLY_OPTIONS = ("stem", "zero_init_residual")

__all__ = ["MODEL_TYPES", "get_model", "ResNet", "BasicBlock", "Bottleneck", "PreActBlock", "PreActBottleneck",
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
    (cls | mean), overriding the named size.
    """
    if model_type in VIT_SIZES:
        resnet_only = sorted(set(options) & set(RESNET_ONLY_OPTIONS))
        if resnet_only:
            raise ValueError(f"option(s) {resnet_only} apply to ResNet models only, not {model_type}")
        return vit(model_type, num_classes, skip_kind, **options)
    if model_type in RESNETS:
        vit_only = sorted(set(options) & set(VIT_ONLY_OPTIONS))
        if vit_only:
            raise ValueError(f"option(s) {vit_only} apply to ViT models only, not {model_type}")
        options.pop("image_size", None)  # convolutions take any size
        return resnet(model_type, num_classes, skip_kind, **options)
    raise ValueError(f"unknown model_type {model_type!r}; allowed: {', '.join(MODEL_TYPES)}")
