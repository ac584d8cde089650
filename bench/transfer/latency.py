"""Budgets in time against budgets in MACs, on real weights and data: ImageNet EfficientNet-Lite0 transferred
to MNIST digits (scales + head trained once), then channels pruned iteratively from that same model until
the folded model takes at most half its measured time (`until="latency=0.5"`) or holds half its MACs
(`until="macs=0.5"`). Reported: measured latency (a batch of 16 digits, this machine, the threads stated),
params, MACs, val and held-out test accuracy. At batch 1 on 64x64 digits half the time is out of reach: with
95% of every group's channels removed Lite0 still takes 0.53 of its time there (per-op costs), 0.28 at batch 16.

    .venv/bin/python -m bench.transfer.latency      # about 10 minutes on 2 cores; run it alone (it times)

Writes bench/transfer/results/latency-mnist.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import fxprune
from fxprune.analysis.counting import total_macs, total_params
from fxprune.analysis.latency import median_time
from fxprune.core.io import atomic_write_text

from .digits import add_split_args, benchmark_split, digits
from .lite0 import load_lite0


SCHEDULE = "constant"  # the lr schedule these results were measured with (before cosine became the default)


def latency_ms(model, x, rounds: int = 5) -> float:
    """Median over `rounds` of the median of 21 timed calls, in ms."""
    return 1e3 * statistics.median(median_time(model, (x,), repeats=21, warmup=5) for _ in range(rounds))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_split_args(ap)
    ap.add_argument("--budgets", nargs="+", default=["latency=0.5", "macs=0.5"])
    ap.add_argument("--batch", type=int, default=16, help="the batch the latency is measured (and budgeted) on")
    args = ap.parse_args(argv)
    start = time.time()
    torch.manual_seed(0)
    train, val, test, x_train, n = benchmark_split(digits, args.size, args.val)
    x = x_train[:args.batch]
    gm = fxprune.prune(load_lite0(num_classes=10), x, "decompose-conv,insert-scaling")
    fxprune.train_scaling(gm, train, epochs=args.epochs, schedule=SCHEDULE, progress=False)
    transferred = fxprune.prune(gm, x, "fold")

    def row(name: str, model) -> dict:
        return {"model": name, "latency_ms": round(latency_ms(model, x), 3), "params": total_params(model),
                "macs": total_macs(model, (x,)), "val_accuracy": fxprune.evaluate(model, val)["accuracy"],
                "test_accuracy": fxprune.evaluate(model, test)["accuracy"]}

    rows = [row("transferred", transferred)]
    for budget in args.budgets:
        torch.manual_seed(0)
        search = fxprune.prune_iteratively(gm, x, data=train, val_data=val, prune_what="channels",
                                                  criterion="taylor", step=args.step, until=budget,
                                                  importance_data=train[:8], schedule=SCHEDULE, progress=False)
        pruned, steps = search.model, search.history
        rows.append({**row(f"until {budget}", fxprune.prune(pruned, x, "fold")), "steps": len(steps) - 1,
                     "history": steps})
    first = rows[0]
    record = {"settings": vars(args), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "seconds": round(time.time() - start), "train": n, "val": args.val, "test": sum(len(y) for _, y in test), "rows": rows}
    out = Path(args.out)
    atomic_write_text(out / "latency-mnist.json", json.dumps(record, indent=1) + "\n")
    table = "\n".join(
        f"| {r['model']} | {r.get('steps', '-')} | {r['latency_ms']:.2f} | {r['latency_ms'] / first['latency_ms']:.2f} | "
        f"{r['params']:,} | {r['params'] / first['params']:.3f} | {r['macs'] / first['macs']:.3f} | "
        f"{r['val_accuracy']:.3f} | {r['test_accuracy']:.3f} |" for r in rows)
    text = f"""# Pruning to a time budget vs a MACs budget (Lite0 -> MNIST digits)

Reproduce: `.venv/bin/python -m bench.transfer.latency` ({record['seconds']} s here, {record['threads']} threads,
torch {record['torch']}, nothing else running). ImageNet EfficientNet-Lite0, new head, {args.epochs} epochs of scales +
head on {n} digits at {args.size}x{args.size}; from that one transferred model, `prune_iteratively` on channels
(Taylor on 8 batches, step {args.step}, one epoch of scale retraining per step) until each budget, then fold.
Latency: the folded model on {args.batch} digits ({args.size}x{args.size}), median of 5 rounds of the median of 21 calls,
eager, inference mode. Val: {args.val} held-out training digits; test: {record['test']} digits that chose nothing.

| model | steps | latency ms | latency kept | params | params kept | MACs kept | val accuracy | test accuracy |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{table}
"""
    for r in rows[1:]:  # each step as prune_iteratively recorded it (latency measured once per step, in the loop)
        text += (f"\n{r['model']}, step by step:\n\n| step | params kept | MACs kept | latency kept (in the loop) | "
                 "val accuracy |\n| --- | --- | --- | --- | --- |\n" + "\n".join(
                     f"| {s['step']} | {s['params_kept']:.3f} | {s['macs_kept']:.3f} | "
                     f"{s['latency_kept']:.3f} | {s['val_accuracy']:.3f} |" if "latency_kept" in s else
                     f"| {s['step']} | {s['params_kept']:.3f} | {s['macs_kept']:.3f} | - | {s['val_accuracy']:.3f} |"
                     for s in r["history"]) + "\n")
    atomic_write_text(out / "latency-mnist.md", text)
    print(text)


if __name__ == "__main__":
    main()
