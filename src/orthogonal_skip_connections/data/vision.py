"""Image datasets held as tensors, with an on-device loader.

- ``cifar10`` / ``cifar100``: read from the CIFAR "python version" files (the format of
  https://www.cs.toronto.edu/~kriz/cifar.html) under ``root``; torchvision downloads them
  when they are missing and ``download`` is true.
- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download),
  split 80/20 once with a fixed seed (stratified).

The whole set lives in one tensor; :class:`TensorLoader` shuffles, augments (random crop
with padding, horizontal flip) and normalises batches on the device. Every random draw of
an epoch comes from a generator seeded by (seed, epoch), so an epoch's batches are the same
whether or not the run was interrupted before it.
"""

from __future__ import annotations

import functools
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..runs import UserError, outermost_new, remove_empty

__all__ = ["DATASETS", "IMAGE_SHAPES", "NUM_CLASSES", "TRAIN_SIZES", "ImageData", "TensorLoader", "fetch",
           "fetch_each", "load_image_data", "default_data_root", "epoch_generator", "to_device"]

DATASETS = ("cifar10", "cifar100", "digits")
# (channels, height, width) of each dataset's images, known before anything is loaded
# (a config can be checked against it); the loaders return exactly these shapes
IMAGE_SHAPES = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "digits": (1, 8, 8)}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10}
# training images of each dataset's standard split: digits' is fixed (80% of 1797, the
# split below); CIFAR's are the published files' (a data root holding other files is
# checked again once they are loaded)
TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "digits": 1437}
DATA_ROOT_ENV = "OSC_DATA_ROOT"

# per-channel mean / std of the training sets
_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


# how the user sets the data root and whether to download (a format of true / false), named in a
# missing dataset's message: run_experiments' keys by default; a caller whose user sets them
# otherwise gives its own, and an app without them (two_stage, loss_landscape: the default root,
# always downloading) gives None
DATA_KEYS = ("data.root=...", "data.download={}")


def _root_hint(keys: tuple) -> str:
    return f"set {keys[0]} / ${DATA_ROOT_ENV}" if keys[0] else f"set ${DATA_ROOT_ENV}"


def default_data_root() -> Path:
    """``$OSC_DATA_ROOT`` if set, else ``~/.data`` (the original project's default)."""
    return Path(os.environ.get(DATA_ROOT_ENV, "~/.data")).expanduser()


@dataclass
class ImageData:
    """A dataset as tensors. Images are uint8 (N, C, H, W) for CIFAR, float32 for digits."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float  # divide raw pixel values by this to get [0, 1]
    crop_padding: int  # random-crop padding of the training augmentation (0: none)
    flip: bool  # random horizontal flips in the training augmentation

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> int:
        return self.x_train.shape[-1]


# What a CIFAR "python version" file may hold, besides dicts, lists, bytes, str and
# numbers (pickle's own opcodes): NumPy arrays and numbers, rebuilt by these functions
# (NumPy 1 and 2 names; _frombuffer for protocol 5). Anything else is refused before it
# is imported.
_CIFAR_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),  # a NumPy number
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # bytes pickled by Python 3 at protocol 2
}


class _CifarUnpickler(pickle.Unpickler):
    """A pickle reader that admits only what CIFAR batch files contain (dicts, lists,
    bytes/str, numbers, NumPy arrays): a crafted file naming any other callable (os.system,
    builtins.eval, ...) is refused when that name is read, so its payload never runs."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR file holds only dicts, lists, "
                                         f"bytes, str and NumPy arrays")
        return super().find_class(module, name)


def fetch(name: str, root: str | Path | None = None, download: bool = True, keys: tuple = DATA_KEYS) -> None:
    """Make sure dataset ``name``'s files are under ``root`` (default: :func:`default_data_root`),
    downloading them once where they are missing and ``download`` is true; reads nothing. What
    a caller that starts several runs on one dataset does first (``osc study``): each run then
    finds the files, rather than each downloading the same archive into one root at once. A
    missing dataset it may not download, or a failed download, is the one-line UserError of
    :func:`load_image_data` (naming ``keys``, see :data:`DATA_KEYS`); ``digits`` is bundled
    and needs nothing."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if name != "digits":
        _fetch_cifar(name, default_data_root() if root in (None, "") else Path(root).expanduser(), download, keys)


def fetch_each(runs, what: str = "run", keys: tuple = DATA_KEYS) -> None:
    """:func:`fetch` once per (dataset, root, download) of ``runs``, given as (label, name, root,
    download) each: what a caller that starts several runs does before the first (``osc study``,
    a sweep). Otherwise every run of a CIFAR missing offline failed on its own, and runs side by
    side downloaded the same archive into one root at once. A failure is the UserError
    ``<label> and every other <what> on <name>: ...`` of the first run that needs the dataset."""
    seen = set()
    for label, *key in runs:
        key = (key[0], key[1], bool(key[2]))
        if key not in seen:
            seen.add(key)
            try:
                fetch(*key, keys=keys)
            except UserError as err:
                raise UserError(f"{label} and every other {what} on {key[0]}: {err}") from None


def _fetch_cifar(name: str, root: Path, download: bool, keys: tuple = DATA_KEYS) -> Path:
    """The folder holding ``name``'s batch files under ``root``, downloaded first where they are
    missing and ``download`` is true; a UserError where they stay missing."""
    folder, train_files, test_files, _label_key = _CIFAR_FILES[name]
    base = root / folder
    missing = [f for f in train_files + test_files if not (base / f).is_file()]
    if missing and download:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        top = None if root.exists() else outermost_new(root)  # the first dir the download would make
        archive = root / cls.filename
        had_archive = archive.exists()
        try:
            cls(str(root), train=True, download=True)
        except Exception as err:  # URLError, socket errors, HTTP errors ...
            if not had_archive:  # what the failed download left: a partial archive, the dirs it made
                archive.unlink(missing_ok=True)
            if top is not None:
                remove_empty(root, top)
            raise UserError(
                f"{name} is not under {base} and downloading it failed ({type(err).__name__}: {err}); "
                f"download it elsewhere and copy the folder {folder}/ into {root}, or {_root_hint(keys)}"
            ) from None
        missing = [f for f in train_files + test_files if not (base / f).is_file()]
    if missing:
        raise UserError(
            f"{name} not found under {root} (missing {folder}/{missing[0]}) and {keys[1].format('false')}; "
            f"pass {keys[1].format('true')} to fetch it, or put the python-version files in {base} "
            f"(or {_root_hint(keys)})"
        )
    return base


def _read_cifar(name: str, root: Path, download: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _folder, train_files, test_files, label_key = _CIFAR_FILES[name]
    base = _fetch_cifar(name, root, download)

    def read(files):
        xs, ys = [], []
        for f in files:
            try:
                with open(base / f, "rb") as fh:
                    entry = _CifarUnpickler(fh, encoding="bytes").load()
                xs.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(entry[label_key], dtype=np.int64))
            except Exception as err:
                raise UserError(f"cannot read {base / f} as a CIFAR batch file: {type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")) from None
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    x_train, y_train = read(train_files)
    x_test, y_test = read(test_files)
    return x_train, y_train, x_test, y_test


@functools.lru_cache(maxsize=2)
def _digits_arrays(split_seed: int) -> tuple[np.ndarray, ...]:
    """The split as NumPy arrays, read once per process (scikit-learn parses a compressed
    CSV each time: ~1 s on a busy 2-core machine, for apps that build several models)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.float32)[:, None]  # (1797, 1, 8, 8), values 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, d.target, test_size=0.2, random_state=split_seed, stratify=d.target
    )
    return x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64)


def _digits(split_seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x_tr, y_tr, x_te, y_te = (torch.from_numpy(a.copy()) for a in _digits_arrays(split_seed))  # fresh tensors
    return x_tr, y_tr, x_te, y_te


def load_image_data(name: str, root: str | Path | None = None, download: bool = True,
                    augment: bool = True) -> ImageData:
    """Load ``name`` (one of DATASETS; another name raises ValueError). Missing files with
    ``download=False``, a failed download or an unreadable batch file raise
    :class:`~orthogonal_skip_connections.runs.UserError` (not a ValueError) with one line
    naming the root or file and how to get the data."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if name == "digits":
        x_tr, y_tr, x_te, y_te = _digits()
        v = x_tr / 16.0
        return ImageData(name, x_tr, y_tr, x_te, y_te, NUM_CLASSES[name], (float(v.mean()),), (float(v.std()),),
                         scale=16.0, crop_padding=1 if augment else 0, flip=False)
    root = default_data_root() if root in (None, "") else Path(root).expanduser()
    x_tr, y_tr, x_te, y_te = _read_cifar(name, root, download)
    mean, std = _CIFAR_STATS[name]
    return ImageData(name, x_tr, y_tr, x_te, y_te, NUM_CLASSES[name], mean, std,
                     scale=255.0, crop_padding=4 if augment else 0, flip=augment)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of every random draw in one epoch (order, crops, flips, mixup)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` (a small CPU tensor: a generator's draws) on ``device`` without waiting for it.
    A blocking host-to-GPU copy synchronises the stream (the CPU would wait for the previous
    training step every batch), and an asynchronous one from pageable memory may too (CUDA's
    API synchronisation notes), so on CUDA the draws go through pinned memory: the copy
    is queued on the stream, and torch's pinned-memory cache keeps the buffer until it is done."""
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _random_crop(x: Tensor, pad: int, oy: Tensor, ox: Tensor) -> Tensor:
    """Zero-pad by ``pad`` and crop back to size at offset (oy[i], ox[i]) of image i."""
    n, _, h, w = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy, ox = to_device(oy, x.device), to_device(ox, x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return xp[idx_n, idx_c, rows, cols]


class TensorLoader:
    """Batches of (normalised images, labels) on ``device``.

    ``train=True``: a fresh permutation each epoch, the dataset's augmentation, and
    ``drop_last`` so BatchNorm never sees a batch of one. ``train=False``: in order, no
    augmentation, every sample once.

    ``rank`` of ``world`` (data-parallel training): ``batch_size`` is the global batch;
    every rank draws the same permutation and augmentation for the whole batch from the
    epoch's generator and yields its own contiguous ``batch_size / world`` share of it, so
    the ranks together see exactly the batches one process would. Evaluation
    (``train=False``) is not sharded.
    """

    def __init__(self, data: ImageData, batch_size: int, train: bool, device: torch.device,
                 channels_last: bool = False, rank: int = 0, world: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}); got {rank}")
        self.data, self.train, self.device = data, train, device
        x, y = (data.x_train, data.y_train) if train else (data.x_test, data.y_test)
        self.x, self.y = x.to(device), y.to(device)
        self.rank, self.world = (rank, world) if train else (0, 1)
        if batch_size % self.world:
            raise ValueError(f"batch_size {batch_size} does not split evenly over {self.world} processes")
        # a batch larger than the training set is cut to it, to a multiple of the processes
        self.batch_size = min(batch_size, len(self.x) - len(self.x) % self.world) if train else batch_size
        if self.batch_size < 1:
            raise ValueError(f"a training set of {len(self.x)} cannot be shared by {self.world} processes")
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1) * data.scale
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1) * data.scale
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def epoch(self, gen: torch.Generator | None = None):
        """Yield the batches of one epoch; ``gen`` drives shuffling and augmentation."""
        n = len(self.x)
        order = to_device(torch.randperm(n, generator=gen), self.device) if self.train else None
        share = self.batch_size // self.world
        mine = slice(self.rank * share, (self.rank + 1) * share)
        for b in range(len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            if order is None:
                x, y = self.x[sl].float(), self.y[sl]
            else:  # draws for the whole global batch (the same on every rank), then this rank's share
                idx = order[sl]
                pad = self.data.crop_padding
                if pad > 0:
                    oy = torch.randint(0, 2 * pad + 1, (len(idx),), generator=gen)
                    ox = torch.randint(0, 2 * pad + 1, (len(idx),), generator=gen)
                if self.data.flip:
                    flip = torch.rand(len(idx), generator=gen) < 0.5
                idx = idx[mine]
                x, y = self.x[idx].float(), self.y[idx]
                if pad > 0:
                    x = _random_crop(x, pad, oy[mine], ox[mine])
                if self.data.flip:
                    x = torch.where(to_device(flip[mine], self.device)[:, None, None, None], x.flip(3), x)
            x = ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)
            yield x, y
