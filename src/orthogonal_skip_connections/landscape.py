"""Loss landscapes and sharpness of a trained classifier.

- **Random directions with filter-wise normalisation** (Li et al. 2018, "Visualizing the
  Loss Landscape of Neural Nets", sec. 4): for every weight with ndim >= 2 (convolutions,
  the linear head) a Gaussian direction d whose every filter (slice along dim 0) is
  rescaled to the norm of the matching filter of the weight, d_i <- d_i ||theta_i|| / ||d_i||;
  the direction is 0 on biases and BatchNorm parameters (their "ignore biasbn").
- **Constrained skip matrices stay on O(n)**. A parametrized skip (``cayley``, ``exp``,
  ``householder``: W = B phi(A)) is moved through its parametrization: its unconstrained
  coordinate X is moved, W staying orthogonal by construction. Torch's maps read only the
  strictly lower triangle of X (A = tril(X) - tril(X)^T for cayley and exp; the
  Householder vectors, with the signs on the diagonal, for householder), so the direction
  is Gaussian there, 0 elsewhere, scaled to ||D||_F = ||W||_F = sqrt(n). A retracted skip
  (``steepest``, ``svd``, ``qr``, ``newton_schulz``: W itself is the parameter) is moved by *perturb-then-retract*:
  W(a, b) = polar(W + a D1 + b D2) (:func:`~.maths.orthogonal.polar`, the nearest
  orthogonal matrix), with D_k a Gaussian projected onto the tangent space at W,
  D = W skew(W^T G), scaled to ||D||_F = ||W||_F (layer-wise: a per-row rescaling would
  leave the tangent space). :func:`skip_handling` says which, per model.
- **A 2-D grid** theta* + a d1 + b d2 around the trained weights, and **the 1-D
  interpolation** (1 - t) theta_0 + t theta* from the initialisation (Goodfellow et al. 2015,
  "Qualitatively characterizing neural network optimization problems"; BatchNorm running
  means interpolated alike, running variances geometrically, retracted skips retracted by
  the polar factor). Each point
  is evaluated on a fixed evaluation subset, in batches, BatchNorm in eval mode, in
  channels_last. Points are evaluated one at a time: K points at once by ``torch.func.vmap``
  over K stacked copies of the weights was 1.24-1.83x slower per point on CPU
  (benchmarks/landscape_grid.py, notes/landscape_two_stage_findings.md).
- **Sharpness**: the top Hessian eigenvalue of the loss by the Lanczos process on
  Hessian-vector products (Pearlmutter 1994; :func:`lanczos`: the largest eigenvalue, with a
  bound on its error from the Ritz residual; on resnet56/digits it met a relative bound of
  1e-3 in 5-7 products where power iteration's relative change of 1e-3 took 6-10), and the trace by
  Hutchinson's estimator tr(H) = E[v^T H v], v Rademacher (Hutchinson 1990), deflated by the
  Lanczos vectors (exact on their span, probes on the rest: :func:`hutchinson_trace`). Both over
  every parameter except the skips' (the coordinates all skip kinds share). When the
  evaluation subset is one batch (``n_eval <= batch_size``), the gradient and its graph are
  built once and every product is one backward through them (:func:`make_hvp`).
- **A cache** (.npz) per run keyed by the checkpoint's weights' hash, the evaluated images'
  hash and every argument, so a re-run only redraws; in a cache dir each key has a file of
  its own (:func:`cache_file`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import forward_ad

from .data.vision import ImageData
from .maths import orthogonal as orth
from .runs import progress_bar, write_npz
from .skips import iter_skips, retracted_parameters
from .train.classifier import classification_sums

__all__ = [
    "eval_subset", "eval_subset_sha256", "channels_last", "Coordinate", "coordinates", "skip_handling", "snapshot",
    "random_direction", "set_point", "set_interpolation", "restore", "evaluate_loss", "grid_axis", "landscape_2d",
    "interpolation_1d",
    "hessian_parameters", "make_hvp", "batchnorm_as_affine", "lanczos", "hutchinson_trace", "sharpness",
    "LandscapeSettings", "landscape_of", "cache_file", "CACHE_VERSION",
]

# 2: running variances interpolated geometrically; 3: Lanczos, and the trace deflated by it;
# 4: keyed by the evaluated images too (a key of 3 named no data: it matched on other images);
# 5: a parametrized skip's direction steps W by ||W||_F (it stepped W sqrt(2) to 2 sqrt(2) times further),
# and the 1-D path holds t = 0 (the default grid of 41 points from -0.25 to 1.25 did not)
CACHE_VERSION = 5


# --------------------------------------------------------------------------- data


def _raw_subset(data: ImageData, n: int, seed: int, split: str) -> tuple[Tensor, Tensor]:
    """The images (as stored) and labels of :func:`eval_subset`, before normalisation."""
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[idx], y[idx]


def eval_subset(data: ImageData, n: int, seed: int = 0, split: str = "train",
                device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """A fixed subset of ``n`` images of ``split`` (all if fewer), normalised as the
    training loader does, without augmentation: (x (n, C, H, W) float32, y (n,))."""
    x, y = _raw_subset(data, n, seed, split)
    mean = torch.tensor(data.mean).view(1, -1, 1, 1) * data.scale
    std = torch.tensor(data.std).view(1, -1, 1, 1) * data.scale
    return ((x.float() - mean) / std).to(device), y.to(device)


def eval_subset_sha256(data: ImageData, n: int, seed: int = 0, split: str = "train") -> str:
    """The hash of what :func:`eval_subset` evaluates on: the chosen images as stored and their
    labels (dtype, shape, bytes) and the normalisation (mean, std, scale). It changes with the
    dataset, the images a data root holds, ``n_train`` (for the train split) and the subset's
    own settings; not with augmentation, download or a root holding the same images."""
    h = hashlib.sha256(repr((data.mean, data.std, data.scale)).encode())
    for t in _raw_subset(data, n, seed, split):
        h.update(f"\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- coordinates


@dataclass
class Coordinate:
    """One tensor of the model's state that a landscape moves: ``role`` is ``filter``
    (a weight with ndim >= 2: filter-normalised directions), ``flat`` (biases, BatchNorm
    parameters: direction 0), ``retracted`` (a retracted orthogonal skip matrix:
    perturb-then-retract), ``parametrized`` (the unconstrained ``original`` X of a torch
    orthogonal parametrization) or ``buffer`` (BatchNorm running statistics: moved only by
    the 1-D interpolation)."""

    name: str
    tensor: Tensor
    role: str


def coordinates(model: nn.Module) -> list[Coordinate]:
    """The :class:`Coordinate` of every parameter and floating-point buffer, in model order.
    A parametrization's fixed base (``...parametrizations.weight.0.base``) is not a
    coordinate: the parametrized skip moves through its ``original``."""
    retracted = {id(p) for p, _ in retracted_parameters(model)}
    out = []
    for name, p in model.named_parameters():
        role = "retracted" if id(p) in retracted else "parametrized" if name.endswith(".original") \
            else "filter" if p.ndim >= 2 else "flat"
        out.append(Coordinate(name, p, role))
    for name, b in model.named_buffers():
        if b.is_floating_point() and not name.endswith(".base"):
            out.append(Coordinate(name, b, "buffer"))
    return out


def skip_handling(model: nn.Module) -> str:
    """How this model's constrained skips are moved (one sentence, for the outputs)."""
    kinds = {}
    for _, s in iter_skips(model):
        upkeep = getattr(s, "upkeep", "none")
        if upkeep != "none":
            kinds.setdefault(upkeep, set()).add(getattr(s, "method", s.kind))
    if not kinds:
        return "no constrained skips (nothing to keep on a manifold)"
    parts = []
    if "retracted" in kinds:
        parts.append(f"retracted skips ({', '.join(sorted(kinds['retracted']))}): perturb-then-retract, "
                     "W(a, b) = polar(W + a D1 + b D2) with D tangent at W and ||D||_F = ||W||_F")
    if "parametrized" in kinds:
        parts.append(f"parametrized skips ({', '.join(sorted(kinds['parametrized']))}): moved through the "
                     "parametrization W = B phi(A): a Gaussian on the strictly lower triangle of its "
                     "unconstrained X, scaled so that its first-order step in W has ||dW||_F = ||W||_F")
    return "; ".join(parts)


@torch.no_grad()
def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A copy of every coordinate's current value."""
    return {c.name: c.tensor.detach().clone() for c in coordinates(model)}


def _generator(seed: int, name: str, k: int) -> torch.Generator:
    """Per (seed, coordinate name, direction index): the same tensor of every model that
    shares a name (zero, identity and orthogonal skips share every convolution) gets the
    same Gaussian draw, so their landscapes are cut along the same directions."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode()) * 31 + k) % 2**63)


@torch.no_grad()
def _parametrization_jvp(model: nn.Module, name: str, X: Tensor, D: Tensor) -> tuple[Tensor, Tensor]:
    """(W, dW): the matrix W = phi(X) of the parametrization whose unconstrained matrix is
    ``name`` (``....parametrizations.weight.original``) at ``X``, and its derivative along ``D``
    (forward mode)."""
    plist = model.get_submodule(name.removesuffix(".original"))

    def phi(x: Tensor) -> Tensor:
        for p in plist:
            x = p(x)
        return x

    with torch.no_grad(), forward_ad.dual_level(), warnings.catch_warnings():
        # forward AD's first use loads torch's own decompositions, by torch.jit.script, which torch
        # 2.14 calls deprecated: a FutureWarning about torch's internals, nothing the user can do
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        W, dW = forward_ad.unpack_dual(phi(forward_ad.make_dual(X, D)))
    return W, dW


def random_direction(model: nn.Module, seed: int = 0, k: int = 0) -> dict[str, Tensor]:
    """Direction ``k`` of ``seed``: filter-normalised for weights, 0 on biases, BatchNorm
    parameters and buffers, tangent and layer-normalised for retracted skips, and for a
    parametrized skip a direction in its unconstrained X whose first-order step in W has the
    norm of W (as a retracted skip's)."""
    out = {}
    for c in coordinates(model):
        theta = c.tensor.detach()
        if c.role in ("flat", "buffer"):
            out[c.name] = torch.zeros_like(theta)
            continue
        g = torch.randn(theta.shape, generator=_generator(seed, c.name, k), dtype=torch.float64)
        theta64 = theta.double().cpu()
        if c.role == "retracted":
            d = theta64 @ orth.skew(theta64.mT @ g)  # tangent at W: W Omega, Omega skew
            d = d * (torch.linalg.matrix_norm(theta64) / torch.linalg.matrix_norm(d).clamp_min(1e-30))
        elif c.role == "parametrized":  # the strictly lower triangle is what torch's maps read
            d = g.tril(-1).to(theta.dtype).to(theta.device)
            # scaled so that the step it makes in W = phi(X) is ||W||_F to first order, as a retracted
            # skip's: ||D||_F itself is not (cayley and exp read A = D - D^T, sqrt(2) ||D||; householder 2 sqrt(2))
            W, dW = _parametrization_jvp(model, c.name, theta, d)
            d = d.double().cpu() * (torch.linalg.matrix_norm(W.double()) /
                                    torch.linalg.matrix_norm(dW.double()).clamp_min(1e-30)).cpu()
        else:
            shape = (-1,) + (1,) * (theta.ndim - 1)
            d_norm = g.flatten(1).norm(dim=1).clamp_min(1e-30).view(shape)  # one norm per filter
            d = g * (theta64.flatten(1).norm(dim=1).view(shape) / d_norm)
        out[c.name] = d.to(theta.dtype).to(theta.device)
    return out


@torch.no_grad()
def _write(values: list[tuple[Coordinate, Tensor]]) -> None:
    """Copy each value into its coordinate; a retracted skip's value is first retracted by
    its polar factor (float64), one batched SVD per matrix size rather than one per skip
    (resnet56: 27 skips of 3 sizes; the same factors, each matrix's own LAPACK call)."""
    retract: dict[tuple, list[tuple[Coordinate, Tensor]]] = {}
    for c, value in values:
        if c.role == "retracted":
            retract.setdefault((tuple(value.shape), value.device), []).append((c, value))
        else:
            c.tensor.copy_(value)
    for group in retract.values():
        factors = orth.polar(torch.stack([v.double() for _, v in group]))
        for (c, _), q in zip(group, factors):
            c.tensor.copy_(q.to(c.tensor.dtype))


@torch.no_grad()
def _reset(coords: list[Coordinate], state: dict[str, Tensor]) -> None:
    """``coords`` set to their values in ``state`` as they are (nothing retracted)."""
    for c in coords:
        c.tensor.copy_(state[c.name])


@torch.no_grad()
def _move(coords: list[Coordinate], base: dict[str, Tensor], directions: list[dict[str, Tensor]],
          coeffs: list[float]) -> None:
    """``coords`` (no buffers) to base + sum_k coeffs[k] directions[k], retracted skips retracted."""
    _write([(c, base[c.name] + sum(float(a) * d[c.name] for a, d in zip(coeffs, directions))) for c in coords])


@torch.no_grad()
def set_point(model: nn.Module, base: dict[str, Tensor], directions: list[dict[str, Tensor]],
              coeffs: list[float]) -> None:
    """Set the model to base + sum_k coeffs[k] directions[k] (buffers: base), retracted
    skips retracted by the polar factor (not when every coefficient is 0: the base itself)."""
    coords = coordinates(model)
    if not any(c != 0 for c in coeffs):
        _reset(coords, base)
        return
    _reset([c for c in coords if c.role == "buffer"], base)
    _move([c for c in coords if c.role != "buffer"], base, directions, coeffs)


@torch.no_grad()
def set_interpolation(model: nn.Module, start: dict[str, Tensor], end: dict[str, Tensor], t: float,
                      coords: list[Coordinate] | None = None) -> None:
    """(1 - t) start + t end on every coordinate (running means included; the retracted
    skips retracted by the polar factor; BatchNorm running variances geometrically,
    v0^(1 - t) v1^t, which stays positive for t outside [0, 1], where a linear
    extrapolation turns negative); exactly ``start`` at t = 0 and ``end`` at t = 1.
    ``coords``: :func:`coordinates` of ``model``, when the caller has them."""
    values = []
    for c in coordinates(model) if coords is None else coords:
        if t == 0 or t == 1:
            c.tensor.copy_(start[c.name] if t == 0 else end[c.name])
        elif c.name.endswith("running_var"):  # geometric: positive for every t, extrapolation too
            c.tensor.copy_(start[c.name].clamp_min(1e-30) ** (1 - t) * end[c.name].clamp_min(1e-30) ** t)
        else:
            values.append((c, (1 - t) * start[c.name] + t * end[c.name]))
    _write(values)


restore = lambda model, state: set_point(model, state, [], [])  # noqa: E731  (the state itself)


@torch.no_grad()
def evaluate_loss(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) of ``model`` in eval mode over (x, y), in batches."""
    was_training = model.training
    model.eval()
    try:  # the sums stay on the device: one host read per evaluation, not two per batch
        loss, correct, _ = classification_sums(model, zip(x.split(batch_size), y.split(batch_size)))
    finally:
        model.train(was_training)
    return loss / len(y), 100.0 * correct / len(y)


def channels_last(model: nn.Module, x: Tensor) -> tuple[nn.Module, Tensor]:
    """``model`` (in place) and images ``x`` in the channels_last layout, the layout the
    classifier loop trains in (``TrainConfig.channels_last``); other inputs unchanged.
    The same numbers up to round-off (1e-7 relative); on CPU (resnet56, 512 digits images,
    one thread) a grid point took 0.67-0.79x its old time (benchmarks/landscape_grid.py); on a
    GPU unmeasured."""
    if x.ndim != 4:
        return model, x
    return model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)


def grid_axis(steps: int, radius: float) -> np.ndarray:
    """``steps`` (odd) points from -radius to radius, the middle one exactly 0."""
    if steps < 1 or steps % 2 == 0:
        raise ValueError(f"steps must be an odd integer >= 1 (so the grid has the trained weights at its centre); "
                         f"got {steps}")
    k = steps // 2
    return radius * np.arange(-k, k + 1, dtype=np.float64) / max(k, 1)


def _moving(coords: list[Coordinate], directions: list[dict[str, Tensor]]) -> list[Coordinate]:
    """The coordinates a grid moves: those (buffers aside) where some direction is non-zero.
    The rest (biases, BatchNorm parameters and statistics under :func:`random_direction`)
    stay at the base the whole grid long, so they are not rewritten at every point."""
    return [c for c in coords if c.role != "buffer" and any(bool(d[c.name].any()) for d in directions)]


def landscape_2d(model, x, y, directions, alphas, betas, batch_size=512, progress=False, desc="grid"):
    """Loss and accuracy (len(alphas), len(betas)) on the plane base + a d1 + b d2 around
    the model's current weights, which are restored afterwards.

    The same numbers as :func:`set_point` then :func:`evaluate_loss` at every point, with
    the per-point work cut to what changes: the coordinates listed once, only those a
    direction moves rewritten, the retracted skips' polar factors batched per size."""
    base = snapshot(model)
    moving = _moving(coordinates(model), directions)
    loss = np.zeros((len(alphas), len(betas)))
    acc = np.zeros_like(loss)
    points = [(i, j) for i in range(len(alphas)) for j in range(len(betas))]
    try:
        for i, j in progress_bar(points, enabled=progress, desc=desc, leave=False):
            coeffs = [alphas[i], betas[j]]
            if any(c != 0 for c in coeffs):
                _move(moving, base, directions, coeffs)
            else:  # the centre: the base itself (a retracted skip is not re-projected)
                _reset(moving, base)
            loss[i, j], acc[i, j] = evaluate_loss(model, x, y, batch_size)
    finally:
        restore(model, base)
    return loss, acc


def interpolation_1d(model, init_state, x, y, ts, batch_size=512, progress=False, desc="1-D"):
    """Loss and accuracy at (1 - t) init + t trained for every t (the model's current
    weights are the trained ones, restored afterwards)."""
    trained = snapshot(model)
    coords = coordinates(model)
    loss, acc = np.zeros(len(ts)), np.zeros(len(ts))
    try:
        for i, t in enumerate(progress_bar(ts, enabled=progress, desc=desc, leave=False)):
            set_interpolation(model, init_state, trained, float(t), coords)
            loss[i], acc[i] = evaluate_loss(model, x, y, batch_size)
    finally:
        restore(model, trained)
    return loss, acc


# --------------------------------------------------------------------------- sharpness


def hessian_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every trainable parameter except those of skip connections."""
    in_skips = {id(p) for _, s in iter_skips(model) for p in s.parameters()}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in in_skips]


def make_hvp(loss_parts: list[Callable[[], Tensor]], params: list[Tensor], reuse_graph: bool | None = None):
    """v -> H v for the Hessian H of sum_k loss_parts[k]() w.r.t. ``params`` (v and H v:
    lists shaped like params), by differentiating g . v, g the gradient built with its own
    graph (Pearlmutter 1994: reverse over reverse).

    ``reuse_graph`` (default: when there is one part): g and its graph are built once, on
    the first call, and every later product is one backward of g . v through them
    (``retain_graph``), not a forward, a backward and a double backward each: the same H v
    bit for bit on CPU, 0.58-0.73x the time per product and 0.76-0.80x per ``sharpness()``
    call (resnet56, 512 digits images, one thread; benchmarks/landscape_hessian.py; on a GPU
    unmeasured, the same work removed). Otherwise each product rebuilds every part's
    graph in turn, so that one part's graph is alive at a time: the memory bound that
    splitting the data into parts is for. Neither changes the parameters or their ``.grad``."""
    reuse = len(loss_parts) == 1 if reuse_graph is None else reuse_graph
    kept: list[tuple[Tensor, ...]] = []  # per part: g, with its graph, when reused

    def gradient(part: Callable[[], Tensor]) -> tuple[Tensor, ...]:
        return torch.autograd.grad(part(), params, create_graph=True, allow_unused=True, materialize_grads=True)

    def hvp(v: list[Tensor]) -> list[Tensor]:
        if reuse and not kept:
            kept.extend(gradient(part) for part in loss_parts)
        out = [torch.zeros_like(p) for p in params]
        for k, part in enumerate(loss_parts):
            grads = kept[k] if reuse else gradient(part)
            dot = sum((g * vi).sum() for g, vi in zip(grads, v))
            if not dot.requires_grad:  # the loss is linear in params: H = 0
                continue
            for o, h in zip(out, torch.autograd.grad(dot, params, retain_graph=reuse, allow_unused=True,
                                                     materialize_grads=True)):
                o += h.detach()
        return out

    return hvp


def _dot(a: list[Tensor], b: list[Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def lanczos(hvp, params: list[Tensor], iters: int = 50, tol: float = 1e-3, seed: int = 0,
            keep_basis: bool = False, min_iters: int = 0) -> dict:
    """Largest (algebraic) eigenvalue of the symmetric Hessian H behind ``hvp`` by the
    Lanczos process with full reorthogonalisation (Lanczos 1950; Golub & Van Loan, *Matrix
    Computations*, sec. 10.1). After k products, Q_k^T H Q_k = T_k is tridiagonal (alpha_j on
    its diagonal, beta_j beside it, Q_k orthonormal, q_1 Gaussian); the largest eigenvalue
    theta of T_k, a Ritz value, approaches lambda_max(H) from below, and its Ritz vector
    y = Q_k s has the residual ||H y - theta y|| = beta_k |s_k| (s_k: the last entry of the
    unit eigenvector s of T_k), so some eigenvalue of H lies within that bound of theta.
    Stopped when the bound is <= tol |theta| (not before ``min_iters`` products), or when the
    Krylov space is exhausted (beta_k = 0: theta is exact). The vectors are kept in the
    parameters' dtype and device (memory: (iters + 1) x the parameter count), the scalars in
    float64.

    Returns ``eigenvalue`` (theta), ``residual`` (the bound over |theta|), ``iterations``
    (products), ``converged`` and ``history`` (theta after each product); with
    ``keep_basis`` also ``basis`` (Q_k as k x N rows, flat in the order of ``params``) and
    ``basis_trace`` (tr T_k = tr(Q_k^T H Q_k), the sum of the alpha_j), which
    :func:`hutchinson_trace` can deflate by."""
    sizes, shapes = [p.numel() for p in params], [p.shape for p in params]
    n = sum(sizes)
    iters = min(iters, n)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, generator=g, dtype=params[0].dtype).to(params[0].device)
    Q = torch.empty(iters + 1, n, dtype=q.dtype, device=q.device)  # rows: the Lanczos vectors q_1, q_2, ...
    Q[0] = q / torch.linalg.vector_norm(q)
    alphas: list[float] = []
    betas: list[float] = []
    history: list[float] = []
    theta, bound = float("nan"), float("inf")
    for k in range(iters):
        w = torch.cat([h.reshape(-1) for h in hvp([x.view(s) for x, s in zip(Q[k].split(sizes), shapes)])])
        alphas.append(float(Q[k].double() @ w.double()))
        for _ in range(2):  # against every earlier vector, twice ("twice is enough": Giraud et al. 2005)
            w -= Q[: k + 1].T @ (Q[: k + 1] @ w)
        beta = float(torch.linalg.vector_norm(w.double()))
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        evals, evecs = np.linalg.eigh(T)
        theta, bound = float(evals[-1]), beta * abs(float(evecs[-1, -1]))
        history.append(theta)
        if (bound <= tol * abs(theta) and k + 1 >= min_iters) or beta == 0.0:
            break
        Q[k + 1] = w / beta
        betas.append(beta)
    relative = bound / abs(theta) if theta != 0 else float("inf")
    out = {"eigenvalue": theta, "residual": relative, "iterations": len(history),
           "converged": relative <= tol or bound == 0.0, "history": history}
    if keep_basis:
        out.update(basis=Q[: len(alphas)], basis_trace=float(sum(alphas)))
    return out


def hutchinson_trace(hvp, params: list[Tensor], samples: int = 20, seed: int = 0, basis: Tensor | None = None,
                     basis_trace: float = 0.0) -> dict:
    """tr(H) ~ mean of v^T H v over Rademacher v (Hutchinson 1990): ``trace`` and its
    standard error ``trace_se`` over the ``samples`` draws.

    Deflated by ``basis`` (Q: k x N orthonormal rows, flat in the order of ``params``, drawn
    independently of the probes, e.g. :func:`lanczos`'s Krylov vectors) with ``basis_trace``
    = tr(Q H Q^T): tr(H) = tr(Q H Q^T) + tr(P H P), P = I - Q^T Q, the second term by the same
    probes projected, P v. Still unbiased, and its variance is only that of P H P: the
    dominant curvature directions, which Krylov vectors hold, no longer add noise (the idea of
    Hutch++, Meyer et al. 2021, with the Krylov space as the sketch). On resnet56/digits, 20
    probes, a basis of 10 Lanczos vectors cut the standard error 2-9x (notes/
    landscape_two_stage_findings.md)."""
    g = torch.Generator().manual_seed(seed)
    sizes, shapes = [p.numel() for p in params], [p.shape for p in params]
    values = []
    for _ in range(samples):
        v = [(torch.randint(0, 2, p.shape, generator=g) * 2 - 1).to(p.dtype).to(p.device) for p in params]
        if basis is not None and len(basis):
            flat = torch.cat([x.reshape(-1) for x in v])
            flat = flat - basis.T @ (basis @ flat)  # P v
            v = [x.view(s) for x, s in zip(flat.split(sizes), shapes)]
        values.append(_dot(v, hvp(v)))
    values = np.asarray(values) + (basis_trace if basis is not None else 0.0)
    se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    return {"trace": float(values.mean()), "trace_se": se, "samples": len(values),
            "trace_deflation": 0 if basis is None else len(basis)}


@contextlib.contextmanager
def batchnorm_as_affine(model: nn.Module):
    """Inside the block, every BatchNorm of ``model`` in eval mode with running statistics
    computes its output as x * s + t, s = weight / sqrt(running_var + eps), t = bias -
    running_mean * s: the same function of x, weight and bias (to float round-off), whose
    double backward is two elementwise products instead of BatchNorm's general one. resnet56
    on 512 digits images, one thread, reused graph (benchmarks/landscape_hessian.py): a
    Hessian-vector product 0.77-0.87x the time, a whole ``sharpness()`` call 0.88x; H v within
    7e-7 relative; the call's peak memory +12 % (the graph keeps more elementwise terms)."""
    patched = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training and m.running_var is not None:
            m.forward = _affine_batchnorm(m)  # an instance attribute: nn.Module.__call__ finds it first
            patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def _affine_batchnorm(m: nn.modules.batchnorm._BatchNorm) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:  # x (N, C, *spatial)
        s = torch.rsqrt(m.running_var + m.eps)
        if m.weight is not None:
            s = m.weight * s
        t = -m.running_mean * s if m.bias is None else m.bias - m.running_mean * s
        shape = (-1,) + (1,) * (x.ndim - 2)
        return x * s.view(shape) + t.view(shape)

    return forward


def sharpness(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512, iters: int = 50, tol: float = 1e-3,
              samples: int = 20, seed: int = 0) -> dict:
    """Top Hessian eigenvalue (Lanczos) and trace (Hutchinson, deflated by the Lanczos vectors) of the mean
    cross-entropy over (x, y), BatchNorm in eval mode, w.r.t. :func:`hessian_parameters`.
    (x, y) is one loss part per ``batch_size`` images; with one part the Hessian-vector
    products reuse one gradient graph (:func:`make_hvp`), which lives until the call returns.
    The products run in the layout of ``model`` and ``x`` (channels_last in
    :func:`landscape_of`), with BatchNorm written as its affine map
    (:func:`batchnorm_as_affine`)."""
    was_training = model.training
    model.eval()
    params = hessian_parameters(model)
    n = len(y)
    parts = [lambda xb=xb, yb=yb: F.cross_entropy(model(xb).float(), yb, reduction="sum") / n
             for xb, yb in zip(x.split(batch_size), y.split(batch_size))]
    hvp = make_hvp(parts, params)
    try:
        with batchnorm_as_affine(model):
            # the Krylov basis deflates the trace too: at least samples / 2 vectors (resnet56/digits, 20
            # probes: 10 vectors left half the standard error of 5; notes/landscape_two_stage_findings.md)
            top = lanczos(hvp, params, iters, tol, seed, keep_basis=True, min_iters=min(iters, samples // 2))
            trace = hutchinson_trace(hvp, params, samples, seed + 1, top.pop("basis"), top.pop("basis_trace"))
    finally:
        model.train(was_training)
    return {"top_eigenvalue": top["eigenvalue"], "lanczos_iterations": top["iterations"],
            "lanczos_converged": top["converged"], "lanczos_residual": top["residual"],
            "lanczos_history": top["history"], **trace, "hessian_parameters": int(sum(p.numel() for p in params))}


# --------------------------------------------------------------------------- one model, cached


@dataclass
class LandscapeSettings:
    """Every argument a landscape's numbers depend on (the cache key, with the checkpoint's
    and the evaluated images' hashes)."""

    steps: int = 21
    radius: float = 1.0
    steps_1d: int = 41
    t_min: float = -0.25
    t_max: float = 1.25
    n_eval: int = 512
    eval_split: str = "train"
    eval_seed: int = 0
    direction_seed: int = 0
    batch_size: int = 512
    hessian_iters: int = 50
    hessian_tol: float = 1e-3
    hutchinson_samples: int = 20


def _key(settings: LandscapeSettings, checkpoint_sha256: str, init_seed: int, eval_data_sha256: str) -> dict:
    """The cache key: the weights, the init seed, the evaluated images (:func:`eval_subset_sha256`)
    and every setting but batch_size. Not the device nor the thread count: like batch_size,
    they change only the rounding (on CUDA, of cuDNN's default TF32 convolutions too), not
    what is computed."""
    key = asdict(settings)
    key.pop("batch_size")  # changes nothing but round-off
    return {"version": CACHE_VERSION, "checkpoint_sha256": checkpoint_sha256, "init_seed": init_seed,
            "eval_data_sha256": eval_data_sha256, **key}


def cache_file(cache_dir: Path, key: dict) -> Path:
    """``cache_dir``/<the first 16 hex digits of the sha256 of ``key``>.npz: one file per key,
    so the same weights on other images or settings keep an entry each instead of overwriting
    one (the file's own copy of the key is still checked when it is read)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / f"{digest[:16]}.npz"


def _load_cache(path: Path, key: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["key"])) != key:
                return None
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError):
        return None  # unreadable: computed again


def landscape_of(model: nn.Module, init_model: nn.Module, data: ImageData, settings: LandscapeSettings,
                 checkpoint_sha256: str, init_seed: int, cache_dir: Path | None = None,
                 device: torch.device | str = "cpu", progress: bool = False, desc: str = "") -> dict:
    """Everything about one trained model: the 2-D grid (``alphas``, ``betas``, ``loss``,
    ``acc``), the 1-D interpolation from ``init_model`` (``ts``, ``loss_1d``, ``acc_1d``),
    the centre's loss and accuracy, and the sharpness numbers. With ``cache_dir`` the result
    is read from the key's own file there (:func:`cache_file`; :func:`_key`: the weights, the
    evaluated images and every setting) when the key it holds matches, with no forward pass,
    else computed and saved (``cached`` says which).
    Every evaluation runs in channels_last (:func:`channels_last`): ``model``
    is left in that layout."""
    s = settings
    key = _key(s, checkpoint_sha256, init_seed, eval_subset_sha256(data, s.n_eval, s.eval_seed, s.eval_split))
    cache_path = None if cache_dir is None else cache_file(cache_dir, key)
    if cache_path is not None:
        hit = _load_cache(Path(cache_path), key)
        if hit is not None:
            out = _unpack(hit)
            out["cached"] = True
            return out
    model = model.to(device).eval()
    x, y = eval_subset(data, s.n_eval, s.eval_seed, s.eval_split, device)
    model, x = channels_last(model, x)
    alphas, betas = grid_axis(s.steps, s.radius), grid_axis(s.steps, s.radius)
    ts = np.linspace(s.t_min, s.t_max, s.steps_1d)
    for end in (0.0, 1.0):  # the initial and the trained weights themselves, where the grid misses them
        if not np.any(np.isclose(ts, end)):
            ts = np.sort(np.append(ts, end))
    directions = [random_direction(model, s.direction_seed, k) for k in (0, 1)]
    centre = evaluate_loss(model, x, y, s.batch_size)
    loss, acc = landscape_2d(model, x, y, directions, alphas, betas, s.batch_size, progress, f"{desc} 2-D")
    init_state = snapshot(init_model.to(device))
    loss_1d, acc_1d = interpolation_1d(model, init_state, x, y, ts, s.batch_size, progress, f"{desc} 1-D")
    sharp = sharpness(model, x, y, s.batch_size, s.hessian_iters, s.hessian_tol, s.hutchinson_samples,
                      s.direction_seed)
    arrays = {
        "key": np.array(json.dumps(key, sort_keys=True)), "alphas": alphas, "betas": betas, "loss": loss, "acc": acc,
        "ts": ts, "loss_1d": loss_1d, "acc_1d": acc_1d, "centre_loss": np.array(centre[0]),
        "centre_acc": np.array(centre[1]), "direction_seed": np.array(s.direction_seed),
        "checkpoint_sha256": np.array(checkpoint_sha256), "skip_handling": np.array(skip_handling(model)),
        "lanczos_history": np.asarray(sharp.pop("lanczos_history")),
        "sharpness": np.array(json.dumps(sharp)),
    }
    if cache_path is not None:
        write_npz(Path(cache_path), arrays)
    out = _unpack(arrays)
    out["cached"] = False
    return out


def _unpack(z: dict) -> dict:
    out = {k: (v.item() if v.ndim == 0 else v) for k, v in z.items() if k not in ("key", "sharpness")}
    out["key"] = json.loads(str(z["key"]))
    out.update(json.loads(str(z["sharpness"])))
    return out
