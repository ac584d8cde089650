"""Thread counts that suit a busy machine: OpenMP threads spin-wait for each other, so asking for
every core while another process holds one is many times slower than using the idle cores only
(bench/results/busy_cpu.md)."""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager

import torch


def idle_cores(window: float = 0.05) -> float | None:
    """Cores left idle by every process over the next `window` seconds (Linux /proc/stat); None elsewhere."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(window)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (idle1 - idle0) / (total1 - total0) * (os.cpu_count() or 1)


@contextmanager
def free_threads():
    """Run the block with at most as many torch threads as cores are idle now (at least 1); yields
    the count. Threads the user set lower stay lower."""
    before = torch.get_num_threads()
    idle = idle_cores()
    use = before if idle is None else max(1, min(before, math.floor(idle + 0.25)))
    torch.set_num_threads(use)
    try:
        yield use
    finally:
        torch.set_num_threads(before)
