"""Residual modes: how a block combines its skip path with its branch.

Every residual block of this library computes a *stream* ``s = skip(shortcut(x))`` (the
skip of :mod:`.contract` applied to the input, after the projection shortcut where the
shape changes) and an *update* ``f = branch(x)``, then combines them with one of:

``add`` (default)
    ``y = s + f``: the usual residual addition (He et al. 2016).

``orthogonal_update``
    ``y = s + f_perp`` with ``f_perp = f - (<s, f> / (<s, s> + eps)) s``: the update's
    component parallel to the stream is removed (Oh et al. 2025, "Revisiting Residual
    Connections: Orthogonal Updates for Stable and Efficient Deep Networks",
    arXiv 2505.11881; official code github.com/BootsofLagrangian/ortho-residual,
    ``connect.py``). As there, the stream is what the block adds to (their ``shortcut(x)``;
    here ``skip(shortcut(x))``, so for a matrix skip W the projection is onto ``W x``),
    ``eps = 1e-6`` is added to ``<s, s>`` and both inner products are taken in float32
    (the scale is cast back to the input's dtype). ``orthogonal_method`` chooses the
    group the inner products run over:

    - ``channel`` (the official default, "feature-wise"): over the channels at each
      position: dim 1 of a conv map ``(N, C, H, W)`` (one projection per pixel), the last
      dim of tokens ``(N, T, C)`` (one per token) or of vectors ``(N, C)``.
    - ``global``: over everything but the batch dim: ``C*H*W`` of a conv map (as the
      official ``_orthogonal_global``, which flattens from dim 1), ``T*C`` of tokens, ``C``
      of vectors (there it equals ``channel``). For tokens the official ViT always uses
      ``channel`` (``ConnLoggerMixin._connect_and_collect`` overrides the method for
      attention and MLP outputs); ``global`` on tokens is this library's extension.

``rotation``
    Norm-preserving: the stream is rotated in the plane spanned by ``s`` and ``f``, towards
    ``f_perp`` (the exact projection, no eps), by the angle ``theta = atan(||f_perp|| / ||s||)``
    in ``[0, pi/2)``, so ``||y|| = ||s||`` in every group (``channel``: every position /
    token; ``global``: every sample). With ``u = f_perp / ||f_perp||`` and
    ``tan(theta) = ||f_perp|| / ||s||``, ``cos(theta) = ||s|| / r`` and
    ``sin(theta) = ||f_perp|| / r`` where ``r = sqrt(||s||^2 + ||f_perp||^2) = ||s + f_perp||``
    (Pythagoras, as ``f_perp`` is orthogonal to ``s``), hence::

        y = cos(theta) s + sin(theta) ||s|| u = (||s|| / r) (s + f_perp)
          = ||s|| (s + f_perp) / ||s + f_perp||

    i.e. the orthogonal update ``s + f_perp`` (above), rescaled back to the stream's norm.
    That is how it is computed (no trigonometry, no division by ``||f_perp||``, smooth at
    ``f_perp = 0`` where ``y = s``). In the language of Riemannian optimisation (Absil,
    Mahony & Sepulchre 2008, "Optimization Algorithms on Matrix Manifolds", sec. 4.1, whose
    first example of a retraction is the sphere's ``(x + xi) / ||x + xi||``) it is that
    retraction of the tangent step ``f_perp`` on the sphere of radius ``||s||``; the sphere's
    exponential map is the rotation by ``||f_perp|| / ||s||`` instead (the same to first
    order in ``theta``).

    Where it comes from. The "Orthogonal Transformer" (github.com/cutethanks/orthogonal-transformer,
    README, "Orthogonal Transformer update rule": ``x' = exp(B) x`` with the bivector
    ``B = x f_perp^T - f_perp x^T``) rotates by the unbounded angle ``||f_perp|| / sqrt(d)``
    with ``||x|| = sqrt(d)`` (the exponential map). Add-then-renormalise to a fixed norm is
    also nGPT's update (Loshchilov et al. 2024, "nGPT: Normalized Transformer with
    Representation Learning on the Hypersphere", arXiv 2410.01131, ``h <- Norm(h + alpha
    (h_M - h))``), there with a learned step and to the unit norm. Bounding the angle with
    ``atan`` and keeping each group's own norm ``||s||`` is this library's choice. Until
    2026-11-30 this mode used the exponential map, ``theta = ||f_perp|| / ||s||`` unbounded,
    ``y = cos(theta) s + (sin(theta) / theta) f_perp``, which turned streams by several
    radians per block (preact_resnet20 at initialisation: median 2.4 rad, maximum 8.7) and
    made preact_resnet20 at SGD lr 0.1 unstable on digits (84.72 +- 28.11 % over 5 seeds;
    97.61 +- 0.54 with ``atan``, the same seeds; notes/residual_modes_findings.md, where the
    old numbers are labelled with the old angle). With ``atan`` one block turns the stream
    by less than a right angle however large its branch output. It does not make a stream
    whose norm is small against the branch outputs useful: the digits ViT at AdamW lr 3e-3
    (tokens at norm ~0.4, branch outputs ~4) trains with neither angle; with ``atan`` its
    angles saturate near ``pi/2``, each block then all but replaces the stream. Hence
    ``stream_norm`` (below), which puts the stream at a fixed scale first.

    Edge cases: ``f`` parallel to ``s`` gives ``theta = 0`` and ``y = s``; where the stream
    is exactly zero (the ``zero`` skip kind, or a dead position) there is no plane to rotate
    in, and ``y = f`` there (the plain update), so a block without a skip path is its branch
    in every mode. Computed in float32 at least (bf16/fp16 inputs are cast back).

Blocks own a :class:`Residual` (no parameters, no buffers: state_dicts are unchanged);
``residual_combine`` is the same as a function.

The stream's scale under ``rotation`` (``stream_norm``)
    ``rotation`` keeps every group's norm, so a stream keeps, through every block, the norm
    it enters the first block with, while the branches' outputs grow as they learn. Only
    the ratio ``||f_perp|| / ||s||`` matters (the angle): where the stream starts small
    against the branches the angles saturate near ``pi/2`` and each block all but replaces
    the stream (the digits ViT at AdamW lr 3e-3: tokens at norm ~0.44 from the embeddings'
    std-0.02 initialisation, branch outputs ~4.3; notes/residual_modes_findings.md). With
    ``stream_norm="sqrt_d"`` a model rescales its stream once, before the first block, so
    that every group has norm ``sqrt(n)``, ``n`` its number of entries (one unit per entry,
    the scale LayerNorm gives): ``channel`` groups (each token) to ``sqrt(d)`` for width
    ``d``, ``global`` groups (each sample's ``T x d`` tokens) to ``sqrt(T d)``. That is the
    Orthogonal Transformer's ``||x|| = sqrt(d)`` (github.com/cutethanks/orthogonal-transformer,
    README); nGPT (Loshchilov et al. 2024, arXiv 2410.01131) keeps its hidden vectors on the
    unit sphere instead and learns scaling factors (attention logits, MLP units, output
    logits) and per-block step sizes; here the pre-norm LayerNorms' and the final
    LayerNorm's affine scales play roughly that part. A group that is exactly zero stays
    zero (no direction to keep). ``sqrt_d`` is the default under ``rotation``
    only (:func:`resolve_stream_norm`). ``add`` and ``orthogonal_update`` do not keep the
    stream's norm (``||s + f_perp|| >= ||s||``): their stream grows with the branches, so
    they do not need it and stay as they were by default; ``sqrt_d`` may be asked for there
    as a control (is a gain of rotation with ``sqrt_d`` the rotation's, or the rescaled
    embeddings'?): the stream then starts at ``sqrt(n)`` and grows from there. Measured on
    the digits ViT at lr 3e-3 (5 seeds): rotation with ``sqrt_d`` 97.83 +- 0.99 % (at chance
    without), add 93.67 +- 1.19, add with ``sqrt_d`` 97.22 +- 0.86: the rescaling, not the
    rotation, makes most of the difference there.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["RESIDUAL_MODES", "ORTHOGONAL_METHODS", "DEFAULT_EPS", "Residual", "residual_combine", "orthogonal_part",
           "check_residual_mode", "rotation_angle", "STREAM_NORMS", "resolve_stream_norm", "StreamNorm",
           "rescale_stream"]

RESIDUAL_MODES = ("add", "orthogonal_update", "rotation")
ORTHOGONAL_METHODS = ("channel", "global")
DEFAULT_EPS = 1e-6  # Oh et al.'s residual_eps
STREAM_NORMS = ("sqrt_d", "none")


def check_residual_mode(mode: str, method: str = "channel", eps: float = DEFAULT_EPS) -> None:
    """One-line ValueError for an unknown mode or method, or a bad eps."""
    if mode not in RESIDUAL_MODES:
        raise ValueError(f"unknown residual_mode {mode!r}; allowed: {', '.join(RESIDUAL_MODES)}")
    if method not in ORTHOGONAL_METHODS:
        raise ValueError(f"unknown orthogonal_method {method!r}; allowed: {', '.join(ORTHOGONAL_METHODS)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < math.inf:
        raise ValueError(f"residual eps must be a finite number >= 0; got {eps!r}")


def _group_dims(x: Tensor, method: str) -> tuple[int, ...]:
    """The dims one inner product runs over (see the module docstring)."""
    if x.ndim < 2:
        raise ValueError(f"a residual stream needs a batch dim and a channel dim; got shape {tuple(x.shape)}")
    if method == "global":
        return tuple(range(1, x.ndim))
    return (1,) if x.ndim == 4 else (x.ndim - 1,)  # channels first for conv maps, last otherwise


def _dot(a: Tensor, b: Tensor, dims: tuple[int, ...]) -> Tensor:
    """<a, b> over ``dims`` (kept), in float32 at least."""
    dtype = torch.promote_types(a.dtype, torch.float32)
    return (a.to(dtype) * b.to(dtype)).sum(dims, keepdim=True)


def orthogonal_part(stream: Tensor, update: Tensor, method: str = "channel", eps: float = DEFAULT_EPS) -> Tensor:
    """f_perp = f - (<s, f> / (<s, s> + eps)) s, grouped by ``method`` (Oh et al. 2025)."""
    dims = _group_dims(stream, method)
    denom = _dot(stream, stream, dims) + eps
    # with eps = 0 a zero stream would be 0 / 0: there <s, f> = 0 and f_perp = f, as with eps > 0
    scale = _dot(stream, update, dims) / torch.where(denom > 0, denom, torch.ones_like(denom))
    return update - scale.to(update.dtype) * stream


def _rotate(stream: Tensor, update: Tensor, method: str) -> Tensor:
    """``||s|| (s + f_perp) / ||s + f_perp||`` per group: the rotation by
    ``atan(||f_perp|| / ||s||)`` (module docstring); ``f`` where ``s = 0``."""
    dims = _group_dims(stream, method)
    ss = _dot(stream, stream, dims)  # ||s||^2, float32 or wider
    nonzero = ss > 0
    # where s = 0 the rotated branch is discarded by torch.where, but its gradient is still
    # computed (and multiplied by 0): every division and sqrt there must stay finite, so it
    # runs on ss := 1 (and on ||s + f_perp||^2 >= ||s||^2 = 1)
    ss_safe = torch.where(nonzero, ss, torch.ones_like(ss))
    f = update.to(ss.dtype)
    s = stream.to(ss.dtype)
    moved = s + (f - (_dot(s, f, dims) / ss_safe) * s)  # s + f_perp
    mm = _dot(moved, moved, dims)  # = ||s||^2 + ||f_perp||^2 >= ||s||^2 > 0 (up to rounding)
    # cos(theta) (s + f_perp); the maximum only matters where s = 0 and f = 0 (mm = 0 there).
    # Float32 squares: finite for norms up to ~1e19.
    rotated = torch.sqrt(ss_safe / torch.maximum(mm, ss_safe * 0.5)) * moved
    return torch.where(nonzero, rotated, f).to(torch.promote_types(stream.dtype, update.dtype))


def rotation_angle(stream: Tensor, update: Tensor, method: str = "channel") -> Tensor:
    """The angle ``theta = atan(||f_perp|| / ||s||)`` by which ``rotation`` turns each group
    (dims kept; 0 where the stream is zero), for diagnostics."""
    dims = _group_dims(stream, method)
    ss = _dot(stream, stream, dims)
    s, f = stream.to(ss.dtype), update.to(ss.dtype)
    ss_safe = torch.where(ss > 0, ss, torch.ones_like(ss))
    f_perp = f - (_dot(s, f, dims) / ss_safe) * s
    theta = torch.atan2(_dot(f_perp, f_perp, dims).sqrt(), ss.sqrt())
    return torch.where(ss > 0, theta, torch.zeros_like(theta))


def residual_combine(mode: str, stream: Tensor, update: Tensor, method: str = "channel",
                     eps: float = DEFAULT_EPS) -> Tensor:
    """Combine a block's stream ``s`` and update ``f`` (same shape) by ``mode``; see the
    module docstring for the three modes and the ``method`` grouping."""
    if mode == "add":
        return update + stream  # the order of the original blocks (relu(out + skip(...)))
    if stream.shape != update.shape:
        raise ValueError(f"stream {tuple(stream.shape)} and update {tuple(update.shape)} differ in shape")
    if mode == "orthogonal_update":
        return stream + orthogonal_part(stream, update, method, eps)
    if mode == "rotation":
        return _rotate(stream, update, method)
    check_residual_mode(mode, method, eps)
    raise AssertionError("unreachable")


class Residual(nn.Module):
    """``Residual(mode, method, eps)(stream, update)``: :func:`residual_combine` as a
    module a block owns (no parameters or buffers)."""

    def __init__(self, mode: str = "add", method: str = "channel", eps: float = DEFAULT_EPS):
        super().__init__()
        check_residual_mode(mode, method, eps)
        self.mode, self.method, self.eps = mode, method, float(eps)

    def forward(self, stream: Tensor, update: Tensor) -> Tensor:
        return residual_combine(self.mode, stream, update, self.method, self.eps)

    def with_skip(self, skip: nn.Module, x: Tensor, update: Tensor) -> Tensor:
        """``self(skip(x), update)``; in ``add`` mode ``skip.add_to`` fuses a matrix skip's
        product with the sum (unless a forward hook watches the skip or this module)."""
        from .contract import observed

        if self.mode == "add" and hasattr(skip, "add_to") and not observed(skip, self):
            return skip.add_to(x, update)
        return self(skip(x), update)

    def extra_repr(self) -> str:
        if self.mode == "add":
            return "mode=add"
        extra = f", eps={self.eps:g}" if self.mode == "orthogonal_update" else ""
        return f"mode={self.mode}, method={self.method}{extra}"


def resolve_stream_norm(stream_norm: str | None, mode: str) -> str:
    """``stream_norm`` as given, or (None) the mode's default: ``sqrt_d`` under ``rotation``,
    ``none`` otherwise (module docstring). One-line ValueError for an unknown value."""
    if stream_norm is None:
        return "sqrt_d" if mode == "rotation" else "none"
    if stream_norm not in STREAM_NORMS:
        raise ValueError(f"unknown stream_norm {stream_norm!r}; allowed: {', '.join(STREAM_NORMS)} (or null: sqrt_d "
                         f"under residual_mode=rotation, none otherwise)")
    return stream_norm


def rescale_stream(x: Tensor, method: str = "channel") -> Tensor:
    """``x`` with every group (``method``, as the residual modes group) rescaled to norm
    ``sqrt(n)``, ``n`` the group's number of entries: ``sqrt(n) x / ||x||``; a zero group
    stays zero. Computed in float32 at least, returned in ``x``'s dtype."""
    dims = _group_dims(x, method)
    n = 1
    for d in dims:
        n *= x.shape[d]
    ss = _dot(x, x, dims)
    nonzero = ss > 0
    scale = torch.where(nonzero, torch.rsqrt(torch.where(nonzero, ss, torch.ones_like(ss)) / n), torch.zeros_like(ss))
    return (x.to(ss.dtype) * scale).to(x.dtype)


class StreamNorm(nn.Module):
    """:func:`rescale_stream` as a module (no parameters or buffers): what a model applies
    to its stream before the first block under ``stream_norm="sqrt_d"`` (checks ``method``)."""

    def __init__(self, method: str = "channel"):
        super().__init__()
        check_residual_mode("rotation", method)
        self.method = method

    def forward(self, x: Tensor) -> Tensor:
        return rescale_stream(x, self.method)

    def extra_repr(self) -> str:
        return f"norm=sqrt(n), method={self.method}"
