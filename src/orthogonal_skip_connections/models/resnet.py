"""ResNets whose skip paths are pluggable: v1 (He et al. 2016, "Deep residual learning")
and v2, pre-activation (He et al. 2016, "Identity mappings in deep residual networks").

A v1 block computes ``relu(f(x) + skip(shortcut(x)))`` where ``shortcut`` is the 1x1
projection (conv + BN) where shape changes and the identity elsewhere, and ``skip`` is any
kind from :mod:`orthogonal_skip_connections.skips`. A v2 block computes
``f(x) + skip(shortcut(x))`` with nothing after the addition: ``f`` starts with BN-ReLU
(pre-activation), the stream between blocks is never normalised or rectified, and the
projection shortcut (a 1x1 conv, no BN) takes the pre-activated input where shape changes,
the pure stream ``x`` elsewhere. ``residual_mode`` replaces the addition in either
(``add``, ``orthogonal_update``, ``rotation``; see :mod:`..skips.residual`), with
``skip(shortcut(x))`` as the stream.

- CIFAR ResNets ``resnet20/32/44/56/110``: 3 stages of widths 16, 32, 64 with
  (depth - 2) / 6 basic blocks each (He et al. 2016, section 4.2), but with the projection
  shortcuts above (the paper's option B) where section 4.2 zero-pads (option A): a matrix skip
  then always acts on a stream of its block's width (resnet20: 272,474 parameters, 269,722
  with option A).
- ``resnet18/34/50``: 4 stages of widths 64..512 (basic or bottleneck blocks) with a
  ``cifar`` stem (3x3 conv, no max-pool, for 32x32 inputs) or an ``imagenet`` stem
  (7x7 conv stride 2, then 3x3 max-pool).
- Pre-activation ``preact_resnet20/32/44/56/110`` and ``resnet18v2/34v2/50v2``: the same
  stages with v2 blocks; the stem is a bare conv (``cifar``; the first block
  pre-activates) or conv-BN-ReLU-maxpool (``imagenet``), and a final BN-ReLU precedes
  the pooling (He et al. 2016b, and the fb.resnet.torch ``preresnet``).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ..skips import SkipFactory, batch_upkeep, skip_layer_from
from ..skips.contract import observed
from ..skips.residual import DEFAULT_EPS, Residual

STEMS = ("cifar", "imagenet")  # 3x3, no max-pool (32x32 and smaller) | 7x7/2 + max-pool


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=False), nn.BatchNorm2d(c_out)]


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions: f(x) = BN(conv(relu(BN(conv(x)))))."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, skip_layer: SkipFactory,
                 residual_layer: Callable[[], Residual] = Residual):
        super().__init__()
        c_out = planes * self.expansion
        self.branch = nn.Sequential(
            *_conv_bn(c_in, planes, 3, stride), nn.ReLU(inplace=True), *_conv_bn(planes, c_out, 3)
        )
        self.shortcut = _shortcut(c_in, c_out, stride)
        self.skip = skip_layer(c_out)
        self.residual = residual_layer()

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch(x)
        if not self.skip.has_path:  # e.g. the zero kind: the projection would be wasted work
            return F.relu(out)  # (every residual mode gives the branch itself on a zero stream)
        return F.relu(self.residual.with_skip(self.skip, self.shortcut(x), out))


class Bottleneck(BasicBlock):
    """1x1 reduce, 3x3, 1x1 expand (x4), stride on the 3x3 as in torchvision."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, skip_layer: SkipFactory,
                 residual_layer: Callable[[], Residual] = Residual):
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
        self.residual = residual_layer()


def _bn_relu(c: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]


def _conv(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=False)


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016b, fig. 4e):
    ``y = skip(shortcut(x)) + f(x)`` with ``f = conv3(relu(BN(conv3(relu(BN(x))))))``.

    ``preact = relu(BN(x))`` is the branch's first step; where the shape changes the
    projection shortcut (1x1 conv, stride) takes ``preact`` as its input (as in
    fb.resnet.torch's ``preresnet`` and kuangliu/pytorch-cifar), elsewhere the skip acts on
    the pure stream ``x``.
    """

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, skip_layer: SkipFactory,
                 residual_layer: Callable[[], Residual] = Residual):
        super().__init__()
        c_out = planes * self.expansion
        self.preact = nn.Sequential(*_bn_relu(c_in))
        self.branch = self._branch(c_in, planes, c_out, stride)
        self.shortcut = (
            None if stride == 1 and c_in == c_out else _conv(c_in, c_out, 1, stride)
        )
        self.skip = skip_layer(c_out)
        self.residual = residual_layer()

    @staticmethod
    def _branch(c_in: int, planes: int, c_out: int, stride: int) -> nn.Sequential:
        return nn.Sequential(_conv(c_in, planes, 3, stride), *_bn_relu(planes), _conv(planes, c_out, 3))

    def forward(self, x: Tensor) -> Tensor:
        pre = self.preact(x)
        out = self.branch(pre)
        if not self.skip.has_path:
            return out
        if self.shortcut is None:
            return self.residual.with_skip(self.skip, x, out)
        foldable = hasattr(self.skip, "folding_matrix") and self.residual.mode == "add" and \
            not observed(self.skip, self.residual, self.shortcut)
        W = self.skip.folding_matrix(pre) if foldable else None
        if W is None:
            return self.residual.with_skip(self.skip, self.shortcut(pre), out)
        # a matrix skip after the bare 1x1 projection folds into it: W (K pre) = (W K) pre,
        # one convolution with the C x C_in kernel W K instead of a convolution and a GEMM
        K = self.shortcut.weight  # (C, C_in, 1, 1)
        folded = F.conv2d(pre, (W @ K.flatten(1)).view_as(K), stride=self.shortcut.stride)
        return self.residual(folded, out)


class PreActBottleneck(PreActBlock):
    """Pre-activation bottleneck: BN-ReLU-1x1, BN-ReLU-3x3 (stride), BN-ReLU-1x1 (x4)."""

    expansion = 4

    @staticmethod
    def _branch(c_in: int, planes: int, c_out: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            _conv(c_in, planes, 1),
            *_bn_relu(planes),
            _conv(planes, planes, 3, stride),
            *_bn_relu(planes),
            _conv(planes, c_out, 1),
        )


class ResNet(nn.Module):
    """Stem, stages of residual blocks, global average pool, linear classifier.

    ``block``: :class:`BasicBlock` / :class:`Bottleneck` (v1) or :class:`PreActBlock` /
    :class:`PreActBottleneck` (v2, which adds a final BN-ReLU before the pooling).
    ``residual_mode`` (``add`` | ``orthogonal_update`` | ``rotation``), ``orthogonal_method``
    (``channel`` | ``global``) and ``residual_eps``: see :mod:`..skips.residual`.
    """

    def __init__(
        self,
        block: type[nn.Module],
        blocks_per_stage: list[int],
        widths: list[int],
        num_classes: int,
        in_channels: int = 3,
        stem: str = "cifar",
        skip_kind: str | None = None,
        zero_init_residual: bool = False,
        skip_layer: SkipFactory | None = None,
        residual_mode: str = "add",
        orthogonal_method: str = "channel",
        residual_eps: float = DEFAULT_EPS,
        **skip_options,
    ):
        super().__init__()
        skip_layer = skip_layer_from(skip_kind, skip_layer, skip_options)
        residual_layer = partial(Residual, residual_mode, orthogonal_method, residual_eps)
        residual_layer()  # checks the mode, method and eps before anything is built
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:  # 2.5: torch's TypeError from nn.Linear
                raise ValueError(f"{name} must be an int >= 1; got {value!r}")
        preact = issubclass(block, PreActBlock)
        if stem == "cifar":
            layers = [_conv(in_channels, widths[0], 3)] if preact else [
                *_conv_bn(in_channels, widths[0], 3), nn.ReLU(inplace=True)]
        elif stem == "imagenet":
            layers = [
                *_conv_bn(in_channels, widths[0], 7, 2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            ]
        else:
            raise ValueError(f"unknown stem {stem!r}; allowed: {', '.join(STEMS)}")
        self.stem = nn.Sequential(*layers)
        stages, c_in = [], widths[0]
        for i, (n, w) in enumerate(zip(blocks_per_stage, widths)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(c_in, w, stride, skip_layer, residual_layer))
                c_in = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        # v2: the stream leaves the last block un-normalised; v1 has nothing here
        self.final = nn.Sequential(*_bn_relu(c_in)) if preact else None
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:  # last BN (v1) or conv (v2) of each branch starts at 0:
            for m in self.modules():  # each block starts as its skip
                if isinstance(m, (BasicBlock, PreActBlock)):
                    nn.init.zeros_(m.branch[-1].weight)
        batch_upkeep(self)  # parametrized skips: each size's W's in one call per forward

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))  # (N, C, H, W)
        if self.final is not None:
            x = self.final(x)
        return self.fc(x.mean(dim=(2, 3)))  # (N, num_classes)


CIFAR_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110}
IMAGENET_STYLE = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}
PREACT_CIFAR_DEPTHS = {f"preact_{k}": v for k, v in CIFAR_DEPTHS.items()}
PREACT_IMAGENET_STYLE = {
    "resnet18v2": (PreActBlock, [2, 2, 2, 2]),
    "resnet34v2": (PreActBlock, [3, 4, 6, 3]),
    "resnet50v2": (PreActBottleneck, [3, 4, 6, 3]),
}
RESNETS = tuple(CIFAR_DEPTHS) + tuple(IMAGENET_STYLE) + tuple(PREACT_CIFAR_DEPTHS) + tuple(PREACT_IMAGENET_STYLE)


def resnet(model_type: str, num_classes: int, skip_kind: str | None = None, **options) -> ResNet:
    """Build ``model_type`` (one of RESNETS); options go to :class:`ResNet` and the skips
    (a kind and its options, or ``skip_layer=skip(kind, ...)``)."""
    cifar = {**CIFAR_DEPTHS, **PREACT_CIFAR_DEPTHS}
    if model_type in cifar:
        n = (cifar[model_type] - 2) // 6
        block = PreActBlock if model_type in PREACT_CIFAR_DEPTHS else BasicBlock
        options.setdefault("stem", "cifar")
        return ResNet(block, [n] * 3, [16, 32, 64], num_classes, skip_kind=skip_kind, **options)
    imagenet_style = {**IMAGENET_STYLE, **PREACT_IMAGENET_STYLE}
    if model_type in imagenet_style:
        block, layers = imagenet_style[model_type]
        return ResNet(block, layers, [64, 128, 256, 512], num_classes, skip_kind=skip_kind, **options)
    raise ValueError(f"unknown model_type {model_type!r}; allowed: {', '.join(RESNETS)}")
