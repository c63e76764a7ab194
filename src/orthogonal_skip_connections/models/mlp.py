"""Residual MLP on vectors: x -> head(block_L(... block_1(embed(x)))).

Each block computes ``y = skip(x) + f(x)`` with the residual branch
``f(x) = W2 act(W1 x + b1) + b2`` (hidden width ``hidden_mult * dim``), so a block is
exactly the h_i = W_i + (h_i - W_i) decomposition studied by the theory: ``block.skip``
holds W_i (``block.skip.weight``) and ``block.branch`` holds h_i - W_i.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..skips import SkipFactory, skip_layer_from

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "softplus": nn.Softplus}


class ResidualMLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int, skip_layer: SkipFactory, activation: str):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        self.branch = nn.Sequential(nn.Linear(dim, hidden), ACTIVATIONS[activation](), nn.Linear(hidden, dim))
        self.skip = skip_layer(dim)

    def forward(self, x: Tensor) -> Tensor:  # x: (..., dim)
        return self.skip(x) + self.branch(x)


class ResidualMLP(nn.Module):
    """``depth`` residual blocks of width ``dim``.

    ``in_features``: if given and different from ``dim``, a linear embedding maps inputs
    to ``dim`` first (otherwise blocks act on the input space itself, as the 2-D
    pictures need). ``num_classes``: if given, a linear head produces logits.
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
        **skip_options,
    ):
        super().__init__()
        skip_layer = skip_layer_from(skip_kind, skip_layer, skip_options)
        if dim < 1 or depth < 0:
            raise ValueError(f"need dim >= 1 and depth >= 0; got dim={dim}, depth={depth}")
        hidden = max(1, round(hidden_mult * dim))
        in_features = dim if in_features is None else in_features
        self.embed = nn.Identity() if in_features == dim else nn.Linear(in_features, dim)
        self.blocks = nn.ModuleList(
            ResidualMLPBlock(dim, hidden, skip_layer, activation) for _ in range(depth)
        )
        self.head = nn.Identity() if num_classes is None else nn.Linear(dim, num_classes)

    def features(self, x: Tensor, upto: int | None = None) -> Tensor:
        """Output of the first ``upto`` blocks (all by default), before the head."""
        x = self.embed(x)
        for block in self.blocks[:upto]:
            x = block(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
