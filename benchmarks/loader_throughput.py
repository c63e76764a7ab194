"""Epoch time of this library's on-device loader (``data.vision.TensorLoader``) against a
torchvision ``DataLoader`` with worker processes, over CIFAR-shaped data.

The data: N random uint8 images of 3 x 32 x 32 (N = 50,000 by default, CIFAR's training
set) with labels. Every loader yields the same thing for the training loop: shuffled
batches on the device, randomly cropped (zero padding 4) and flipped, as normalised
float32 in channels_last. An epoch is timed from the first batch asked for to the last
batch on the device (device synchronised); the first epoch is a warm-up (worker start,
kernel compilation) and the table gives the median of the others.

- ``TensorLoader (device)``: the whole set held on the device; indices, crops and flips
  are drawn on the CPU from the epoch's generator and applied on the device.
- ``DataLoader tensor``: a map-style dataset over the uint8 tensor, torchvision
  ``transforms.v2`` per image (RandomCrop(32, padding=4), RandomHorizontalFlip) in
  ``--workers`` processes, ``pin_memory``, ``persistent_workers``; each batch copied to
  the device (non_blocking), then converted and normalised there.
- ``DataLoader PIL``: the classic CIFAR pipeline (PIL images, ``transforms``
  RandomCrop, RandomHorizontalFlip, ToTensor, Normalize in the workers).

Target (issue 13, on an H100/H200): the on-device loader at least 5x the DataLoader's
throughput (taken against the faster DataLoader).

    python benchmarks/loader_throughput.py                 # 50,000 images, batch 512, 8 workers
    python benchmarks/loader_throughput.py --quick         # seconds on a CPU: a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from _bench import header, parse_args, positive, resolve_device, synchronize, table

from orthogonal_skip_connections.data.vision import ImageData, TensorLoader, epoch_generator

TARGET = 5.0
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def cifar_shaped(n: int, seed: int = 0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    return ImageData(name="cifar10", x_train=x, y_train=y, x_test=x[:0], y_test=y[:0], num_classes=10,
                     mean=MEAN, std=STD, scale=255.0, crop_padding=4, flip=True)


class _TensorSet(torch.utils.data.Dataset):
    """uint8 CHW images through torchvision transforms.v2, one image at a time."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        from torchvision.transforms import v2

        self.x, self.y = x, y
        self.tf = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.tf(self.x[i]), self.y[i]


class _PILSet(torch.utils.data.Dataset):
    """The classic CIFAR pipeline: HWC uint8 -> PIL -> crop, flip, ToTensor, Normalize."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        from torchvision import transforms as T

        self.x, self.y = x.permute(0, 2, 3, 1).contiguous().numpy(), y.numpy()
        self.tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                             T.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.tf(Image.fromarray(self.x[i])), int(self.y[i])


def tensor_loader_epochs(data: ImageData, batch: int, device: torch.device, epochs: int):
    loader = TensorLoader(data, batch, train=True, device=device, channels_last=True)
    for epoch in range(epochs):
        synchronize(device)
        t0 = time.perf_counter()
        n = 0
        for x, y in loader.epoch(epoch_generator(0, epoch)):
            n += len(y)
        synchronize(device)
        yield time.perf_counter() - t0, n


def dataloader_epochs(dataset, batch: int, device: torch.device, epochs: int, workers: int, normalise: bool):
    pin = device.type == "cuda"
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
    for _ in range(epochs):
        synchronize(device)
        t0 = time.perf_counter()
        n = 0
        for x, y in loader:
            x = x.to(device, non_blocking=pin)
            y = y.to(device, non_blocking=pin)
            if normalise:  # uint8 from the v2 pipeline: convert and normalise on the device
                x = (x.float() - mean) / std
            x = x.contiguous(memory_format=torch.channels_last)
            n += len(y)
        synchronize(device)
        yield time.perf_counter() - t0, n
    del loader


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=positive, default=50_000, help="images in the training set")
    p.add_argument("--batch", type=positive, default=512)
    p.add_argument("--epochs", type=positive, default=4, help="epochs per loader, the first a warm-up")
    p.add_argument("--workers", type=int, default=8, help="DataLoader worker processes")
    p.add_argument("--device", default="auto", help="auto (cuda if any, else cpu) | cpu | cuda | cuda:N")
    p.add_argument("--no-pil", action="store_true", help="leave out the PIL DataLoader")
    p.add_argument("--quick", action="store_true", help="smoke run: 2,048 images, batch 256, 2 workers, 2 epochs")
    args = parse_args(p, argv, quick=dict(n=2048, batch=256, workers=2, epochs=2))
    if args.epochs < 2:
        raise SystemExit("--epochs must be >= 2 (the first is a warm-up)")
    device = resolve_device(args.device)
    data = cifar_shaped(args.n)
    print(header(f"loader epoch time: {args.n:,} CIFAR-shaped uint8 images, batch {args.batch}, random crop "
                 f"(pad 4) + flip, normalised, channels_last, on {device.type}", device), flush=True)
    print(f"CPU cores: {torch.multiprocessing.cpu_count()}, DataLoader workers: {args.workers}", flush=True)

    runs = {f"TensorLoader ({device.type})": tensor_loader_epochs(data, args.batch, device, args.epochs)}
    if device.type == "cuda":
        runs["TensorLoader (cpu), batches stay on cpu"] = tensor_loader_epochs(data, args.batch, torch.device("cpu"),
                                                                               args.epochs)
    runs[f"DataLoader tensor v2, {args.workers} workers"] = dataloader_epochs(
        _TensorSet(data.x_train, data.y_train), args.batch, device, args.epochs, args.workers, True)
    if not args.no_pil:
        runs[f"DataLoader PIL, {args.workers} workers"] = dataloader_epochs(
            _PILSet(data.x_train, data.y_train), args.batch, device, args.epochs, args.workers, False)

    results = {}
    for name, epochs in runs.items():  # one loader at a time: workers must not compete
        times = [t for t, _ in epochs]
        n = args.n // args.batch * args.batch
        results[name] = (statistics.median(times[1:]), times[0], n)
        print(f"  {name}: epochs {', '.join(f'{t:.3f}' for t in times)} s", flush=True)

    ours = results[f"TensorLoader ({device.type})"][0]
    best_dl = min(v[0] for k, v in results.items() if k.startswith("DataLoader"))
    rows = []
    for name, (med, first, n) in results.items():
        rows.append([name, f"{med:.3f}", f"{first:.3f}", f"{n / med:,.0f}", f"{med / ours:.2f}"])
    print("\n" + table(["loader", "epoch s (median)", "first epoch s", "img/s", "time / TensorLoader"], rows,
                       "<>>>>"))
    speedup = best_dl / ours
    verdict = "met" if speedup >= TARGET else "MISSED"
    print(f"\nTensorLoader ({device.type}) vs the faster DataLoader: {speedup:.1f}x throughput "
          f"(target >= {TARGET:.0f}x on H100/H200: {verdict})")


if __name__ == "__main__":
    main(sys.argv[1:])
