"""CPU latency of original against pruned models, eager and torch.compile'd, batch 1 and 16, beside
the MAC reduction: how much of the speedup the arithmetic promises do we get?

    .venv/bin/python -m bench.latency [--out bench/results/latency.md] [--models ...] [--repeats 10] [--runs 3]
                                      [--threads N]

Random weights (timm models, nothing downloaded). The least, over `runs` runs, of the median wall time
of `repeats` calls after warm-up (a busy moment of the machine spoils one run, not the result),
torch.no_grad, float32. Compiled: inductor, one compile per batch size; torch._dynamo.reset() between models.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from tabulate import tabulate

import fxprune
from fxprune.analysis.counting import total_macs, total_params
from fxprune.core.io import atomic_write_text
from fxprune.runners.models import create

MODELS = ("timm:resnet50", "timm:mobilenetv3_large_100", "timm:vit_small_patch16_224")
PIPELINES = {
    "bases, MACs 0.5": "decompose-conv,prune-basis{target-macs=0.5},fold",
    "channels 0.3": "prune-channels{ratio=0.3},fold",
    "channels, MACs 0.5": "prune-channels{target-macs=0.5},fold",
    "channels, latency 0.5": "prune-channels{target-latency=0.5},fold",  # latency of batch 1, eager, here
    "bases, latency 0.5": "decompose-conv,prune-basis{target-latency=0.5},fold{merge=latency}",
}


def latency(fn, x: torch.Tensor, repeats: int, runs: int) -> float:
    """Least over `runs` of the median seconds per call (after two warm-up calls, which also compile)."""
    with torch.no_grad():
        for _ in range(2):
            fn(x)
        medians = []
        for _ in range(runs):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn(x)
                times.append(time.perf_counter() - start)
            medians.append(statistics.median(times))
    return min(medians)


def measure(model_id: str, repeats: int, runs: int, pipelines: dict[str, str]) -> list[dict]:
    torch.manual_seed(0)
    original = create(model_id).eval()
    x1 = torch.randn(1, 3, 224, 224)
    variants = {"original": original}
    variants.update({name: fxprune.prune(original, x1, p) for name, p in pipelines.items()})
    rows = []
    base: dict[tuple[str, int], float] = {}
    macs0 = total_macs(original, (x1,))
    for name, model in variants.items():
        macs = total_macs(model, (x1,))
        for mode in ("eager", "compiled"):
            torch._dynamo.reset()  # a fresh cache per model: no silent fallback to eager
            fn = model if mode == "eager" else torch.compile(model, dynamic=False)
            for batch in (1, 16):
                x = torch.randn(batch, 3, 224, 224)
                t = latency(fn, x, repeats if batch == 1 else max(3, repeats // 3), runs)
                base.setdefault((mode, batch), t)
                rows.append({"model": model_id, "variant": name, "mode": mode, "batch": batch,
                             "ms": t * 1e3, "params": total_params(model), "macs_kept": macs / macs0,
                             "speedup": base[(mode, batch)] / t, "promised": macs0 / macs})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/latency.md")
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3, help="runs of `repeats` calls; the least median counts")
    ap.add_argument("--variants", nargs="*", default=list(PIPELINES), choices=list(PIPELINES),
                    help="pipelines to compare with the original")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for model_id in args.models:
        rows += measure(model_id, args.repeats, args.runs, {k: PIPELINES[k] for k in args.variants})
        print(f"{model_id} done", flush=True)
    table = tabulate([[r["model"], r["variant"], r["mode"], r["batch"], f"{r['ms']:.1f}", f"{r['params']:,}",
                       f"{r['macs_kept']:.2f}", f"{r['speedup']:.2f}x", f"{r['promised']:.2f}x",
                       f"{(r['speedup'] - 1) / (r['promised'] - 1):.0%}" if r["promised"] > 1.001 else ""]
                      for r in rows],
                     ["model", "variant", "mode", "batch", "ms", "params", "MACs kept", "speedup", "MAC speedup",
                      "share of promise"], tablefmt="github", disable_numparse=True)
    command = "".join([f" --out {args.out}" if args.out != "bench/results/latency.md" else "",
                       f" --models {' '.join(args.models)}" if args.models != list(MODELS) else "",
                       f" --variants {' '.join(map(repr, args.variants))}" if args.variants != list(PIPELINES) else ""])
    text = f"""# Latency: original against pruned, eager and compiled (CPU)

Reproduce: `.venv/bin/python -m bench.latency --threads {args.threads} --runs {args.runs}{command}`. {platform.processor() or platform.machine()}, {torch.get_num_threads()}
torch threads, torch {torch.__version__}, float32; the least over {args.runs} runs of the median of {args.repeats} calls at
batch 1 ({max(3, args.repeats // 3)} at batch 16), after warm-up, on an otherwise idle machine. Random weights; pipelines: {', '.join(f'{k}: `{v}`' for k, v in PIPELINES.items() if k in args.variants)}.
`target-latency` budgets the model's latency on the example input given to prune (batch 1, eager, these
threads), from a per-layer latency table measured on this machine (fxprune.LatencyTable).
"speedup" is against the original in the same mode and batch; "MAC speedup" is MACs before / after, the
speedup the arithmetic promises; "share of promise" is (speedup - 1) / (MAC speedup - 1).

{table}
"""
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
