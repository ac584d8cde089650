"""On a CUDA machine: the lossless smoke zoo (decompose-conv,fold) with the passes run on the CPU and on
the GPU, each pruned model run on both, against the original on the CPU; and the time of each side.
TF32 is off, so the CUDA column measures the transform and the device's float32 rounding, which the
last column shows for the original model alone.

    .venv/bin/python -m bench.gpu.lossless     (bench/gpu/check.sh runs it)
"""

from __future__ import annotations

import copy
import time

import torch
from torch.utils._pytree import tree_map

import fxprune
from fxprune.core.verify import output_error
from fxprune.runners import zoo
from fxprune.runners.models import create

PIPELINE = "decompose-conv,fold"


def main() -> None:
    cuda = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    print("| model | passes on | seconds | rel. error on CPU | rel. error on CUDA | original on CUDA |\n"
          "|---|---|---|---|---|---|")
    worst = 0.0
    for entry in zoo.load("zoo_configs/smoke.toml"):
        if entry.skip:
            continue
        model, x = zoo.example(entry, create(entry.id).eval())
        with torch.no_grad():
            reference = model(*x)
        for where in ("cpu", "cuda"):
            source = model if where == "cpu" else copy.deepcopy(model).to(cuda)  # example() may wrap it
            inputs = tuple(t.to(where) for t in x)
            torch.cuda.synchronize()
            start = time.perf_counter()
            small = fxprune.prune(source, inputs, PIPELINE)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            with torch.no_grad():
                on_cpu = output_error(small.to("cpu")(*x), reference).rel_l2
                on_cuda = output_error(on_device(small, x, cuda), reference).rel_l2
                baseline = output_error(on_device(model, x, cuda), reference).rel_l2
            worst = max(worst, on_cpu, on_cuda)
            print(f"| {entry.id} | {where} | {seconds:.2f} | {on_cpu:.1e} | {on_cuda:.1e} | {baseline:.1e} |",
                  flush=True)
    print(f"\nworst relative error {worst:.1e}")


def on_device(module, x, device):
    """`module`'s output on `x` computed on a copy of it on `device`, back on the CPU (a pruned model may
    share unchanged layers with its source, which .to() would move)."""
    module = copy.deepcopy(module).to(device)
    return tree_map(lambda t: t.cpu() if isinstance(t, torch.Tensor) else t, module(*(t.to(device) for t in x)))


if __name__ == "__main__":
    main()
