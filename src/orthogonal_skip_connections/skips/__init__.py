"""Layer 2, skips: the contract (:mod:`.contract`), the kinds and their registry
(:mod:`.kinds`), orthogonal constraints for any square weight (:mod:`.constraint`), the parametrized
skips of a model computed in one batched call per size (:mod:`.batched`),
``patch_skips`` for existing models and ``baked_copy`` for trained ones (:mod:`.patch`), and the residual modes (``add``,
``orthogonal_update``, ``rotation``) blocks combine their skip path and branch with
(:mod:`.residual`)."""

from ..maths.orthogonal import DEFAULT_METHOD, ORTH_INITS, ORTH_METHODS, PARAMETRIZED_METHODS, RETRACTED_METHODS
from .batched import batch_upkeep
from .constraint import (
    Retraction,
    mark_retracted,
    orthogonal_,
    project_orthogonal_,
    retracted_parameters,
    retraction_of,
)
from .contract import Skip, apply_matrix, apply_matrix_add, iter_skips
from .kinds import (
    FIXED_KINDS,
    SKIP_KINDS,
    SKIP_OPTIONS,
    IdentitySkip,
    MatrixSkip,
    OrthogonalSkip,
    ScalarSkip,
    SkipFactory,
    ZeroSkip,
    make_skip,
    skip,
    skip_layer_from,
    variant_label,
)
from .patch import baked_copy, patch_skips
from .residual import (
    DEFAULT_EPS,
    ORTHOGONAL_METHODS,
    RESIDUAL_MODES,
    STREAM_NORMS,
    Residual,
    StreamNorm,
    check_residual_mode,
    orthogonal_part,
    rescale_stream,
    residual_combine,
    resolve_stream_norm,
    rotation_angle,
)

__all__ = [
    "DEFAULT_METHOD", "ORTH_INITS", "ORTH_METHODS", "PARAMETRIZED_METHODS", "RETRACTED_METHODS",
    "batch_upkeep", "Retraction", "mark_retracted", "orthogonal_", "project_orthogonal_", "retracted_parameters",
    "retraction_of",
    "Skip", "apply_matrix", "apply_matrix_add", "iter_skips",
    "SKIP_KINDS", "FIXED_KINDS", "SKIP_OPTIONS", "IdentitySkip", "MatrixSkip", "OrthogonalSkip", "ScalarSkip", "SkipFactory",
    "ZeroSkip", "make_skip", "skip", "skip_layer_from", "variant_label",
    "baked_copy", "patch_skips",
    "DEFAULT_EPS", "ORTHOGONAL_METHODS", "RESIDUAL_MODES", "Residual", "check_residual_mode", "orthogonal_part",
    "residual_combine", "rotation_angle", "STREAM_NORMS", "StreamNorm", "rescale_stream", "resolve_stream_norm",
]
