"""Residual MLP on vectors: x -> head(block_L(... block_1(embed(x)))).

Each block computes ``y = skip(x) + f(x)`` with the residual branch
``f(x) = W2 act(W1 x + b1) + b2`` (hidden width ``hidden_mult * dim``), so a block is
exactly the h_i = W_i + (h_i - W_i) decomposition studied by the theory: ``block.skip``
holds W_i (``block.skip.weight``) and ``block.branch`` holds h_i - W_i.
``residual_mode`` (``add`` | ``orthogonal_update`` | ``rotation``) replaces the addition
(see :mod:`..skips.residual`; on vectors ``channel`` and ``global`` coincide); only ``add``
keeps that reading of a block.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

from torch import Tensor, nn

from ..skips import SkipFactory, batch_upkeep, skip_layer_from
from ..skips.residual import DEFAULT_EPS, Residual

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "softplus": nn.Softplus}


def _check_hidden_mult(hidden_mult) -> None:
    if isinstance(hidden_mult, bool) or not isinstance(hidden_mult, (int, float)) or not 0 < hidden_mult < math.inf:
        raise ValueError(f"hidden_mult must be a finite number > 0; got {hidden_mult!r}")


def residual_mlp_min_parameters(dim: int, depth: int, hidden_mult: float, num_classes: int | None = None,
                                in_features: int | None = None) -> int:
    """The parameters of :class:`ResidualMLP` without its skips (which add 0 to dim^2 per
    block by kind): a lower bound of its size, counted without building it."""
    _check_hidden_mult(hidden_mult)
    hidden = max(1, round(hidden_mult * dim))
    embed = 0 if in_features in (None, dim) else (in_features + 1) * dim
    head = 0 if num_classes is None else (dim + 1) * num_classes
    return embed + depth * ((dim + 1) * hidden + (hidden + 1) * dim) + head


class ResidualMLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int, skip_layer: SkipFactory, activation: str,
                 residual_layer: Callable[[], Residual] = Residual):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        self.branch = nn.Sequential(nn.Linear(dim, hidden), ACTIVATIONS[activation](), nn.Linear(hidden, dim))
        self.skip = skip_layer(dim)
        self.residual = residual_layer()

    def forward(self, x: Tensor) -> Tensor:  # x: (..., dim)
        out = self.branch(x)
        # every mode gives the branch on a zero stream; add keeps the sum out + 0 it always had
        if not self.skip.has_path and self.residual.mode != "add":
            return out
        # the sum through the residual module in every mode, where hooks see it (analysis.two_stage.skip_io);
        # in add mode out + skip(x), bit for bit the skip(x) + out this block computed before
        return self.residual(self.skip(x), out)


class ResidualMLP(nn.Module):
    """``depth`` residual blocks of width ``dim``.

    ``in_features``: if given and different from ``dim``, a linear embedding maps inputs
    to ``dim`` first (otherwise blocks act on the input space itself, as the 2-D
    pictures need). ``num_classes``: if given, a linear head produces logits.
    ``residual_mode``, ``orthogonal_method``, ``residual_eps``: see :mod:`..skips.residual`.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        hidden_mult: float = 2.0,
        skip_kind: str | None = None,
        num_classes: int | None = None,
        in_features: int | None = None,
        activation: str = "relu",
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
        if dim < 1 or depth < 0:
            raise ValueError(f"need dim >= 1 and depth >= 0; got dim={dim}, depth={depth}")
        _check_hidden_mult(hidden_mult)
        hidden = max(1, round(hidden_mult * dim))
        in_features = dim if in_features is None else in_features
        self.embed = nn.Identity() if in_features == dim else nn.Linear(in_features, dim)
        self.blocks = nn.ModuleList(
            ResidualMLPBlock(dim, hidden, skip_layer, activation, residual_layer) for _ in range(depth)
        )
        self.head = nn.Identity() if num_classes is None else nn.Linear(dim, num_classes)
        batch_upkeep(self)  # parametrized skips: each size's W's in one call per forward

    def features(self, x: Tensor, upto: int | None = None) -> Tensor:
        """Output of the first ``upto`` blocks (all by default), before the head."""
        x = self.embed(x)
        for block in self.blocks[:upto]:
            x = block(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
