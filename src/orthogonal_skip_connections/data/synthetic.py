"""Synthetic classification data in 2 and d dimensions, seeded, as torch tensors.

``make_synthetic(dataset_type, ...)`` returns a :class:`SyntheticData` with
``X_train (N_train, d) float32``, ``y_train (N_train,) int64`` and the same for the test
split. Types:

- ``moons``, ``circles``: scikit-learn's two-class 2-D sets. For ``dim > 2`` the 2-D
  points are placed isometrically on a random 2-plane of R^d (a Haar rotation), so the
  problem is the same one, seen in more coordinates.
- ``blobs``: a Gaussian mixture, ``clusters_per_class`` isotropic Gaussians per class,
  whose separation is fixed in absolute terms so that the difficulty does not change
  with ``dim`` (see :func:`_lattice_means`).
- ``classification``: scikit-learn's ``make_classification`` (clusters on the vertices
  of a hypercube, every feature informative).
- ``parity``: x in {-1, +1}^d; the label is the number of -1 among the first
  ``parity_bits`` coordinates, modulo ``num_classes`` (the k-sparse parity problem; with
  ``parity_bits = dim`` and two classes, the full parity of the original project).

``noise`` is the standard deviation of Gaussian noise on the inputs for every type:
isotropic in R^d, except for ``moons`` and ``circles``, where scikit-learn adds it to the
2-D points before they are placed in R^d, so it stays in their plane (for ``blobs`` it is
the cluster standard deviation, and ``separation`` is measured in units of it).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..maths.orthogonal import haar_orthogonal

__all__ = ["DATASET_TYPES", "DEFAULT_NOISE", "SyntheticData", "make_synthetic", "check_synthetic"]

DATASET_TYPES = ("moons", "circles", "blobs", "classification", "parity")
# noise when none is given: the original project's values for moons/circles, unit
# clusters for blobs, clean inputs for the rest.
DEFAULT_NOISE = {"moons": 0.1, "circles": 0.1, "blobs": 1.0, "classification": 0.0, "parity": 0.0}


@dataclass
class SyntheticData:
    X_train: Tensor  # (N_train, d) float32
    y_train: Tensor  # (N_train,) int64 class indices
    X_test: Tensor  # (N_test, d) float32
    y_test: Tensor  # (N_test,) int64
    num_classes: int
    dim: int
    dataset_type: str

    def __iter__(self):  # X_train, y_train, X_test, y_test = data
        return iter((self.X_train, self.y_train, self.X_test, self.y_test))


def _embed_plane(X2: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """(N, 2) -> (N, dim): the first two rows of a Haar rotation span a random 2-plane,
    and x -> x Q[:2] is an isometry onto it (distances, hence difficulty, unchanged)."""
    if dim == 2:
        return X2
    g = torch.Generator().manual_seed(seed)
    Q = haar_orthogonal(dim, generator=g, dtype=torch.float64).numpy()  # (dim, dim)
    return X2 @ Q[:2]


def _lattice_means(n_means: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """The ``n_means`` points of the integer lattice Z^dim nearest the origin (ties in the
    last shell broken at random), centred. Shape (n_means, dim).

    Why a lattice: every pair of these points is at distance >= 1 and each point has a
    neighbour at distance exactly 1, in every dimension. Scaled by ``separation * noise``,
    each cluster's nearest rival mean is ``separation`` cluster-stds away, and the Bayes
    error between two neighbouring unit Gaussians depends only on that distance
    (Phi(-separation / 2); the other d - 1 directions carry no information). So the
    difficulty is the same for every d.

    The usual alternative, means drawn i.i.d. N(0, s^2 I_d), has E||mu_a - mu_b|| ~
    s sqrt(2 d): the classes drift apart as d grows and any model reaches 100% in high
    dimension (what the original project ran into). Fixing the distances means the
    per-coordinate offset between means shrinks like 1 / sqrt(d) instead.

    The points are popped from a heap in order of squared norm (Dijkstra on Z^d: every
    non-zero lattice point has a neighbour of smaller norm, so a shell is complete before
    the next one is popped); only ~2 d n_means points are ever visited.
    """
    origin = (0,) * dim
    heap = [(0, rng.random(), origin)]
    seen = {origin}
    out = []
    while len(out) < n_means:
        _, _, p = heapq.heappop(heap)
        out.append(p)
        for j in range(dim):
            for step in (-1, 1):
                q = p[:j] + (p[j] + step,) + p[j + 1 :]
                if q not in seen:
                    seen.add(q)
                    heapq.heappush(heap, (sum(v * v for v in q), rng.random(), q))
    means = np.asarray(out, dtype=np.float64)  # (n_means, dim)
    return means - means.mean(0)


def _blobs(n, dim, num_classes, clusters_per_class, separation, noise, seed):
    rng = np.random.default_rng(seed)
    n_clusters = num_classes * clusters_per_class
    means = _lattice_means(n_clusters, dim, rng) * (separation * noise)  # (K, d)
    g = torch.Generator().manual_seed(seed)
    Q = haar_orthogonal(dim, generator=g, dtype=torch.float64).numpy()
    means = means @ Q.T  # random orientation: no axis is special
    # balanced classes: shuffle the clusters, then deal them out to classes in turn
    cluster_class = rng.permutation(n_clusters) % num_classes  # (K,)
    cluster = rng.integers(0, n_clusters, size=n)  # (N,)
    X = means[cluster] + noise * rng.standard_normal((n, dim))
    return X, cluster_class[cluster]


def _parity(n, dim, num_classes, parity_bits, noise, seed):
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, size=(n, dim))  # (N, d) in {0, 1}
    y = bits[:, :parity_bits].sum(1) % num_classes  # count of -1 among the first k coordinates
    X = 1.0 - 2.0 * bits + noise * rng.standard_normal((n, dim))  # 0 -> +1, 1 -> -1
    return X, y


def _check(dataset_type, n_samples, dim, num_classes, test_fraction, noise, separation,
           clusters_per_class, parity_bits, factor):
    if dataset_type not in DATASET_TYPES:
        raise ValueError(f"unknown dataset_type {dataset_type!r}; allowed: {', '.join(DATASET_TYPES)}")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1; got {dim!r}")
    if dataset_type in ("moons", "circles"):
        if dim < 2:
            raise ValueError(f"{dataset_type} is 2-D data: dim must be >= 2; got {dim}")
        if num_classes != 2:
            raise ValueError(f"{dataset_type} has 2 classes; got num_classes={num_classes}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}")
    if not isinstance(n_samples, int) or not 1 <= math.ceil(test_fraction * n_samples) < n_samples:
        raise ValueError(f"n_samples={n_samples!r} is too small for test_fraction={test_fraction}")
    # (up to 1e6: the data are float32, and far larger values overflow it before training starts)
    if not 0 <= noise <= 1e6:
        raise ValueError(f"noise must be a finite number from 0 to 1e6; got {noise}")
    if dataset_type == "blobs" and noise == 0:
        raise ValueError("blobs need noise > 0: it is the cluster standard deviation")
    if not 0 < separation <= 1e6:
        raise ValueError(f"separation must be a finite number > 0 and <= 1e6; got {separation}")
    if not isinstance(clusters_per_class, int) or clusters_per_class < 1:
        raise ValueError(f"clusters_per_class must be an integer >= 1; got {clusters_per_class!r}")
    if dataset_type == "classification" and num_classes * clusters_per_class > 2**dim:
        raise ValueError(
            f"classification needs num_classes * clusters_per_class <= 2**dim "
            f"({num_classes} * {clusters_per_class} > {2**dim})"
        )
    if dataset_type == "parity" and parity_bits is not None and not 1 <= parity_bits <= dim:
        raise ValueError(f"parity_bits must be in 1..dim={dim}; got {parity_bits}")
    if dataset_type == "circles" and not 0.0 < factor < 1.0:
        raise ValueError(f"circles factor (inner / outer radius) must be in (0, 1); got {factor}")


def check_synthetic(
    dataset_type: str,
    n_samples: int = 1000,
    dim: int = 2,
    num_classes: int = 2,
    test_fraction: float = 0.2,
    noise: float | None = None,
    separation: float = 3.0,
    clusters_per_class: int = 1,
    parity_bits: int | None = None,
    factor: float = 0.5,
    seed: int = 0,
) -> float:
    """The ValueError :func:`make_synthetic` would raise for these arguments, without making
    any data (an app checks its config with it before anything runs). Returns the noise
    used (``noise``, or the type's default)."""
    noise = DEFAULT_NOISE.get(dataset_type, 0.0) if noise is None else float(noise)
    _check(dataset_type, n_samples, dim, num_classes, test_fraction, noise, separation,
           clusters_per_class, parity_bits, factor)
    return noise


def make_synthetic(
    dataset_type: str,
    n_samples: int = 1000,
    dim: int = 2,
    num_classes: int = 2,
    test_fraction: float = 0.2,
    noise: float | None = None,
    separation: float = 3.0,
    clusters_per_class: int = 1,
    parity_bits: int | None = None,
    factor: float = 0.5,
    seed: int = 0,
) -> SyntheticData:
    """Build a seeded synthetic classification set and split it into train and test.

    ``separation``: blobs: distance between neighbouring cluster means in cluster stds;
    classification: scikit-learn's ``class_sep``. ``clusters_per_class``: blobs and
    classification. ``parity_bits``: parity only, default all ``dim`` coordinates.
    ``factor``: circles only, inner radius / outer radius. The split is stratified;
    the same arguments always give the same tensors.
    """
    noise = check_synthetic(dataset_type, n_samples, dim, num_classes, test_fraction, noise, separation,
                            clusters_per_class, parity_bits, factor)
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(seed)
    if dataset_type == "moons":
        X, y = datasets.make_moons(n_samples, noise=noise, random_state=seed)
        X = _embed_plane(X, dim, seed)
    elif dataset_type == "circles":
        X, y = datasets.make_circles(n_samples, noise=noise, factor=factor, random_state=seed)
        X = _embed_plane(X, dim, seed)
    elif dataset_type == "blobs":
        X, y = _blobs(n_samples, dim, num_classes, clusters_per_class, separation, noise, seed)
    elif dataset_type == "classification":
        X, y = datasets.make_classification(
            n_samples, n_features=dim, n_informative=dim, n_redundant=0, n_repeated=0,
            n_classes=num_classes, n_clusters_per_class=clusters_per_class,
            class_sep=separation, random_state=seed,
        )
        X = X + noise * rng.standard_normal(X.shape)
    else:  # parity
        X, y = _parity(n_samples, dim, num_classes, dim if parity_bits is None else parity_bits, noise, seed)

    counts = np.bincount(y, minlength=num_classes)
    n_test, present = math.ceil(test_fraction * len(y)), int((counts > 0).sum())
    # stratifying needs two of every class, and a test and a training set each with room for every class present
    # (test_fraction=0.001 of 100 points: one test point for two classes was scikit-learn's ValueError)
    stratify = y if counts.min() >= 2 and min(n_test, len(y) - n_test) >= present else None
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=test_fraction, random_state=seed, stratify=stratify
    )
    f32 = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    i64 = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.int64)  # noqa: E731
    return SyntheticData(f32(X_tr), i64(y_tr), f32(X_te), i64(y_te), num_classes, dim, dataset_type)
