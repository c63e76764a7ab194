"""The two-stage scheme: train with identity skips, then replace each skip by the orthogonal
matrix that best explains its block, then fine-tune with the orthogonal skips constrained.

For a residual block the stream is s = skip(shortcut(x)) and the block adds its branch,
y = s + f(x) (the ``Residual`` module of the block; in v1 ResNets a ReLU follows, which is
not part of the fit: the skip acts inside the sum). The fit takes, on a batch of training
images, the skip's inputs X = shortcut(x) and the sums Y, both (N H W, C) (one row per
position), and the Procrustes solution Q = argmin_{Q in O(C)} ||Y - X Q^T||_F
(:func:`~orthogonal_skip_connections.diagnostics.procrustes_fit`, Schoenemann 1966). Its
relative residual is 0 exactly when the block is the orthogonal map x -> Q x on the data.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..diagnostics import procrustes_fit, skip_weights
from ..maths import orthogonal as orth

__all__ = ["skip_io", "fit_skips", "load_with_skips", "skips_by_block"]


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, block) of every module holding a ``skip`` and a ``residual`` (a residual block)."""
    return [(name, m) for name, m in model.named_modules() if hasattr(m, "skip") and hasattr(m, "residual")]


def _rows(t: Tensor) -> Tensor:
    """(N, C, H, W) -> (N H W, C); (N, T, C) -> (N T, C); (N, C) unchanged."""
    if t.ndim == 4:
        return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    return t.reshape(-1, t.shape[-1])


@torch.no_grad()
def skip_io(model: nn.Module, x: Tensor, batch_size: int = 256) -> list[tuple[str, Tensor, Tensor]]:
    """(block name, X, Y) per residual block, in model order: the skip's inputs X and the
    block's sums Y = skip(X) + f as rows (N H W, C), float64, with the model in eval mode
    on inputs x (images, or vectors for a ResidualMLP; mode restored)."""
    blocks = _blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no residual blocks (modules with a skip and a residual)")
    got: dict[str, dict[str, list[Tensor]]] = {name: {"X": [], "Y": []} for name, _ in blocks}
    hooks = []
    for name, block in blocks:
        hooks.append(block.skip.register_forward_hook(
            lambda m, inp, out, name=name: got[name]["X"].append(_rows(inp[0]).double().cpu())))
        hooks.append(block.residual.register_forward_hook(
            lambda m, inp, out, name=name: got[name]["Y"].append(_rows(out).double().cpu())))
    was_training = model.training
    model.eval()
    try:
        for xb in x.split(batch_size):
            model(xb)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = []
    for name, _ in blocks:
        X, Y = got[name]["X"], got[name]["Y"]
        if not X or len(X) != len(Y):
            raise ValueError(f"block {name}: its skip or its residual sum was not computed (a zero skip?)")
        out.append((name, torch.cat(X), torch.cat(Y)))
    return out


def fit_skips(model: nn.Module, x: Tensor, batch_size: int = 256) -> list[dict]:
    """Per residual block: ``name``, the Procrustes matrix ``Q`` (C, C) float64 of its
    skip inputs -> sums on images x, its relative ``residual`` ||Y - X Q^T||_F / ||Y||_F,
    ``identity_distance`` ||Q - I||_F and ``rank_deficient`` (X of rank < C at relative
    tolerance 1e-5, float32 activations: Q is then fixed on the span of the data only, and
    chosen closest to I off it)."""
    rows = []
    for name, X, Y in skip_io(model, x, batch_size):
        # Where X has rank < C (a block after a 1x1 projection from fewer channels) the fit is
        # not unique; sqrt(mu) I appended to both X and Y breaks the tie towards I:
        # Q = polar(Y^T X + mu I), mu = 1e-10 ||X||_F^2 / C (the residual stays at round-off).
        C = X.shape[1]
        ridge = (1e-10 * float(X.square().sum()) / C) ** 0.5 * torch.eye(C, dtype=X.dtype)
        Xa, Ya = torch.cat([X, ridge]), torch.cat([Y, ridge])
        Q, _ = procrustes_fit(lambda _, Ya=Ya: Ya, Xa)
        rel = float(torch.linalg.matrix_norm(Y - X @ Q.mT) / torch.linalg.matrix_norm(Y).clamp_min(1e-300))
        rows.append({"name": name, "Q": Q, "residual": rel, "identity_distance": float(orth.identity_distance(Q)),
                     "rank_deficient": bool(torch.linalg.matrix_rank(X, rtol=1e-5) < C)})
    return rows


@torch.no_grad()
def load_with_skips(target: nn.Module, source: nn.Module, matrices: dict[str, Tensor]) -> None:
    """Copy every weight of ``source`` into ``target`` (the same architecture with other
    skips; the source's own skip matrices, if any, are not copied), then set each block's
    orthogonal skip to ``matrices[block name]``: a retracted skip's weight is overwritten,
    a parametrized one is assigned (its base becomes the matrix, A = 0). Every weight of
    ``target`` must be covered by one or the other."""
    skip_names = {f"{name}.skip" for name in matrices}
    state = {k: v for k, v in source.state_dict().items() if not any(k.startswith(s + ".") for s in skip_names)}
    missing, unexpected = target.load_state_dict(state, strict=False)
    uncovered = [k for k in missing if not any(k.startswith(s + ".") for s in skip_names)]
    if uncovered or unexpected:
        raise ValueError(f"the models differ beyond their skips: missing {uncovered[:3]}, unexpected {unexpected[:3]}")
    blocks = dict(_blocks(target))
    for name, Q in matrices.items():
        skip = blocks[name].skip
        if getattr(skip, "upkeep", "none") == "parametrized":
            skip.weight = Q.to(torch.get_default_dtype())  # right_inverse: base <- Q, A <- 0
        elif skip.weight is not None and isinstance(skip.weight, nn.Parameter):
            skip.weight.copy_(Q.to(skip.weight.dtype))
        else:
            raise ValueError(f"block {name}: its {skip.kind} skip holds no settable matrix")


@torch.no_grad()
def skips_by_block(model: nn.Module) -> dict[str, Tensor]:
    """The current matrix of every skip that has one, by block name (as :func:`skip_io` names
    the blocks), float64 on the CPU: :func:`~orthogonal_skip_connections.diagnostics.skip_weights`
    keyed by block. (``diagnostics.skip_matrices`` is a seed stack's (S, L, n, n) tensor.)"""
    return {name.removesuffix(".skip"): W for name, W in skip_weights(model).items()}
