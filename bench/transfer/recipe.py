"""The whole `fxprune.transfer` job on the benchmark's digits: train the scales and the head, prune
(channels, joint, bases or double) iteratively until val accuracy would fall more than 1 point (--drop; steps
backed off and grown back), fold; report held-out test accuracy.

    .venv/bin/python -m bench.transfer.recipe --prune joint                 # MNIST, about 15 minutes on 2 cores
    .venv/bin/python -m bench.transfer.recipe --dataset optdigits --prune joint

The floor is judged on a val split taken from the training digits (the last --val), never on the test
digits, which choose nothing. Writes recipe-DATASET-PRUNE[-tag].json and .md to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import fxprune
from fxprune.core.io import atomic_write_text
from fxprune.runners.transfer_report import head_text
from fxprune.training.options import RETRAIN_HEAD_LR, TransferOptions

from .digits import add_split_args, benchmark_split, digits, optdigits
from .lite0 import load_lite0

LR = 1e-2  # Adam's lr in the transfer; the retraining after each step runs at TransferOptions(lr=LR, retrain_lr=--retrain-lr)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_split_args(ap)
    ap.add_argument("--max-steps", type=int, default=30)
    ap.add_argument("--prune", default="channels", choices=["bases", "channels", "joint", "double"])
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "optdigits"])
    ap.add_argument("--momentum", type=float, help="average Taylor importance across steps with this momentum")
    ap.add_argument("--basis", default="svd", choices=["svd", "data"], help="decompose-conv's bases")
    ap.add_argument("--distill", type=float, default=0.0, help="weight of distillation from the transferred model")
    ap.add_argument("--schedule", default="cosine", choices=["cosine", "constant"], help="lr over each training run")
    ap.add_argument("--retrain-lr", type=float, help="lr of the retraining after each step (transfer's default)")
    ap.add_argument("--retrain-head-lr", type=float, default=RETRAIN_HEAD_LR,
                    help="lr of the head in that retraining (transfer's default: 0, the head kept)")
    ap.add_argument("--margin", type=float, default=0.0,
                    help="standard errors of a step's val change it must clear the floor by")
    ap.add_argument("--drop", type=float, default=0.01, help="the floor: this far below the transferred model's val accuracy")
    ap.add_argument("--seed", type=int, default=0, help="seed of the train/test split (which digits are val and test)")
    ap.add_argument("--tag", default="", help="appended to the output names")
    args = ap.parse_args(argv)
    start = time.time()
    torch.manual_seed(0)
    train, val, test, x_train, n = benchmark_split(digits if args.dataset == "mnist" else optdigits, args.size,
                                                   args.val, seed=args.seed)
    result = fxprune.transfer(load_lite0(num_classes=10), x_train[:1], train=train, val=val, epochs=args.epochs, lr=LR,
                              prune_what=args.prune, step=args.step, max_steps=args.max_steps,
                              momentum=args.momentum, basis=args.basis, distill=args.distill, schedule=args.schedule,
                              retrain_lr=args.retrain_lr, retrain_head_lr=args.retrain_head_lr, margin=args.margin, test=test,
                              until=f"accuracy-drop={args.drop:g}")
    test_accuracy = list(result.test_accuracy)
    p = result.params
    record = {"settings": vars(args), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "seconds": round(time.time() - start), "train": n, "val": args.val, "test": sum(len(y) for _, y in test),
              "params": list(p), "macs": list(result.macs), "val_accuracy": list(result.accuracy),
              "test_accuracy": test_accuracy, "until": result.until, "steps": result.steps}
    name = f"recipe-{args.dataset}-{args.prune}{'-' + args.tag if args.tag else ''}"
    out = Path(args.out)
    atomic_write_text(out / f"{name}.json", json.dumps(record, indent=1) + "\n")
    rows = "\n".join(f"| {s['step']} | {s['step_size']:.4g} | {s['params']:,} | {s['params_kept']:.3f} | "
                     f"{s['macs_kept']:.3f} | {s['val_accuracy']:.3f} | {s['val_se']:.3f} | {s['test_accuracy']:.3f} |"
                     for s in result.steps)
    command = " ".join(["--dataset", args.dataset, "--prune", args.prune, "--max-steps", str(args.max_steps)]
                       + (["--epochs", str(args.epochs)] if args.epochs != 6 else [])
                       + (["--val", str(args.val)] if args.val != 500 else [])
                       + (["--momentum", str(args.momentum)] if args.momentum is not None else [])
                       + (["--basis", args.basis] if args.basis != "svd" else [])
                       + (["--distill", str(args.distill)] if args.distill else [])
                       + (["--schedule", args.schedule] if args.schedule != "cosine" else [])
                       + (["--retrain-lr", str(args.retrain_lr)] if args.retrain_lr is not None else [])
                       + (["--retrain-head-lr", f"{args.retrain_head_lr:g}"] if args.retrain_head_lr != RETRAIN_HEAD_LR else [])
                       + (["--margin", str(args.margin)] if args.margin else [])
                       + (["--drop", f"{args.drop:g}"] if args.drop != 0.01 else [])
                       + (["--seed", str(args.seed)] if args.seed else [])
                       + (["--tag", args.tag] if args.tag else []))
    text = f"""# fxprune.transfer on {args.dataset} digits: prune {args.prune} until {100 * args.drop:g} point{'s' * (args.drop != 0.01)} of val accuracy

Reproduce: `.venv/bin/python -m bench.transfer.recipe {command}` ({record['seconds']} s here,
{record['threads']} threads, torch {record['torch']}). ImageNet EfficientNet-Lite0, new head, {args.epochs} epochs
(Adam, lr {LR:g}, {args.schedule} schedule in every training run) of scales + head on {n} digits at {args.size}x{args.size} (`decompose-conv{{basis={args.basis}}}`); then
`prune_iteratively` on {args.prune} (Taylor on 8 batches per step{'' if args.momentum is None else f', averaged across steps with momentum {args.momentum}'},
step {args.step} backed off by halves below the floor and grown back after, one epoch of retraining per step at lr {TransferOptions(lr=LR, retrain_lr=args.retrain_lr).retrain_lr_value:g}{head_text(args.retrain_head_lr)}{f' distilling from the transferred model (weight {args.distill})' if args.distill else ''}, at
most {args.max_steps} tries) until val accuracy ({args.val} held-out training digits) would fall below
{result.until.partition('=')[2]} by {args.margin:g} standard errors of its paired change (`val se`); fold.
The {record['test']} test digits chose nothing (evaluated at each kept step, for the record).

**Params {p[0]:,} -> {p[1]:,} ({100 * (1 - p[1] / p[0]):.1f}% fewer), MACs
{100 * (1 - result.macs[1] / result.macs[0]):.1f}% fewer; test accuracy {test_accuracy[0]:.3f} -> {test_accuracy[1]:.3f}
({100 * (test_accuracy[1] - test_accuracy[0]):+.1f} points); val {result.accuracy[0]:.3f} -> {result.accuracy[1]:.3f}.**

| step | step size | params | params kept | MACs kept | val accuracy | val se | test accuracy |
| --- | --- | --- | --- | --- | --- | --- | --- |
{rows}
"""
    atomic_write_text(out / f"{name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
