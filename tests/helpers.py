"""Helpers shared by several test modules (``from helpers import ...``; pytest puts this
folder on ``sys.path``)."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostReads(TorchDispatchMode):
    """Counts reads of a tensor's value by the host while active (``.item()``, ``bool(t)``,
    ``float(t)``, ``.tolist()`` of one number: each is ``aten._local_scalar_dense``, a device
    synchronisation on a GPU)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def write_fake_cifar(root, name="cifar10", n_train=40, n_test=20, seed=0, payload=None):
    """Random CIFAR-10 / CIFAR-100 "python version" files under ``root`` (the format
    ``load_image_data`` reads; datasets cannot be downloaded here). ``payload``: an object
    pickled as the first training file's labels (a crafted file)."""
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
    if payload is not None:
        files[next(iter(files))][key] = payload
    for fname, content in files.items():
        with open(folder / fname, "wb") as f:
            pickle.dump(content, f)


def digits_subset(n: int, seed: int = 0):
    """``n`` digits training images (normalised, unaugmented, (n, 1, 8, 8)) and labels,
    drawn without replacement by ``seed``."""
    from orthogonal_skip_connections.data.vision import load_image_data

    d = load_image_data("digits", augment=False)
    idx = torch.randperm(len(d.x_train), generator=torch.Generator().manual_seed(seed))[:n]
    return (d.x_train[idx] / d.scale - d.mean[0]) / d.std[0], d.y_train[idx]


def small_digits(n_train: int = 256, n_test: int = 128):
    """The first ``n_train`` / ``n_test`` images of digits' split, as an ImageData (its
    augmentation and normalisation): a training run of a few steps."""
    from orthogonal_skip_connections.data.vision import ImageData, load_image_data

    d = load_image_data("digits")
    return ImageData(d.name, d.x_train[:n_train], d.y_train[:n_train], d.x_test[:n_test], d.y_test[:n_test],
                     d.num_classes, d.mean, d.std, d.scale, d.crop_padding, d.flip)


def loss_before_and_after(model, x, y, opt, steps: int, batch: int = 32) -> tuple[float, float]:
    """Cross-entropy on all of (x, y) before and after ``steps`` steps of ``opt`` on random
    mini-batches (drawn by a generator of seed 1)."""
    import torch.nn.functional as F

    def loss_on_all():
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y))

    before = loss_on_all()
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(len(x), (batch,), generator=g)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return before, loss_on_all()
