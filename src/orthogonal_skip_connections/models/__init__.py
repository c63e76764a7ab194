"""Models with pluggable skip connections; ``get_model`` is the original project's entry point."""

from __future__ import annotations

from torch import nn

from .mlp import ResidualMLP, ResidualMLPBlock
from .resnet import RESNETS, BasicBlock, Bottleneck, ResNet, resnet

__all__ = ["get_model", "ResNet", "BasicBlock", "Bottleneck", "ResidualMLP", "ResidualMLPBlock"]


def get_model(model_type: str, num_classes: int, skip_kind: str | None = None, **options) -> nn.Module:
    """Build an image classifier ``model_type`` with ``skip_kind`` skips.

    options: ``in_channels`` (default 3), ``stem`` (cifar | imagenet), ``zero_init_residual``,
    and either the skip options of :func:`orthogonal_skip_connections.skips.make_skip` or
    ``skip_layer=skip(kind, ...)`` (default: identity skips).
    """
    return resnet(model_type, num_classes, skip_kind, **options)
