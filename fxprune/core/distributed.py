"""torch.distributed as the training loops use it: one process (no process group) behaves as before;
under torchrun every rank holds the same model, gradients and importance are averaged across ranks,
and rank 0's decisions are broadcast, so every rank cuts the same channels."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: torch.device) -> None:
    """Join the process group torchrun describes: NCCL for CUDA, gloo for the CPU."""
    if launched() and not active():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def mean(tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Each tensor averaged over the ranks (every rank gets the same values); None stays None on every rank
    (a tensor unused on one rank is unused on all: they run the same graph)."""
    if not active():
        return tensors
    out = []
    for t in tensors:
        if t is not None:
            t = t.clone()
            dist.all_reduce(t)
            t /= world()
        out.append(t)
    return out


def gather(values: list) -> list:
    """The lists of every rank, concatenated in rank order."""
    if not active():
        return values
    parts = [None] * world()
    dist.all_gather_object(parts, values)
    return [v for part in parts for v in part]


def from_rank0(value):
    """Rank 0's `value` on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
