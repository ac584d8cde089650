"""Wall time of trace and of each pass beside the floor (the SVDs alone plus one forward).

Run: .venv/bin/python bench/pipeline_time.py [--threads 1 2] > bench/results/pipeline_time.md
The floor is the time of exactly the SVDs decompose-conv computes (same matrices, same float64
dtype) plus one forward pass of the model: work no implementation of the method can skip.
"""

import argparse
import platform
import time

import torch

import fxprune
from fxprune.core.lowrank import as_groups, is_dense_layer, matrix_shape, pays
from fxprune.runners.models import create

MODELS = ["timm:resnet50", "timm:vit_small_patch16_224", "timm:efficientnet_b0"]
PIPELINE = "decompose-conv,prune-basis{energy=0.95},fold"


def svd_seconds(model: torch.nn.Module, dtype: torch.dtype) -> float:
    total = 0.0
    for m in model.modules():
        if is_dense_layer(m) and pays(1, *matrix_shape(m)[1:]):
            w = as_groups(m.weight.detach(), matrix_shape(m)[0]).to(dtype)
            start = time.perf_counter()
            torch.linalg.svd(w, full_matrices=False)
            total += time.perf_counter() - start
    return total


def best_of(n, fn):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("# Pipeline wall time beside the floor\n")
    print(f"Pipeline `{PIPELINE}`, batch 1, 224x224, float32, random weights; best of {args.repeat}. "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} default threads. Floor = float64 SVDs of every decomposed layer + one "
          "forward; `prune` = trace + all passes (what `fxprune.prune` costs). Seconds.\n")
    print("| model | threads | trace | decompose-conv | prune-basis | fold | prune total | SVD f64 | SVD f32 "
          "| forward | floor | prune / floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model_id in MODELS:
        torch.manual_seed(0)
        model = create(model_id).eval()
        x = torch.randn(1, 3, 224, 224)
        for threads in args.threads:
            torch.set_num_threads(threads)
            with torch.no_grad():
                model(x)
                fwd = best_of(args.repeat, lambda: model(x))
            t_trace = best_of(args.repeat, lambda: fxprune.trace(model))
            svd64 = min(svd_seconds(model, torch.float64) for _ in range(args.repeat))
            svd32 = min(svd_seconds(model, torch.float32) for _ in range(args.repeat))
            runs = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                gm = fxprune.prune(model, x, PIPELINE)
                runs.append((time.perf_counter() - start, [r.seconds for r in fxprune.history(gm)]))
            total, passes = min(runs)
            floor = svd64 + fwd
            cells = [t_trace, *passes, total, svd64, svd32, fwd, floor]
            print(f"| {model_id} | {threads} | " + " | ".join(f"{c:.3f}" for c in cells) + f" | {total / floor:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
