"""Synthetic data: shapes, dtypes, seeding, the dimension-free difficulty of blobs, errors."""

import numpy as np
import pytest
import torch

from orthogonal_skip_connections.data import DATASET_TYPES, make_synthetic
from orthogonal_skip_connections.data.synthetic import _lattice_means


@pytest.mark.parametrize("dataset_type", DATASET_TYPES)
@pytest.mark.parametrize("dim", [2, 9])
def test_shapes_dtypes_split_and_seeding(dataset_type, dim):
    data = make_synthetic(dataset_type, n_samples=200, dim=dim, test_fraction=0.25, seed=3)
    X_tr, y_tr, X_te, y_te = data
    assert X_tr.shape == (150, dim) and X_te.shape == (50, dim)
    assert y_tr.shape == (150,) and y_te.shape == (50,)
    assert X_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert set(torch.cat([y_tr, y_te]).tolist()) == {0, 1}
    assert torch.isfinite(X_tr).all()
    again = make_synthetic(dataset_type, n_samples=200, dim=dim, test_fraction=0.25, seed=3)
    assert torch.equal(again.X_train, X_tr) and torch.equal(again.y_test, y_te)
    other = make_synthetic(dataset_type, n_samples=200, dim=dim, test_fraction=0.25, seed=4)
    assert not torch.equal(other.X_train, X_tr)


def test_moons_embedding_is_an_isometry():
    """In d > 2 the 2-D set lies on a 2-plane with the same pairwise distances."""
    X2 = make_synthetic("moons", n_samples=100, dim=2).X_train.double()
    X9 = make_synthetic("moons", n_samples=100, dim=9).X_train.double()
    assert torch.allclose(torch.cdist(X2, X2), torch.cdist(X9, X9), atol=1e-5)
    assert torch.linalg.matrix_rank(X9 - X9.mean(0), rtol=1e-5) == 2  # float32 round-off


@pytest.mark.parametrize("dim", [1, 2, 5, 64])
def test_blob_means_keep_their_nearest_distance_in_every_dimension(dim):
    means = _lattice_means(12, dim, np.random.default_rng(0))
    D = np.linalg.norm(means[:, None] - means[None], axis=-1) + np.eye(12) * 1e9
    assert np.allclose(D.min(1), 1.0)  # every cluster has a rival at exactly 1 (then scaled)


def test_blobs_difficulty_does_not_depend_on_dimension():
    """Two unit Gaussians `separation` apart: nearest-mean accuracy ~ Phi(separation / 2)."""
    accs = []
    for dim in (2, 64):
        X, y, _, _ = make_synthetic("blobs", n_samples=4000, dim=dim, separation=3.0, seed=1)
        mu = torch.stack([X[y == k].mean(0) for k in (0, 1)])
        pred = torch.cdist(X, mu).argmin(1)
        accs.append((pred == y).float().mean().item())
    assert abs(accs[0] - accs[1]) < 0.03 and all(0.9 < a < 0.96 for a in accs), accs  # Phi(1.5) = 0.933


def test_parity_labels_and_multiclass():
    X, y, _, _ = make_synthetic("parity", n_samples=100, dim=6, parity_bits=3, num_classes=3)
    assert torch.equal(y, (X[:, :3] < 0).sum(1) % 3)
    _, y, _, _ = make_synthetic("blobs", n_samples=300, dim=3, num_classes=4, clusters_per_class=2)
    assert set(y.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(dataset_type="spirals"), "unknown dataset_type 'spirals'; allowed: moons, circles, blobs, classification, parity"),
        (dict(dataset_type="moons", dim=1), "dim must be >= 2"),
        (dict(dataset_type="circles", num_classes=3), "2 classes"),
        (dict(dataset_type="blobs", n_samples=1), "too small"),
        (dict(dataset_type="parity", dim=3, parity_bits=5), "parity_bits"),
        (dict(dataset_type="classification", dim=2, num_classes=3, clusters_per_class=2), "2\\*\\*dim"),
        (dict(dataset_type="blobs", noise=-1.0), "noise"),
    ],
)
def test_bad_arguments_are_one_clear_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic(**kwargs)


@pytest.mark.parametrize("dataset_type", ["moons", "circles"])
def test_moons_and_circles_keep_scikit_learns_labels(dataset_type):
    """Every (x, y) of the split is one of scikit-learn's own (point, label) pairs, and the
    points placed in R^9 keep their labels: a label is never separated from its point."""
    from sklearn import datasets

    X, y = (datasets.make_moons(300, noise=0.1, random_state=5) if dataset_type == "moons"
            else datasets.make_circles(300, noise=0.1, factor=0.5, random_state=5))  # make_synthetic's defaults
    label_of = {tuple(np.float32(p).tolist()): int(c) for p, c in zip(X, y)}
    two = make_synthetic(dataset_type, n_samples=300, dim=2, seed=5)
    points = torch.cat([two.X_train, two.X_test])
    labels = torch.cat([two.y_train, two.y_test]).tolist()
    assert [label_of[tuple(p)] for p in points.tolist()] == labels
    assert len(set(map(tuple, points.tolist()))) == 300
    nine = make_synthetic(dataset_type, n_samples=300, dim=9, seed=5)
    assert torch.equal(nine.y_train, two.y_train) and torch.equal(nine.y_test, two.y_test)
    torch.testing.assert_close(torch.cdist(nine.X_train.double(), nine.X_test.double()),
                               torch.cdist(two.X_train.double(), two.X_test.double()), rtol=0, atol=1e-5)


def test_noise_is_the_standard_deviation_of_the_input_noise():
    """classification and parity: the same seed with noise s and with none differs by Gaussian
    noise of std s and nothing else; blobs: s is every cluster's std, and the difficulty stays
    Phi(separation / 2) at any s (the means are ``separation * s`` apart)."""
    for dataset_type in ("classification", "parity"):
        noisy, clean = (make_synthetic(dataset_type, n_samples=1000, dim=5, noise=s, seed=2) for s in (0.5, 0.0))
        assert torch.equal(noisy.y_train, clean.y_train)
        assert abs(float((noisy.X_train - clean.X_train).std()) - 0.5) < 0.02, dataset_type
    for noise in (0.25, 4.0):
        X, y, _, _ = make_synthetic("blobs", n_samples=2000, dim=8, noise=noise, separation=3.0, seed=1)
        mu = torch.stack([X[y == k].mean(0) for k in (0, 1)])
        assert abs(float((X - mu[y]).std()) / noise - 1) < 0.03
        acc = (torch.cdist(X, mu).argmin(1) == y).float().mean().item()
        assert 0.9 < acc < 0.96, (noise, acc)  # Phi(1.5) = 0.933


def test_the_split_is_stratified():
    """Unbalanced classes (the number of -1 among 2 bits: 1/4, 1/2, 1/4) keep their shares in
    the test split to within one sample."""
    data = make_synthetic("parity", n_samples=1000, dim=3, parity_bits=2, num_classes=3, test_fraction=0.2, seed=0)
    every = torch.bincount(torch.cat([data.y_train, data.y_test]), minlength=3).double()
    assert float(every.max() / every.min()) > 1.8
    assert torch.all((torch.bincount(data.y_test, minlength=3) - 0.2 * every).abs() <= 1)


@pytest.mark.parametrize("n_samples,test_fraction", [(100, 0.001), (100, 0.985), (7, 0.2)])
def test_a_split_too_small_to_stratify_is_made_unstratified(n_samples, test_fraction):
    """One test (or training) point for two classes cannot be stratified: scikit-learn's
    ValueError was a traceback of construction_validity test_fraction=0.001."""
    d = make_synthetic("blobs", n_samples=n_samples, num_classes=2, test_fraction=test_fraction, seed=0)
    assert len(d.y_train) + len(d.y_test) == n_samples and len(d.y_test) == int(np.ceil(test_fraction * n_samples))
