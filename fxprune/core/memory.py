"""Giving freed memory back to the OS between layers.

glibc raises its mmap threshold each time a large block is freed, so later blocks of up to 32 MiB
come from the heap, and what a layer's float64 SVD frees stays resident and fragments it: on resnet18
decompose-conv then peaked 130 MiB over its start for 50 MiB of new factors. `malloc_trim` after a large
layer returns those pages (decompose-conv calls it after weights of 2M or more: each call takes 4-12 ms;
bench/results/memory.md). Elsewhere (no glibc) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_freed() -> None:
    """Return the C heap's free pages to the OS (glibc's malloc_trim(0)); a no-op without glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
