"""Per-block measurements of a model's skip connections.

For each skip matrix W (C x C): ||W^T W - I||_F (distance from O(n)), ||W - I||_F and
||W - I||_2 (distance from the identity skip) and sign(det W) (+1 on SO(n); a
reflection, -1, can never reach I by moving continuously on O(n)); given the matrices W_0
at the start of training (:func:`skip_weights`), also ||W - W_0||_F, how far training moved
it (for a skip started away from I, e.g. a Haar sample, not its distance from I).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .maths import orthogonal as orth
from .models.stack import SeedStack
from .runs import check_module
from .skips import iter_skips
from .skips.constraint import _TORCH_NAMES, OrthogonalMap, recorded_retraction

__all__ = ["skip_diagnostics", "skip_weights", "summarize_skips", "started_away_from_identity", "orthogonal_weights"]


@torch.no_grad()
def skip_diagnostics(model: nn.Module, start: dict[str, Tensor] | None = None) -> list[dict]:
    """One dict per skip, in model order: name, kind, method, and for kinds with a matrix
    orth_error, identity_distance, identity_distance_spectral, det_sign (else None). With
    ``start`` (:func:`skip_weights` at the start of training), also start_distance =
    ||W - W_0||_F (None for a skip without a matrix or not in ``start``)."""
    check_module("skip_diagnostics", model)
    with orth.one_thread():
        return [_diagnose(name, skip, start) for name, skip in iter_skips(model)]


@torch.no_grad()
def skip_weights(model: nn.Module) -> dict[str, Tensor]:
    """name -> a float64 copy, on the CPU, of each skip's matrix (skips without one left out)."""
    check_module("skip_weights", model)
    return {name: skip.weight.detach().double().cpu() for name, skip in iter_skips(model)
            if skip.weight is not None}


def _diagnose(name: str, skip, start: dict[str, Tensor] | None) -> dict:
    row = {"name": name, "kind": skip.kind, "method": getattr(skip, "method", None)}
    W = skip.weight
    if W is None:
        row.update(orth_error=None, identity_distance=None, identity_distance_spectral=None, det_sign=None)
        if start is not None:
            row["start_distance"] = None
        return row
    W = W.detach().double()  # measure in float64: round-off of fp32 weights is the signal here
    row.update(
        orth_error=float(orth.orth_error(W)),
        identity_distance=float(orth.identity_distance(W)),
        identity_distance_spectral=float(orth.identity_distance_spectral(W)),
        det_sign=int(torch.linalg.slogdet(W).sign),
    )
    if start is not None:
        W0 = start.get(name)
        row["start_distance"] = None if W0 is None else float(torch.linalg.norm(W - W0.to(W.device)))
    return row


@torch.no_grad()
def orthogonal_weights(model: nn.Module) -> list[dict]:
    """Every weight of ``model`` this library keeps on O(n), in model order: the orthogonal
    skips' and any made orthogonal with ``orthogonal_(module, name)`` (which
    :func:`skip_diagnostics`, one row per skip, does not list). One dict each: name (as in
    ``model.state_dict()``, without torch's ``parametrizations.`` path), method, n and
    orth_error = ||W^T W - I||_F in float64 (the largest over a seed stack's leading axes)."""
    check_module("orthogonal_weights", model)
    rows = []
    with orth.one_thread():
        for prefix, module in model.named_modules():
            name_of = (lambda attr: f"{prefix}.{attr}" if prefix else attr)  # noqa: E731
            if parametrize.is_parametrized(module):
                for attr, plist in module.parametrizations.items():
                    if isinstance(plist[0], OrthogonalMap):
                        method = _TORCH_NAMES.get(plist[0].orthogonal_map.name, plist[0].orthogonal_map.name)
                        rows.append(_orthogonal_row(name_of(attr), method, getattr(module, attr)))
            for attr, p in module.named_parameters(recurse=False):
                spec = recorded_retraction(module, attr)
                if spec is not None:
                    rows.append(_orthogonal_row(name_of(attr), spec.method, p))
    return rows


def _orthogonal_row(name: str, method: str, W: Tensor) -> dict:
    W = W.detach().double()
    return {"name": name, "method": method, "n": W.shape[-1], "orth_error": float(orth.orth_error(W).max())}


def summarize_skips(rows: list[dict]) -> dict:
    """Model-level summary of :func:`skip_diagnostics` rows (None where no skip has a matrix)."""
    odd = [r for r in rows if not isinstance(r, dict)] if isinstance(rows, (list, tuple)) else [rows]
    if odd:  # a model (summarize_skips(model)) failed as "'Linear' object is not iterable"
        raise TypeError(f"summarize_skips takes the rows of skip_diagnostics(model) (a list of dicts); got "
                        f"{'a ' + type(rows).__name__ + ' holding ' if odd[0] is not rows else ''}"
                        f"{type(odd[0]).__name__}")
    mats = [r for r in rows if r["orth_error"] is not None]
    if not mats:
        return {"skip_orth_error_max": None, "skip_identity_distance_mean": None,
                "skip_identity_distance_max": None, "skip_negative_det_count": None}
    dist = [r["identity_distance"] for r in mats]
    out = {
        "skip_orth_error_max": max(r["orth_error"] for r in mats),
        "skip_identity_distance_mean": math.fsum(dist) / len(dist),
        "skip_identity_distance_max": max(dist),
        "skip_negative_det_count": sum(r["det_sign"] < 0 for r in mats),
    }
    moved = [r["start_distance"] for r in mats if r.get("start_distance") is not None]
    if moved:  # rows measured against the start of training (skip_diagnostics' ``start``)
        out["skip_start_distance_mean"] = math.fsum(moved) / len(moved)
    return out


def started_away_from_identity(identity_distance: float | None, start_distance: float | None) -> bool:
    """Whether ||W - W_0||_F says more than ||W - I||_F: they differ (beyond round-off), so
    the skips did not start at I (a Haar start, fixed_orth, idempotent). Either None or nan: no."""
    if identity_distance is None or start_distance is None or math.isnan(identity_distance) or math.isnan(start_distance):
        return False
    return abs(start_distance - identity_distance) > 1e-6 * max(1.0, identity_distance)


__all__ += ["relu_kept_energy", "summarize_relu_kept"]


def _energy_kept(v: Tensor) -> float:
    """||relu(v)||² / ||v||², in float64 (nan for v = 0)."""
    v = v.detach().double()
    return float(torch.relu(v).square().sum() / v.square().sum())


@torch.no_grad()
def relu_kept_energy(model: nn.Module, x: Tensor) -> list[dict]:
    """What the ReLU after the sum of each post-activation block, relu(W s + f(s)) (``BasicBlock``
    and ``Bottleneck``: He et al. 2016a), keeps of what reaches it, with ``model`` in eval mode
    on the batch ``x``. One dict per block with a skip path, in model order: ``name``,
    ``skip_kept`` = ||relu(W s)||² / ||W s||² (the skip path alone, s the shortcut's output) and
    ``sum_kept`` = ||relu(z)||² / ||z||² (z the combined stream the ReLU sees, in any residual
    mode). An identity skip on a stream that is itself a ReLU's output keeps all of it
    (skip_kept = 1); a skip far from I mixes the channels of that non-negative stream, and the
    ReLU cuts the negative part (about half for a Haar W: notes/image_depth_findings.md, 4).
    ``model`` is left in the mode it was in. ValueError if it has no such block."""
    blocks = _post_activation_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no post-activation residual block (relu after the sum) "
                         "with a skip path")
    seen: dict[tuple[str, int], Tensor] = {}
    hooks = []
    for i, (_, b) in enumerate(blocks):
        # a hook on the skip and on the residual also makes with_skip call them apart (no fused product)
        hooks.append(b.skip.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(("skip", i), out)))
        hooks.append(b.residual.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(("sum", i), out)))
    training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(training)
        for h in hooks:
            h.remove()
    return [{"name": name, "skip_kept": _energy_kept(seen["skip", i]), "sum_kept": _energy_kept(seen["sum", i])}
            for i, (name, _) in enumerate(blocks)]


def _post_activation_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, block) of ``model``'s post-activation blocks with a skip path, in model order."""
    from .models.resnet import BasicBlock  # Bottleneck is one; pre-activation blocks have no ReLU after the sum

    return [(name, b) for name, b in model.named_modules() if isinstance(b, BasicBlock) and b.skip.has_path]


def summarize_relu_kept(model: nn.Module, x: Tensor) -> dict:
    """Model-level summary of :func:`relu_kept_energy` on the batch ``x``: the mean over blocks of
    ``skip_kept`` and of ``sum_kept``, and the rows themselves as ``relu_kept_blocks``; all None
    for a model without such a block (pre-activation nets, ViTs, the ``zero`` kind)."""
    if not _post_activation_blocks(model):
        return {"relu_kept_skip_mean": None, "relu_kept_sum_mean": None, "relu_kept_blocks": None}
    rows = relu_kept_energy(model, x)
    return {"relu_kept_skip_mean": math.fsum(r["skip_kept"] for r in rows) / len(rows),
            "relu_kept_sum_mean": math.fsum(r["sum_kept"] for r in rows) / len(rows),
            "relu_kept_blocks": rows}


# --------------------------------------------------------------------------- trained blocks
# Measurements of the residual blocks y = W x + f(x) of a model with ``model.blocks``
# (each block holding its residual branch as ``block.branch``; an optional
# ``model.embed`` runs first), as in ``models.mlp.ResidualMLP``. The theorem under test
# (Bartlett, Evans & Long 2018, arXiv 1804.05012, adapted to orthogonal W_i) says each
# block h_i stays close to an orthogonal map W_i: ||h_i - W_i||_L small. Two views:
# the Lipschitz constant of the branch f_i = h_i - W_i, and how well the best orthogonal
# map explains the block's input -> output (Procrustes).

__all__ += [
    "ACTIVATION_LIPSCHITZ",
    "lipschitz_upper_bound",
    "jacobian_spectral_norms",
    "empirical_lipschitz",
    "block_inputs",
    "branch_lipschitz",
    "procrustes_fit",
    "block_procrustes",
]

# sup_t |sigma'(t)| of elementwise activations. SiLU and Mish: the maximum of the autograd
# derivative on a 1e-4 grid of [-8, 8] in float64, rounded up in the 5th decimal. GELU's is
# Phi(sqrt 2) + sqrt 2 phi(sqrt 2) = 1.128904..., held rounded up in the 4th (1.12900): still
# an upper bound. Dropout counts as identity: the measures are taken in eval mode.
ACTIVATION_LIPSCHITZ: dict[type, float] = {
    nn.Identity: 1.0,
    nn.Dropout: 1.0,
    nn.ReLU: 1.0,
    nn.Tanh: 1.0,
    nn.Softplus: 1.0,
    nn.Sigmoid: 0.25,
    nn.GELU: 1.12900,
    nn.SiLU: 1.09984,
    nn.Mish: 1.08850,
}


def _activation_lipschitz(module: nn.Module) -> float | None:
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(module.negative_slope))
    if isinstance(module, nn.ELU):
        return max(1.0, module.alpha)
    return ACTIVATION_LIPSCHITZ.get(type(module))


def lipschitz_upper_bound(branch: nn.Module) -> float:
    """Product-of-spectral-norms bound on the Lipschitz constant (in the 2-norm) of a stack
    of ``nn.Linear`` layers and elementwise activations (``nn.Sequential`` nests allowed):
    Lip(f_k o ... o f_1) <= prod_k Lip(f_k), with Lip(x -> W x + b) = ||W||_2 and
    Lip(sigma) = sup |sigma'|. Exact for a single linear layer; loose otherwise, because
    the top singular directions of consecutive layers need not line up."""
    bound = lipschitz_upper_bound_stacked(branch)
    if bound.ndim:
        raise ValueError(f"the branch's weights carry batch axes {tuple(bound.shape)}; use lipschitz_upper_bound_stacked")
    return float(bound)


def jacobian_spectral_norms(f, X: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """||D f(x)||_2 at every row x of X: (N, d_in) -> (N,).

    ``f`` maps one point (d_in,) to (d_out,) (an ``nn.Module`` of Linear layers does).
    Jacobians come from ``torch.func.vmap(torch.func.jacrev(f))``, (n, d_out, d_in) per
    chunk of n <= chunk_size points, so memory stays bounded for large N. Works under
    ``torch.no_grad()`` (function transforms ignore the outer grad mode).
    """
    from torch.func import jacrev, vmap

    if X.ndim != 2:
        raise ValueError(f"X must have shape (N, d); got {tuple(X.shape)}")
    jac = vmap(jacrev(f))
    norms = [torch.linalg.matrix_norm(jac(chunk).detach(), ord=2) for chunk in X.split(chunk_size)]
    return torch.cat(norms) if norms else X.new_zeros(0)


def empirical_lipschitz(f, X: torch.Tensor, chunk_size: int = 1024) -> float:
    """Largest Jacobian spectral norm over the points X (N, d): a lower bound on the
    Lipschitz constant of f on any set containing X, equal to it on a convex set where X
    contains a point of largest Jacobian norm (always, for an affine f)."""
    norms = jacobian_spectral_norms(f, X, chunk_size)
    return float(norms.max()) if norms.numel() else 0.0


def _blocks_of(model: nn.Module):
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(b, "branch") for b in blocks):
        raise ValueError(
            f"{type(model).__name__} has no `blocks` whose members have a `branch`; "
            "block diagnostics need a model shaped like ResidualMLP"
        )
    return list(blocks)


@torch.no_grad()
def block_inputs(model: nn.Module, X: torch.Tensor) -> list[torch.Tensor]:
    """The input of each block when ``model`` sees X (N, d_in): a list of (N, dim), one
    per block, in model order (block 0's input is ``model.embed(X)`` if there is an embed)."""
    blocks = _blocks_of(model)
    z = model.embed(X) if hasattr(model, "embed") else X
    inputs = []
    for block in blocks:
        inputs.append(z)
        z = block(z)
    return inputs


def branch_lipschitz(model: nn.Module, X: torch.Tensor | None = None) -> list[dict]:
    """Per block i: ``lipschitz_bound`` (product of spectral norms of f_i) and, when data X
    (N, d_in) is given, ``lipschitz_empirical`` (largest ||D f_i|| over the block's inputs
    from X; None without X). Measured in eval mode; the model's mode is restored."""
    blocks = _blocks_of(model)
    was_training = model.training
    model.eval()
    try:
        inputs = block_inputs(model, X) if X is not None else [None] * len(blocks)
        return [
            {
                "block": i,
                "lipschitz_bound": lipschitz_upper_bound(block.branch),
                "lipschitz_empirical": None if z is None else empirical_lipschitz(block.branch, z),
            }
            for i, (block, z) in enumerate(zip(blocks, inputs))
        ]
    finally:
        model.train(was_training)


@torch.no_grad()
def procrustes_fit(fn, X: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Best orthogonal map Q from inputs X (N, d) to outputs fn(X) (N, d), and its relative
    residual ||fn(X) - X Q^T||_F / ||fn(X)||_F (0 iff fn is exactly x -> Q x on X).
    No centring: the theorem's W_i act on x itself, not on x - mean. Float64 throughout."""
    Y = fn(X)
    if Y.shape != X.shape:
        raise ValueError(f"a Procrustes fit needs a map R^d -> R^d; got {tuple(X.shape)} -> {tuple(Y.shape)}")
    Q, rel = orth.procrustes(X.double(), Y.double())
    return Q, float(rel)


def block_procrustes(model: nn.Module, X: torch.Tensor) -> list[dict]:
    """Per block i, with Q_i the Procrustes fit of the block's input -> output on data X:
    ``procrustes_residual`` (relative residual), ``procrustes_identity_distance``
    ||Q_i - I||_F, and ``procrustes_skip_distance`` ||Q_i - W_i||_F to the block's own skip
    matrix (None if its skip has no matrix). Eval mode; the model's mode is restored."""
    blocks = _blocks_of(model)
    was_training = model.training
    model.eval()
    try:
        rows = []
        for i, (block, z) in enumerate(zip(blocks, block_inputs(model, X))):
            Q, rel = procrustes_fit(block, z)
            W = getattr(getattr(block, "skip", None), "weight", None)
            rows.append({
                "block": i,
                "procrustes_residual": rel,
                "procrustes_identity_distance": float(orth.identity_distance(Q)),
                "procrustes_skip_distance": None if W is None else float(torch.linalg.matrix_norm(Q - W.detach().double())),
            })
        return rows
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- stacked and linear fits
# For models whose parameters carry leading batch axes (several seeds trained at once, see
# models.stack.SeedStack), and a reference for the Procrustes fit.

__all__ += ["lipschitz_upper_bound_stacked", "linear_fit_residual"]


@torch.no_grad()
def lipschitz_upper_bound_stacked(branch: nn.Module) -> torch.Tensor:
    """:func:`lipschitz_upper_bound` for a branch whose ``nn.Linear`` weights may have leading
    batch axes, (..., out, in): the product of the spectral norms for every batch entry,
    a float64 tensor of shape (...) (0-d for an ordinary branch)."""
    if isinstance(branch, nn.Linear):
        return torch.linalg.matrix_norm(branch.weight.detach().double(), ord=2)
    if isinstance(branch, nn.Sequential):
        bound = torch.ones((), dtype=torch.float64)
        for layer in branch:
            bound = bound * lipschitz_upper_bound_stacked(layer)
        return bound
    lip = _activation_lipschitz(branch)
    if lip is None:
        allowed = ", ".join(["Linear", "Sequential", "LeakyReLU", "ELU"] + [t.__name__ for t in ACTIVATION_LIPSCHITZ])
        raise ValueError(
            f"cannot bound the Lipschitz constant of {type(branch).__name__}; the bound covers: {allowed}"
        )
    return torch.tensor(lip, dtype=torch.float64)


@torch.no_grad()
def linear_fit_residual(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Relative residual ||Y - X A^T||_F / ||Y||_F of the best linear map A (least squares,
    no bias, like the Procrustes fit) from inputs X (N, d) to outputs Y (N, d'), in float64.

    The reference for a Procrustes residual: the orthogonal fit can never beat it, and the
    gap between the two is the part of a block's map that is linear but not orthogonal."""
    X, Y = X.double(), Y.double()
    if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
        raise ValueError(f"need X (N, d) and Y (N, d'); got {tuple(X.shape)} and {tuple(Y.shape)}")
    A_T = torch.linalg.lstsq(X, Y, driver="gelsd").solution  # (d, d'): X A^T ~ Y
    denom = float(torch.linalg.matrix_norm(Y))
    resid = float(torch.linalg.matrix_norm(Y - X @ A_T))
    return resid / denom if denom > 0 else resid


# --------------------------------------------------------------------------- measurements
# Of stacked models shaped like models.mlp.ResidualMLP: ``embed`` (maybe nn.Identity), then
# ``blocks``, each y = skip(x) + branch(x). Every function returns a leading seed axis S.


def _blocks(stack: SeedStack):
    blocks = getattr(stack.template, "blocks", None)
    if blocks is None or not all(hasattr(b, "skip") and hasattr(b, "branch") for b in blocks):
        raise ValueError("these measurements need a model shaped like ResidualMLP (blocks with skip and branch)")
    return blocks


@torch.no_grad()
def skip_matrices(stack: SeedStack) -> Tensor | None:
    """The skip matrix W_i of every block and seed, (S, L, n, n) in float64, or None when
    the skips carry no matrix (identity, zero). Read off as skip(I)^T (a skip maps a row
    x to x W^T), so parametrized kinds are evaluated through their parametrization."""
    blocks = _blocks(stack)
    if len(blocks) == 0 or blocks[0].skip.weight is None:
        return None
    n = blocks[0].skip.channels
    eye = torch.eye(n, device=next(stack.parameters()).device)

    def fn(model, I):
        return torch.stack([b.skip(I).mT for b in model.blocks])  # (L, n, n)

    return stack.apply(fn, eye).double()


@torch.no_grad()
def stacked_block_inputs(stack: SeedStack, X: Tensor) -> list[Tensor]:
    """The input of each block for every seed when the models see X (N, d): a list of L
    tensors (S, N, n) (:func:`block_inputs` per seed)."""
    _blocks(stack)
    return list(stack.apply(lambda model, x: tuple(block_inputs(model, x)), X))


@torch.no_grad()
def branch_lipschitz_bounds(stack: SeedStack) -> Tensor:
    """Product-of-spectral-norms bound on Lip(f_i) for every seed and block: (S, L) float64
    (:func:`~orthogonal_skip_connections.diagnostics.lipschitz_upper_bound_stacked`)."""
    blocks = _blocks(stack)
    S = len(stack)
    cols = [lipschitz_upper_bound_stacked(b.branch).double().expand(S) for b in blocks]
    return torch.stack(cols, dim=1) if cols else torch.zeros(S, 0, dtype=torch.float64)


def branch_lipschitz_empirical(stack: SeedStack, X: Tensor, chunk_size: int = 256) -> Tensor:
    """Largest Jacobian spectral norm of each branch f_i over its inputs from X (N, d):
    (S, L) float64. The per-seed version of
    :func:`~orthogonal_skip_connections.diagnostics.empirical_lipschitz`: Jacobians from
    ``vmap(jacrev(f_i))`` per seed, all seeds at once."""
    blocks = _blocks(stack)
    inputs = stacked_block_inputs(stack, X)  # L x (S, N, n)
    cols = []
    for i in range(len(blocks)):
        norms = stack.apply(lambda m, z, i=i: jacobian_spectral_norms(m.blocks[i].branch, z, chunk_size),
                            inputs[i], in_dims=(0,))  # (S, N)
        cols.append(norms.amax(1).double())
    return torch.stack(cols, dim=1) if cols else torch.zeros(len(stack), 0, dtype=torch.float64)
