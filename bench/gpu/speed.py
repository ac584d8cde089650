"""Training speed on a CUDA machine, Lite0 at 224 px, bf16 autocast, channels-last.

compute: steps/s on random batches already on the device (no loader), for plain fine-tuning (every weight,
train mode, AdamW) and fxprune's decomposed model as pairs (scales + head).
loader: one epoch of train_scaling against plain fine-tuning on JPEGs, 12 loader workers.

    .venv/bin/python -m bench.gpu.speed                       (bench/gpu/check.sh runs it)
    .venv/bin/python -m bench.gpu.speed --device cpu --size 64 --batch 8 --steps 2 --no-loader   (a smoke run)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.transfer.scale import speed


def compute(device: str, size: int, batch: int, steps: int) -> list[dict]:
    import fxprune
    from fxprune.training.runtime import Runtime

    from bench.transfer.lite0 import load_lite0

    runtime = Runtime.resolve(device)
    rows = []
    for loop in ("finetune", "pairs"):
        torch.manual_seed(0)
        model = load_lite0(10)
        if loop == "finetune":
            gm = runtime.model(model).train()
        else:
            gm = runtime.model(fxprune.prune(model, torch.randn(1, 3, size, size), "decompose-conv,insert-scaling"))
            gm.eval()
        opt = torch.optim.AdamW([p for p in gm.parameters() if p.requires_grad], lr=1e-4)
        x, y = runtime.batch((torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))))

        def step() -> None:
            with runtime.autocast():
                loss = F.cross_entropy(gm(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(3):  # warm-up: cuDNN's algorithm search, allocator
            step()
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        rows.append({"bench": "compute", "loop": loop, "batch": batch, "size": size, "steps": steps,
                     "device": runtime.text(), "threads": torch.get_num_threads(),
                     "images_per_s": round(batch * steps / seconds, 1)})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--loader", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args(argv)
    for row in compute(args.device, args.size, args.batch, args.steps):
        print(row, flush=True)
    if args.loader:
        for row in speed(Path("/tmp/fxprune-scale"), images=4000, batch=args.batch, device=args.device, workers=12):
            print(row, flush=True)


if __name__ == "__main__":
    main()
