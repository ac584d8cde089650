"""decompose-conv on resnet50 with the CPU idle and with competing busy processes: fxprune's thread
choice (threads.free_threads: as many as cores are idle) against forcing every core.

    .venv/bin/python -m bench.busy_cpu        # about 2 minutes on 2 cores

Writes bench/results/busy_cpu.md. Each configuration runs in a fresh process; times are the least
of 2 runs; the busy processes are `while True: pass` loops started before and killed after.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from fxprune.core.io import atomic_write_text

CHILD = """
import sys, time, torch, torchvision, fxprune
import fxprune.passes.decompose_conv as d
if sys.argv[1] == "forced":  # what fxprune did before: every core, however busy
    d.free_threads = lambda: __import__("contextlib").nullcontext(torch.get_num_threads())
from fxprune.core.threads import idle_cores
m = torchvision.models.resnet50().eval(); x = torch.randn(1, 3, 64, 64)
idle = idle_cores()
t = time.perf_counter(); fxprune.prune(m, x, "decompose-conv"); s = time.perf_counter() - t
print(f"{s:.2f} {idle:.2f}")
"""


def timed(mode: str, busy: int) -> tuple[float, float]:
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        time.sleep(1)
        runs = []
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).resolve().parent.parent).stdout.split()
            runs.append((float(out[0]), float(out[1])))
        return min(runs)
    finally:
        for h in hogs:
            h.kill()


def main() -> None:
    import torch

    rows = []
    for busy in (0, 1, 2):
        for mode in ("forced", "fxprune"):
            seconds, idle = timed(mode, busy)
            rows.append((busy, mode, seconds, idle))
            print(busy, mode, seconds, idle, flush=True)
    base = {m: s for b, m, s, _ in rows if b == 0}
    lines = ["# decompose-conv on a busy CPU", "",
             f"Reproduce: `.venv/bin/python -m bench.busy_cpu` ({os.cpu_count()} cores, torch "
             f"{torch.__version__}, torch threads {torch.get_num_threads()} by default). resnet50, input 1x3x64x64, "
             "least of 2 runs, each in a fresh process; busy = `while True: pass` processes running beside it.", "",
             "| busy processes | threads | seconds | x its idle time | idle cores seen |", "| --- | --- | --- | --- | --- |"]
    for busy, mode, seconds, idle in rows:
        label = "every core (before)" if mode == "forced" else "as many as idle (fxprune)"
        lines.append(f"| {busy} | {label} | {seconds:.2f} | {seconds / base[mode]:.1f}x | {idle:.2f} |")
    atomic_write_text(Path(__file__).parent / "results" / "busy_cpu.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
