"""The skip kinds (policies, named in SKIP_KINDS) and how to build one: ``make_skip(kind, channels, **options)``
and the timm-style factory ``skip(kind, **options)`` (a callable ``channels -> Skip``).

Kinds follow the original project (``identity``, ``zero``, ``fixed_orth``,
``learnable_orth``, ``random``) and Wang et al. 2017, "Orthogonal and idempotent
transformations for learning deep neural networks" (``idempotent``), plus
``linear`` and ``scalar`` baselines.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..maths import orthogonal as orth
from .constraint import (check_lr_scale, check_ns_steps, check_special, initial_orthogonal, orthogonal_,
                         recorded_retraction, resolve_method)
from .contract import Skip, apply_matrix, apply_matrix_add

__all__ = [
    "SKIP_KINDS",
    "FIXED_KINDS",
    "SKIP_OPTIONS",
    "IdentitySkip",
    "ZeroSkip",
    "MatrixSkip",
    "ScalarSkip",
    "OrthogonalSkip",
    "SkipFactory",
    "make_skip",
    "skip",
    "skip_layer_from",
    "variant_label",
]

SKIP_KINDS = (
    "identity",
    "zero",
    "fixed_orth",
    "learnable_orth",
    "random",
    "linear",
    "scalar",
    "idempotent",
)
# kinds whose matrix is drawn at build time and never trains (a buffer, not a parameter)
FIXED_KINDS = ("fixed_orth", "idempotent")


def variant_label(kind: str, method: str | None = None, init: str | None = None) -> str:
    """What runs of a skip are labelled and compared by in reports and figures (and coloured
    by: ``plots.variant_colors``): the kind, with ``/method`` for learnable_orth (default
    steepest) and ``/haar`` for its Haar initialisation."""
    if kind != "learnable_orth":
        return kind
    return f"learnable_orth/{method or orth.DEFAULT_METHOD}" + ("/haar" if init == "haar" else "")


def _choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
    return value


class IdentitySkip(Skip):
    """y = x: the ResNet skip (He et al. 2016)."""

    kind = "identity"
    weight = property(lambda self: None, doc="no matrix")

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return x


class ZeroSkip(Skip):
    """No skip at all: returns a 0-d zero that broadcasts against the branch output."""

    kind = "zero"
    has_path = False
    weight = property(lambda self: None, doc="no matrix")

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return x.new_zeros(())


class MatrixSkip(Skip):
    """y = W x with a plain matrix: trainable (``linear``, ``random``) or frozen
    (``fixed_orth``, ``idempotent``; stored as a buffer)."""

    def __init__(self, kind: str, W: Tensor, trainable: bool):
        super().__init__(W.shape[-1])
        orth.check_square(W, f"{kind} skip matrix", W.shape[-1])
        self.kind = kind
        if trainable:
            self.weight = nn.Parameter(W.clone())
        else:
            self.register_buffer("weight", W.clone())

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return apply_matrix(x, self.weight)

    def add_to(self, x: Tensor, out: Tensor) -> Tensor:
        self._check(x)
        return apply_matrix_add(x, self.weight, out)

    def folding_matrix(self, x: Tensor) -> Tensor:
        """W, for a block to fold into a linear map that precedes the skip (the 1x1
        projection shortcut of a pre-activation block); ``x``: that map's input."""
        return self.weight


class ScalarSkip(Skip):
    """y = alpha x with a trainable scalar alpha (init 1); ``weight`` is alpha I."""

    kind = "scalar"

    def __init__(self, channels: int):
        super().__init__(channels)
        self.alpha = nn.Parameter(torch.ones(()))

    @property
    def weight(self) -> Tensor:
        return self.alpha * torch.eye(self.channels, dtype=self.alpha.dtype, device=self.alpha.device)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return self.alpha * x


class OrthogonalSkip(Skip):
    """y = W x with W a learnable orthogonal matrix (``learnable_orth``), kept on O(n) by
    :func:`~.constraint.orthogonal_` (``method``: parametrized ``cayley``/``exp``/
    ``householder``, or retracted ``steepest``/``svd``/``qr``/``newton_schulz``).
    ``init``: ``identity`` (W = I) or ``haar`` (Haar on SO(n), or on O(n) with
    ``special=False``; a reflection can never reach I by moving on the manifold).
    ``lr_scale`` multiplies the learning rate of a retracted step.
    """

    kind = "learnable_orth"

    def __init__(
        self,
        channels: int,
        method: str = orth.DEFAULT_METHOD,
        init: str = "identity",
        special: bool = True,
        lr_scale: float = 1.0,
        ns_steps: int = 100,
        generator: torch.Generator | None = None,
    ):
        super().__init__(channels)
        self.method = resolve_method(method)
        self.init = _choice("learnable_orth init", init, orth.ORTH_INITS)
        self.upkeep = "parametrized" if self.method in orth.PARAMETRIZED_METHODS else "retracted"
        self.weight = nn.Parameter(torch.empty(channels, channels))
        orthogonal_(self, "weight", self.method, init, special=special, lr_scale=lr_scale, ns_steps=ns_steps,
                    generator=generator)
        self._ns_steps = ns_steps  # (an integer >= 1: orthogonal_)

    @property
    def lr_scale(self) -> float:
        """Multiplier of the learning rate of a retracted step (1 for parametrized methods)."""
        spec = recorded_retraction(self, "weight")
        return 1.0 if spec is None else spec.lr_scale

    @property
    def ns_steps(self) -> int:
        return self._ns_steps

    @property
    def shares_upkeep(self) -> bool:
        """Whether a model may compute this skip's W together with others (.batched)."""
        return self.upkeep == "parametrized"

    def matrix(self, x: Tensor) -> Tensor:
        """W for a forward on ``x``: this skip's share of its model's batched upkeep if there
        is one (:func:`~.batched.batch_upkeep`), else, for a parametrized method,
        W = B phi(A), small-matrix work run on one CPU thread (see orthogonal.one_thread)."""
        if self.shared_weight is not None:
            return self.shared_weight
        if self.upkeep == "parametrized":
            with orth.one_thread(x.device.type == "cpu"):
                return self.weight
        return self.weight

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return apply_matrix(x, self.matrix(x))

    def add_to(self, x: Tensor, out: Tensor) -> Tensor:
        self._check(x)
        return apply_matrix_add(x, self.matrix(x), out)

    def folding_matrix(self, x: Tensor) -> Tensor:
        """W, for a block to fold into a linear map that precedes the skip (see MatrixSkip)."""
        return self.matrix(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, method={self.method}, init={self.init}"


# --------------------------------------------------------------------------- registry

SKIP_OPTIONS = (
    "method",
    "orthogonal_map",  # torch's name for a parametrized method (matrix_exp, cayley, householder)
    "update_rule",  # the original project's name for method
    "update_rule_iters",  # ... and for the Newton-Schulz iteration count
    "ns_steps",
    "init",
    "special",
    "lr_scale",
    "rank_fraction",
    "generator",
)


def make_skip(kind: str, channels: int, **options) -> Skip:
    """Build a skip connection of ``kind`` for ``channels`` channels.

    Options (each used by the kinds it concerns, validated for all):
      method / orthogonal_map / update_rule: learnable_orth method, one of ORTH_METHODS
        (default steepest; torch's names matrix_exp, cayley, householder accepted)
      init: learnable_orth init, identity (default) or haar
      special: Haar samples from SO(n) (default True) rather than O(n)
      ns_steps / update_rule_iters: maximum Newton-Schulz iterations (newton_schulz)
      lr_scale: multiplies the learning rate of the retracted step (default 1)
      rank_fraction: rank of the idempotent projector as a fraction of C (default 0.5)
      generator: torch.Generator for random initialisation (default: torch's global RNG)
    """
    return skip(kind, **options)(channels)


class SkipFactory:
    """``channels -> Skip`` for one kind and its options, checked when the factory is made
    (a mistake is caught before any model is built). Made by :func:`skip`."""

    def __init__(self, kind: str, **options):
        _choice("skip kind", kind, SKIP_KINDS)
        unknown = sorted(set(options) - set(SKIP_OPTIONS))
        if unknown:
            raise ValueError(f"unknown skip option(s) {unknown}; allowed: {', '.join(SKIP_OPTIONS)}")
        opts = {k: v for k, v in options.items() if v is not None}
        self.kind = kind
        self.method = resolve_method(opts.get("method"), opts.get("orthogonal_map"), opts.get("update_rule"))
        self.init = _choice("learnable_orth init", opts.get("init", "identity"), orth.ORTH_INITS)
        self.special = opts.get("special", True)
        check_special(self.special)
        self.generator = opts.get("generator")
        if "ns_steps" in opts and "update_rule_iters" in opts and opts["ns_steps"] != opts["update_rule_iters"]:
            raise ValueError(f"ns_steps={opts['ns_steps']} and update_rule_iters={opts['update_rule_iters']} disagree")
        self.ns_steps = opts.get("ns_steps", opts.get("update_rule_iters", 100))
        check_ns_steps(self.ns_steps)
        self.lr_scale = opts.get("lr_scale", 1.0)
        check_lr_scale(self.method if kind == "learnable_orth" else "", self.lr_scale)
        self.rank_fraction = float(opts.get("rank_fraction", 0.5))
        if not 0.0 < self.rank_fraction <= 1.0:
            raise ValueError(f"rank_fraction must be in (0, 1]; got {self.rank_fraction}")

    def __call__(self, channels: int) -> Skip:
        kind, g = self.kind, self.generator
        if kind == "identity":
            return IdentitySkip(channels)
        if kind == "zero":
            return ZeroSkip(channels)
        if kind == "scalar":
            return ScalarSkip(channels)
        if kind == "learnable_orth":
            return OrthogonalSkip(channels, method=self.method, init=self.init, special=self.special,
                                  lr_scale=float(self.lr_scale), ns_steps=self.ns_steps, generator=g)
        if not (isinstance(channels, int) and channels >= 1):
            raise ValueError(f"channels must be a positive int; got {channels!r}")
        if kind == "linear":
            return MatrixSkip(kind, torch.eye(channels), trainable=True)
        if kind == "random":  # the original project's trainable matrix, N(0, 0.02^2) entries
            return MatrixSkip(kind, 0.02 * torch.randn(channels, channels, generator=g), trainable=True)
        if kind == "fixed_orth":  # FIXED_KINDS: these two never train
            return MatrixSkip(kind, initial_orthogonal(channels, "haar", self.special, g), trainable=False)
        # idempotent: orthogonal projector U U^T onto a random subspace of dimension r
        r = max(1, round(self.rank_fraction * channels))
        U = orth.haar_orthogonal(channels, generator=g, special=False, dtype=torch.get_default_dtype())[:, :r]
        return MatrixSkip(kind, U @ U.T, trainable=False)

    def __repr__(self) -> str:
        extra = f", method={self.method!r}, init={self.init!r}" if self.kind == "learnable_orth" else ""
        return f"skip({self.kind!r}{extra})"


def skip_layer_from(kind: str | None, skip_layer: SkipFactory | None, options: dict) -> SkipFactory:
    """What a model builds its skips with: ``skip_layer`` if given (then no kind and no
    options), else ``skip(kind or "identity", **options)``."""
    if skip_layer is None:
        return skip(kind or "identity", **options)
    if kind is not None or options:
        raise ValueError("give skip_layer=skip(kind, **options) or a skip kind with options, not both")
    if not callable(skip_layer):
        raise ValueError(f"skip_layer must be a callable channels -> Skip, e.g. skip('linear'); got {skip_layer!r}")
    return skip_layer


def skip(kind: str, **options) -> SkipFactory:
    """A skip layer factory (timm style): ``skip("learnable_orth", method="cayley")`` is a
    callable ``channels -> Skip``, accepted as ``skip_layer=`` by ``get_model``,
    ``ResidualMLP`` and ``patch_skips``. Options as :func:`make_skip`."""
    return SkipFactory(kind, **options)
