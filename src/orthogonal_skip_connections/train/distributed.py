"""Data-parallel training under ``torchrun`` (DistributedDataParallel, one process per device).

    torchrun --standalone --nproc_per_node=2 -m orthogonal_skip_connections.experiments.run_experiments ...

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in every
process's environment; :func:`init_from_env` joins the process group (NCCL on CUDA, gloo on
the CPU). The rules every loop follows under a process group:

- every rank builds the same model from the same seed, and DDP broadcasts rank 0's weights
  once at wrapping; gradients are averaged by DDP, so every rank takes the same optimiser
  step, retraction included (same W, same averaged gradient, same deterministic maths);
- the data are sharded by the loader: every rank draws the same permutation and the same
  augmentation from the epoch's generator and keeps its own 1/N of each global batch;
- BatchNorm running statistics are per rank unless ``sync_batchnorm``; they are made rank
  0's (:func:`broadcast_buffers`) before every evaluation and checkpoint;
- only rank 0 writes files (:func:`is_main`); every rank reads a checkpoint to resume.

Without a process group every function here is the single-process case (rank 0 of 1).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["launched_by_torchrun", "init_from_env", "rank", "world_size", "is_main", "rank_prefix", "device_for_rank",
           "broadcast_object", "broadcast_buffers", "all_sum", "all_mean", "any_true", "leave"]


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """Rank 0 (or no process group): the process that writes files."""
    return rank() == 0


def rank_prefix() -> str:
    """``rank k of n: `` on the other ranks of a torchrun run, else nothing. A refusal at run
    time can be one rank's own (its shard, its device), so every rank says it, and its line
    says whose it is; rank 0's reads as a single process's would."""
    return "" if is_main() else f"rank {rank()} of {world_size()}: "


def init_from_env(timeout_s: float = 1800.0) -> None:
    """Join the process group torchrun described in the environment (once per process):
    NCCL when this rank has a CUDA device, gloo otherwise."""
    if _active() or not launched_by_torchrun():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))


def device_for_rank(device: torch.device) -> torch.device:
    """Under a process group a CUDA device becomes this process's own GPU (``LOCAL_RANK``)."""
    if _active() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (picklable objects)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def broadcast_buffers(model: nn.Module) -> None:
    """Every buffer of ``model`` (BatchNorm running statistics, ...) becomes rank 0's."""
    if not _active():
        return
    for buf in model.buffers():
        if buf.is_floating_point() or buf.dtype in (torch.int64, torch.int32):
            dist.broadcast(buf, src=0)


def all_sum(values: list[float], device: torch.device | None = None) -> list[float]:
    """The sums over ranks of ``values`` (float64), identical on every rank."""
    if not _active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device or _collective_device())
    dist.all_reduce(t)
    return t.tolist()


def all_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of ``t``, identical on every rank, as a tensor on ``t``'s device:
    the collective runs on the device (NCCL) without a host read. Same numbers as
    ``all_sum([float(t)])[0] / world_size()`` for a float64 ``t``."""
    if not _active():
        return t
    s = t.detach().to(_collective_device(), copy=True)  # a copy: the all-reduce is in place
    dist.all_reduce(s)
    return (s / world_size()).to(t.device)


def any_true(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (keeps ranks in lockstep on a decision)."""
    if not _active():
        return flag
    return all_sum([1.0 if flag else 0.0])[0] > 0


def leave() -> None:
    """Leave the process group (at the end of a torchrun job)."""
    if _active():
        dist.destroy_process_group()
