"""ResNets whose skip paths are pluggable (He et al. 2016, "Deep residual learning").

Every residual block computes ``relu(f(x) + skip(shortcut(x)))`` where ``shortcut`` is
the 1x1 projection (conv + BN) where shape changes and the identity elsewhere, and
``skip`` is any kind from :mod:`orthogonal_skip_connections.skips`.

- CIFAR ResNets ``resnet20/32/44/56/110``: 3 stages of widths 16, 32, 64 with
  (depth - 2) / 6 basic blocks each (He et al. 2016, section 4.2).
- ``resnet18/34/50``: 4 stages of widths 64..512 (basic or bottleneck blocks) with a
  ``cifar`` stem (3x3 conv, no max-pool, for 32x32 inputs) or an ``imagenet`` stem
  (7x7 conv stride 2, then 3x3 max-pool).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..skips import SkipFactory, skip_layer_from


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=False), nn.BatchNorm2d(c_out)]


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions: f(x) = BN(conv(relu(BN(conv(x)))))."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, skip_layer: SkipFactory):
        super().__init__()
        c_out = planes * self.expansion
        self.branch = nn.Sequential(
            *_conv_bn(c_in, planes, 3, stride), nn.ReLU(inplace=True), *_conv_bn(planes, c_out, 3)
        )
        self.shortcut = _shortcut(c_in, c_out, stride)
        self.skip = skip_layer(c_out)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch(x)
        if not self.skip.has_path:  # e.g. the zero kind: the projection would be wasted work
            return F.relu(out)
        return F.relu(out + self.skip(self.shortcut(x)))


class Bottleneck(BasicBlock):
    """1x1 reduce, 3x3, 1x1 expand (x4), stride on the 3x3 as in torchvision."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, skip_layer: SkipFactory):
        nn.Module.__init__(self)
        c_out = planes * self.expansion
        self.branch = nn.Sequential(
            *_conv_bn(c_in, planes, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(planes, planes, 3, stride),
            nn.ReLU(inplace=True),
            *_conv_bn(planes, c_out, 1),
        )
        self.shortcut = _shortcut(c_in, c_out, stride)
        self.skip = skip_layer(c_out)


class ResNet(nn.Module):
    """Stem, stages of residual blocks, global average pool, linear classifier."""

    def __init__(
        self,
        block: type[BasicBlock],
        blocks_per_stage: list[int],
        widths: list[int],
        num_classes: int,
        in_channels: int = 3,
        stem: str = "cifar",
        skip_kind: str | None = None,
        zero_init_residual: bool = False,
        skip_layer: SkipFactory | None = None,
        **skip_options,
    ):
        super().__init__()
        skip_layer = skip_layer_from(skip_kind, skip_layer, skip_options)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1; got {in_channels}")
        if stem == "cifar":
            layers = [*_conv_bn(in_channels, widths[0], 3), nn.ReLU(inplace=True)]
        elif stem == "imagenet":
            layers = [
                *_conv_bn(in_channels, widths[0], 7, 2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            ]
        else:
            raise ValueError(f"unknown stem {stem!r}; allowed: cifar, imagenet")
        self.stem = nn.Sequential(*layers)
        stages, c_in = [], widths[0]
        for i, (n, w) in enumerate(zip(blocks_per_stage, widths)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(c_in, w, stride, skip_layer))
                c_in = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:  # last BN of each branch starts at 0: each block starts as its skip
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.branch[-1].weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))  # (N, C, H, W)
        return self.fc(x.mean(dim=(2, 3)))  # (N, num_classes)


CIFAR_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110}
IMAGENET_STYLE = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}
RESNETS = tuple(CIFAR_DEPTHS) + tuple(IMAGENET_STYLE)


def resnet(model_type: str, num_classes: int, skip_kind: str | None = None, **options) -> ResNet:
    """Build ``model_type`` (one of RESNETS); options go to :class:`ResNet` and the skips
    (a kind and its options, or ``skip_layer=skip(kind, ...)``)."""
    if model_type in CIFAR_DEPTHS:
        n = (CIFAR_DEPTHS[model_type] - 2) // 6
        options.setdefault("stem", "cifar")
        return ResNet(BasicBlock, [n] * 3, [16, 32, 64], num_classes, skip_kind=skip_kind, **options)
    if model_type in IMAGENET_STYLE:
        block, layers = IMAGENET_STYLE[model_type]
        return ResNet(block, layers, [64, 128, 256, 512], num_classes, skip_kind=skip_kind, **options)
    raise ValueError(f"unknown model_type {model_type!r}; allowed: {', '.join(RESNETS)}")
