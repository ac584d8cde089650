"""How far rounding and data order move the transferred model, per learning-rate schedule.

The demo's transfer stage (ImageNet Lite0, a zero head, its basis scales and head trained 10 epochs by
Adam at lr 1e-2 on the demo's 1,000 digits, batch 32) run with the SVD of decompose-conv on 1 and on 2
threads (factors that differ in their last bits) and with three seeds of the order of the train
batches; each schedule (constant lr, or cosine decay to 0 over the run) on every combination. Val: the
demo's 500 val digits; test: the demo's 3,500 held-out digits, which choose nothing.

    .venv/bin/python -m bench.transfer.stability            # about 10 minutes on 2 cores

Writes bench/transfer/results/stability.jsonl (resumable: rows already there are skipped), .md and .png.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

import fxprune
from fxprune.core.io import atomic_write_text
from fxprune.runners.demo import prepare
from fxprune.training.data import LoaderOptions, load_image_folder, load_test_folder, normalization
from fxprune.training.scales import evaluate, train_scaling

from .lite0 import load_lite0

OUT = Path(__file__).resolve().parent / "results" / "stability"
CACHE = Path("/tmp/fxprune-stability")  # the demo's weights and digit folders, written once
SCHEDULES, SVD_THREADS, SEEDS, EPOCHS, LR = ("constant", "cosine"), (1, 2), (0, 1, 2), 10, 1e-2


def run(schedule: str, svd_threads: int, seed: int) -> dict:
    _, folder, test_folder = prepare(CACHE)
    torch.manual_seed(0)
    model = load_lite0(10)
    fxprune.zero_head(model)
    norm = normalization(model, 64)
    data = load_image_folder(folder, norm, LoaderOptions(seed=seed, augment="none"), num_classes=10)
    test = load_test_folder(test_folder, data.classes, norm)
    x = next(iter(data.val))[0][:1]
    threads = torch.get_num_threads()
    torch.set_num_threads(svd_threads)
    gm = fxprune.prune(model, x, "decompose-conv,insert-scaling")
    torch.set_num_threads(threads)
    start = time.perf_counter()
    history = train_scaling(gm, data.train, epochs=EPOCHS, lr=LR, val_data=data.val, schedule=schedule,
                            progress=False)
    return {"schedule": schedule, "svd_threads": svd_threads, "seed": seed, "train_threads": threads,
            "val": [h["val_accuracy"] for h in history], "test": evaluate(gm, test)["accuracy"],
            "seconds": round(time.perf_counter() - start, 1)}


def summary(rows: list[dict]) -> str:
    lines = ["# Transfer stage under rounding and data order, per lr schedule", "",
             "Reproduce: `.venv/bin/python -m bench.transfer.stability` (2 torch threads for training; the SVD on "
             "the thread count given). Lite0 -> the demo's digits, 10 epochs, Adam lr 1e-2, batch 32; seed: the "
             "order of the train batches. Run on a quiet machine: decompose-conv takes only the cores that are "
             "idle, so on a busy one 2 SVD threads may become 1.", "",
             "| schedule | SVD threads | seed | val after each epoch | test (3,500 digits) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['schedule']} | {r['svd_threads']} | {r['seed']} | "
                     f"{' '.join(f'{v:.3f}' for v in r['val'])} | {r['test']:.3f} |")
    lines += ["", "| schedule | runs | test min | test max | test mean | last-epoch val swing (mean abs change) |",
              "|---|---|---|---|---|---|"]
    for s in SCHEDULES:
        mine = [r for r in rows if r["schedule"] == s]
        if mine:
            tests = [r["test"] for r in mine]
            swing = statistics.mean(abs(r["val"][-1] - r["val"][-2]) for r in mine)
            lines.append(f"| {s} | {len(mine)} | {min(tests):.3f} | {max(tests):.3f} | {statistics.mean(tests):.3f} "
                         f"| {swing:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, s in zip(axes, SCHEDULES):
        for r in (r for r in rows if r["schedule"] == s):
            ax.plot(range(1, len(r["val"]) + 1), r["val"], marker=".",
                    label=f"SVD {r['svd_threads']} thr, seed {r['seed']}: test {r['test']:.3f}")
        ax.set_title(f"{s} lr")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("val accuracy")
    fig.suptitle("Lite0 -> digits: the transfer stage under rounding (SVD threads) and data order (seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    jsonl = OUT.with_suffix(".jsonl")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    done = {(r["schedule"], r["svd_threads"], r["seed"]) for r in rows}
    for key in ((s, t, seed) for s in SCHEDULES for t in SVD_THREADS for seed in SEEDS):
        if key not in done:
            rows.append(run(*key))
            print(json.dumps(rows[-1]), flush=True)
            atomic_write_text(jsonl, "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(OUT.with_suffix(".md"), summary(rows))
    plot(rows, OUT.with_suffix(".png"))
    print(summary(rows), file=sys.stdout)


if __name__ == "__main__":
    main()
