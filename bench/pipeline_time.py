"""Wall time of trace and of each pass beside the LAPACK floor, measured in the same run.

Run: .venv/bin/python bench/pipeline_time.py [--threads 1 2] > bench/results/pipeline_time.md
The LAPACK floor is the time torch.linalg.svd (LAPACK, float64) takes on exactly the matrices
decompose-conv decomposes, plus one forward pass of the model: what decompose-conv cost before it
took the Gram-matrix path (fxprune.core.svd), and what it would cost with LAPACK alone.
"""

import argparse
import platform
import time

import torch

import fxprune
from fxprune.core.lowrank import as_groups, is_dense_layer, matrix_shape, pays
from fxprune.runners.models import create

MODELS = ["timm:resnet50", "timm:vit_small_patch16_224", "timm:efficientnet_b0", "tv:vgg16", "tv:regnet_y_16gf"]
PIPELINE = "decompose-conv,fold"


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
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("# Pipeline wall time beside the LAPACK floor\n")
    print(f"Pipeline `{PIPELINE}`, batch 1, 224x224, float32, random weights; best of {args.repeat}. "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} default threads. LAPACK floor = torch.linalg.svd (float64) of every matrix "
          "decompose-conv decomposes + one forward; `prune` = trace + all passes (what `fxprune.prune` costs, "
          "its SVDs through the Gram matrix, with LAPACK only for the directions it cannot resolve). Seconds.\n")
    print("| model | threads | trace | decompose-conv | fold | prune total | LAPACK SVD f64 "
          "| forward | LAPACK floor | prune / LAPACK floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
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
            runs = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                gm = fxprune.prune(model, x, PIPELINE)
                runs.append((time.perf_counter() - start, [r.seconds for r in fxprune.history(gm)]))
            total, passes = min(runs)
            floor = svd64 + fwd
            cells = [t_trace, *passes, total, svd64, fwd, floor]
            print(f"| {model_id} | {threads} | " + " | ".join(f"{c:.3f}" for c in cells) + f" | {total / floor:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
