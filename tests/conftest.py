
import pytest
import torch

# One intra-op thread: the models under test are tiny, and two OpenMP threads on a
# 2-core machine stall whenever anything else runs (see orthogonal.one_thread).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def write_fake_cifar(root, name="cifar10", n_train=40, n_test=20, seed=0):
    """Random CIFAR-10 / CIFAR-100 "python version" files under ``root`` (the format
    ``load_image_data`` reads; datasets cannot be downloaded here)."""
    import pickle
    from pathlib import Path

    import numpy as np

    rng = np.random.default_rng(seed)
    classes, key = (10, b"labels") if name == "cifar10" else (100, b"fine_labels")

    def batch(n):
        return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: list(rng.integers(0, classes, n))}

    if name == "cifar10":
        folder = Path(root) / "cifar-10-batches-py"
        files = {f"data_batch_{i}": batch(n_train // 5) for i in range(1, 6)} | {"test_batch": batch(n_test)}
    else:
        folder = Path(root) / "cifar-100-python"
        files = {"train": batch(n_train), "test": batch(n_test)}
    folder.mkdir(parents=True, exist_ok=True)
    for fname, content in files.items():
        with open(folder / fname, "wb") as f:
            pickle.dump(content, f)


@pytest.fixture
def fake_cifar():
    """:func:`write_fake_cifar`, for tests that need CIFAR files."""
    return write_fake_cifar
