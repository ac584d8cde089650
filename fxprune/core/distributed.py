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
    """Each tensor averaged over the ranks (every rank gets the same values), in one all_reduce of them
    flattened together (the importance loops call this once per batch); None stays None on every rank (a
    tensor unused on one rank is unused on all: they run the same graph)."""
    present = [t for t in tensors if t is not None]
    if not active() or not present:
        return tensors
    flat = torch.cat([t.reshape(-1).to(present[0].dtype) for t in present])
    dist.all_reduce(flat)
    flat /= world()
    parts = iter(flat.split([t.numel() for t in present]))
    return [None if t is None else next(parts).view_as(t).to(t.dtype) for t in tensors]


def from_rank0(value):
    """Rank 0's `value` on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
