"""A Vision Transformer for small images whose residual additions are pluggable skips.

Dosovitskiy et al. 2021, "An image is worth 16x16 words", with pre-norm blocks (as in
timm's ``VisionTransformer``): the image is cut into ``patch_size`` x ``patch_size``
patches (32x32 CIFAR with patch 4: 64 tokens; 8x8 digits with patch 2: 16 tokens), each
embedded linearly, a learned position embedding added, optionally a class token
prepended; then ``depth`` blocks of

    x = residual(skip_attn(x), attn(LN(x)))      # multi-head self-attention
    x = residual(skip_mlp(x),  mlp(LN(x)))       # Linear-GELU-Linear, hidden mlp_ratio * width

and a final LayerNorm, pooling (the class token, or the mean of the tokens) and a linear
head. Each residual sub-block (:class:`PreNormResidual`) owns a ``skip`` built by the skip
contract for ``width`` channels and acting token-wise on ``(N, T, C)``, so every skip kind,
``skip_layer=skip(...)`` factory and :func:`~orthogonal_skip_connections.skips.patch_skips`
work on it; ``residual`` is the residual mode (``add`` gives ``skip(x) + f(LN(x))``).

``stream_norm``: ``"sqrt_d"`` rescales the tokens (class token and position embedding
included) to norm ``sqrt(width)`` each (``orthogonal_method="global"``: each sample's tokens
to ``sqrt(T * width)``) once, before the first block; ``"none"`` leaves them at the
embeddings' scale (see :mod:`..skips.residual`). The default is ``"sqrt_d"`` under
``residual_mode="rotation"``, which keeps every token's norm: with skips that keep norms
(identity, fixed and learnable orthogonal) every token then has norm ``sqrt(width)`` after
every block. Under ``add`` and ``orthogonal_update`` it is ``"none"`` (the model as it was);
``"sqrt_d"`` there is a control.

Named sizes follow the usual configurations (timm / DeiT): ``vit_tiny`` (width 192,
depth 12, 3 heads) and ``vit_small`` (384, 12, 6), MLP ratio 4.
"""

from __future__ import annotations

import inspect
import math
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..skips import SkipFactory, batch_upkeep, skip_layer_from
from ..skips.residual import DEFAULT_EPS, Residual, StreamNorm, resolve_stream_norm

__all__ = ["VIT_SIZES", "ViT", "Attention", "Mlp", "PreNormResidual", "vit", "check_vit"]

VIT_SIZES = {
    "vit_tiny": {"width": 192, "depth": 12, "heads": 3},
    "vit_small": {"width": 384, "depth": 12, "heads": 6},
}
POOLS = ("cls", "mean")


class Attention(nn.Module):
    """Multi-head self-attention with one qkv projection and
    ``F.scaled_dot_product_attention``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:  # (N, T, C)
        n, t, c = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, heads, T, C / heads)
        return self.proj(out.transpose(1, 2).reshape(n, t, c))


class Mlp(nn.Sequential):
    def __init__(self, width: int, hidden: int):
        super().__init__(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))


class PreNormResidual(nn.Module):
    """``residual(skip(x), branch(norm(x)))`` on tokens ``(N, T, C)``."""

    def __init__(self, width: int, branch: nn.Module, skip_layer: SkipFactory,
                 residual_layer: Callable[[], Residual] = Residual):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.branch = branch
        self.skip = skip_layer(width)
        self.residual = residual_layer()

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch(self.norm(x))
        if not self.skip.has_path:  # the zero kind: every mode gives the branch on a zero stream
            return out
        return self.residual(self.skip(x), out)


class Block(nn.Sequential):
    """One transformer block: attention sub-block, then MLP sub-block."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, skip_layer: SkipFactory,
                 residual_layer: Callable[[], Residual]):
        super().__init__()
        self.attn = PreNormResidual(width, Attention(width, heads), skip_layer, residual_layer)
        self.mlp = PreNormResidual(width, Mlp(width, max(1, round(mlp_ratio * width))), skip_layer, residual_layer)


class ViT(nn.Module):
    """Vision Transformer; see the module docstring. ``pool``: ``cls`` (a class token) or
    ``mean`` (the mean of the patch tokens)."""

    def __init__(
        self,
        num_classes: int,
        image_size: int = 32,
        patch_size: int = 4,
        in_channels: int = 3,
        width: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        pool: str = "cls",
        skip_kind: str | None = None,
        skip_layer: SkipFactory | None = None,
        residual_mode: str = "add",
        orthogonal_method: str = "channel",
        residual_eps: float = DEFAULT_EPS,
        stream_norm: str | None = None,
        **skip_options,
    ):
        super().__init__()
        skip_layer = skip_layer_from(skip_kind, skip_layer, skip_options)
        residual_layer = partial(Residual, residual_mode, orthogonal_method, residual_eps)
        residual_layer()  # checks the mode, method and eps before anything is built
        self.stream_norm = resolve_stream_norm(stream_norm, residual_mode)
        _check_shape(num_classes, image_size, patch_size, in_channels, width, depth, heads, mlp_ratio, pool)
        self.image_size, self.patch_size, self.pool = image_size, patch_size, pool
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, patch_size)  # one Linear per patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + (pool == "cls"), width))
        # no parameters: the state_dict is the same with and without it
        self.rescale = StreamNorm(orthogonal_method) if self.stream_norm == "sqrt_d" else nn.Identity()
        self.blocks = nn.Sequential(*(Block(width, heads, mlp_ratio, skip_layer, residual_layer)
                                      for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self._init_weights()
        batch_upkeep(self)  # parametrized skips: each size's W's in one call per forward

    def _init_weights(self) -> None:  # timm's: truncated normal (std 0.02) for linears and embeddings
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=0.02)
        nn.init.zeros_(self.patch_embed.bias)

    def tokens(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) images -> (N, T, width) tokens after the last block (before the norm)."""
        if x.ndim != 4 or x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"ViT expects images (N, C, {self.image_size}, {self.image_size}); got {tuple(x.shape)}")
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, T, width)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.blocks(self.rescale(x + self.pos_embed))

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.tokens(x))
        x = x[:, 0] if self.cls_token is not None else x.mean(dim=1)  # (N, width)
        return self.head(x)

    def no_weight_decay(self) -> set[str]:
        """The parameters weight decay leaves alone (read by ``optim.param_groups``): the position
        embedding and class token, as in DeiT and timm."""
        return {"pos_embed", "cls_token"}


def _check_shape(num_classes, image_size, patch_size, in_channels, width, depth, heads, mlp_ratio, pool) -> None:
    for name, value in [("num_classes", num_classes), ("image_size", image_size), ("patch_size", patch_size),
                        ("in_channels", in_channels), ("width", width), ("heads", heads)]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth must be an int >= 0; got {depth!r}")
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    if width % heads:
        raise ValueError(f"width {width} is not a multiple of heads {heads}")
    if not 0 < mlp_ratio < math.inf:
        raise ValueError(f"mlp_ratio must be a finite number > 0; got {mlp_ratio!r}")
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; allowed: {', '.join(POOLS)}")


_SHAPE_KEYS = ("image_size", "patch_size", "in_channels", "width", "depth", "heads", "mlp_ratio", "pool")


def _shape(model_type: str, options: dict) -> dict:
    """The shape options of ``vit(model_type, ..., **options)``: ViT's defaults, then the
    size's, then the options' own (model_type must be in VIT_SIZES)."""
    defaults = {k: p.default for k, p in inspect.signature(ViT).parameters.items() if k in _SHAPE_KEYS}
    return {**defaults, **VIT_SIZES[model_type], **{k: v for k, v in options.items() if k in _SHAPE_KEYS}}


def check_vit(model_type: str, num_classes: int = 10, **options) -> None:
    """The ValueError ``vit(model_type, num_classes, **options)`` raises for its shape (image
    side and patch, width and heads, depth, mlp_ratio, pool), without building it: an app
    checks its config with it before anything runs. Options that are not about the shape
    (skips, residual mode) are not looked at here."""
    if model_type not in VIT_SIZES:
        raise ValueError(f"unknown model_type {model_type!r}; allowed: {', '.join(VIT_SIZES)}")
    _check_shape(num_classes, **_shape(model_type, options))


def vit_min_parameters(model_type: str, **options) -> int:
    """The weight matrices of a ViT's patch embedding and blocks (qkv and output
    projections, the MLP's two layers), without biases, norms, skips or head: a lower bound
    of its parameter count from its shape options (as :func:`check_vit`), without building it."""
    shape = _shape(model_type, options)
    w, p = shape["width"], shape["patch_size"]
    hidden = max(1, round(shape["mlp_ratio"] * w))
    return shape["in_channels"] * p * p * w + shape["depth"] * (4 * w * w + 2 * w * hidden)


def vit(model_type: str, num_classes: int, skip_kind: str | None = None, **options) -> ViT:
    """``vit_tiny`` or ``vit_small``; ``options`` override the size (``width``, ``depth``,
    ``heads``, ``mlp_ratio``) and set ``image_size``, ``patch_size``, ``in_channels``,
    ``pool``, the residual mode, ``stream_norm`` and the skips, as :class:`ViT`."""
    if model_type not in VIT_SIZES:
        raise ValueError(f"unknown model_type {model_type!r}; allowed: {', '.join(VIT_SIZES)}")
    return ViT(num_classes, skip_kind=skip_kind, **{**VIT_SIZES[model_type], **options})
