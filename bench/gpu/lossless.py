"""On a CUDA machine: the lossless smoke zoo (decompose-conv,fold) with the passes run on the CPU and on
the GPU, each pruned model run on both, against the original on the CPU; and the time of each side.

    .venv/bin/python -m bench.gpu.lossless     (bench/gpu/check.sh runs it)
"""

from __future__ import annotations

import time

import torch

import fxprune
from fxprune.core.verify import output_error
from fxprune.runners import zoo
from fxprune.runners.models import create

PIPELINE = "decompose-conv,fold"


def main() -> None:
    cuda = torch.device("cuda")
    print("| model | passes on | seconds | rel. error on CPU | rel. error on CUDA |\n|---|---|---|---|---|")
    worst = 0.0
    for entry in zoo.load("zoo_configs/smoke.toml"):
        if entry.skip:
            continue
        model, x = zoo.example(entry, create(entry.id).eval())
        with torch.no_grad():
            reference = model(*x)
        for where in ("cpu", "cuda"):
            source = model if where == "cpu" else create(entry.id).eval().to(cuda)
            if where == "cuda":
                source.load_state_dict(model.state_dict())
            inputs = tuple(t.to(where) for t in x)
            torch.cuda.synchronize()
            start = time.perf_counter()
            small = fxprune.prune(source, inputs, PIPELINE)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            with torch.no_grad():
                on_cpu = output_error(small.to("cpu")(*x), reference).rel_l2
                on_cuda = output_error(small.to(cuda)(*(t.to(cuda) for t in x)).cpu(), reference).rel_l2
            worst = max(worst, on_cpu, on_cuda)
            print(f"| {entry.id} | {where} | {seconds:.2f} | {on_cpu:.1e} | {on_cuda:.1e} |", flush=True)
    print(f"\nworst relative error {worst:.1e}")


if __name__ == "__main__":
    main()
