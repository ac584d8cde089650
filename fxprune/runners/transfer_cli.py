"""`fxprune transfer` (an image folder in, a small model out) and `fxprune demo` (the same on the
weights and digits that the bench extra ships)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tabulate import tabulate

from fxprune.runners.commands import load_model_args
from fxprune.training.data import load_image_folder, load_test_folder, normalization
from fxprune.core.errors import FxPruneError
from fxprune.runners.export import save_exported
from fxprune.core.io import atomic_write_text
from fxprune.training.recipe import TransferResult, resolution_note, retrain_lr_for, transfer, val_change
from fxprune.training.scales import evaluate
from fxprune.runners.transfer_report import head_text, margin_text, report_markdown, write_plot


def run_transfer(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".pt2":
        raise ValueError(f"--out {args.out}: write a .pt2 file (the model, torch.export); the report goes beside it")
    torch.manual_seed(0)
    model, notes = load_model_args(args)
    norm = normalization(model, args.image_size)
    data = load_image_folder(args.data, norm, batch_size=args.batch_size, val_split=args.val_split,
                             num_classes=args.num_classes)
    x = next(iter(data.val))[0][:1]
    with torch.no_grad():
        outputs = model(x).shape[-1]
    if outputs != len(data.classes):
        raise FxPruneError(f"{args.model} outputs {outputs} classes but --data {args.data} has {len(data.classes)} "
                           f"class folders: pass --num-classes {len(data.classes)} for a new head")
    print(f"{args.model}: {'; '.join(notes)}", flush=True)  # notes say "weights: ..."
    print(f"data: {args.data}: {len(data.classes)} classes, {len(data.train.labels)} train / {len(data.val.labels)} "
          f"val images at {norm.size}x{norm.size}; threads {torch.get_num_threads()}", flush=True)
    retrain_lr = retrain_lr_for(args.lr, args.retrain_lr)
    print(f"training the basis scales and the head: {args.epochs} epochs, lr {args.lr:g} ({args.schedule}); then "
          f"pruning {args.prune} ({args.criterion}, {args.step:g} of the params per step, an epoch at lr {retrain_lr:g}"
          f"{head_text(args.retrain_head_lr)} after each) until {args.until}{margin_text(args.margin, args.until)}", flush=True)
    result = transfer(model, x, train=data.train, val=data.val, epochs=args.epochs, lr=args.lr,
                      prune_what=args.prune, criterion=args.criterion, until=args.until, step=args.step,
                      max_steps=args.max_steps, importance_batches=args.importance_batches,
                      momentum=args.momentum, basis=args.basis, distill=args.distill, schedule=args.schedule,
                      retrain_lr=retrain_lr, retrain_head_lr=args.retrain_head_lr, margin=args.margin)
    if args.test:  # at the end only: transfer(test=) would also evaluate it after every kept step
        test = load_test_folder(args.test, data.classes, norm)
        result.test_accuracy = tuple(evaluate(m, test)["accuracy"] for m in (result.transferred, result.model))
        result.test_images = len(test.labels)
    save_exported(result.model, (x,), out)
    settings = {k: v for k, v in vars(args).items() if k not in ("command",)}
    settings.update(retrain_lr=retrain_lr, classes=data.classes, train_images=len(data.train.labels),
                    val_images=len(data.val.labels),
                    image_size=norm.size, mean=norm.mean, std=norm.std, threads=torch.get_num_threads(), weights_note="; ".join(notes))
    write_outputs(out, result, settings)
    print()
    print(tabulate(steps_table(result), headers="keys", tablefmt="simple"))
    p, a = result.params, result.accuracy
    if args.test:
        t = result.test_accuracy
        print(f"\ntest accuracy ({result.test_images} held-out images) {t[0]:.3f} -> {t[1]:.3f}", end="")
    print(f"\nval accuracy {a[0]:.3f} -> {a[1]:.3f} ({val_change(result)})")
    note = resolution_note(result)
    if note:
        print(f"note: {note}")
    print(f"params {p[0]:,} -> {p[1]:,} ({100 * (1 - p[1] / p[0]):.1f}% fewer); "
          f"MACs {result.macs[0]:,} -> {result.macs[1]:,} ({100 * (1 - result.macs[1] / result.macs[0]):.1f}% fewer)")
    print(f"wrote {out} (load: torch.export.load('{out}').module()), {out.with_suffix('.md')}, "
          f"{out.with_suffix('.json')}" + (", " + str(out.with_suffix(".png")) if out.with_suffix(".png").exists() else ""))
    return 0


def steps_table(result: TransferResult) -> list[dict]:
    first = result.steps[0]
    return [{"step": s["step"], "params": f"{s['params']:,}", "params kept": f"{s['params'] / first['params']:.3f}",
             "MACs": f"{s['macs']:,}", "MACs kept": f"{s['macs'] / first['macs']:.3f}",
             **({"latency ms": f"{s['latency_ms']:.2f}"} if "latency_ms" in s else {}),
             "val accuracy": f"{s['val_accuracy']:.3f}"} for s in result.steps]


def write_outputs(out: Path, result: TransferResult, settings: dict) -> None:
    record = {"settings": settings, "until": result.until, "accuracy": list(result.accuracy),
              "params": list(result.params), "macs": list(result.macs), "epochs": result.epochs,
              "steps": result.steps, "seconds": result.seconds}
    if result.test_accuracy is not None:
        record.update(test_accuracy=list(result.test_accuracy), test_images=result.test_images)
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    plotted = write_plot(out.with_suffix(".png"), result, settings)
    atomic_write_text(out.with_suffix(".md"), report_markdown(out, result, settings, steps_table(result), plotted))


def run_demo(args: argparse.Namespace) -> int:
    from fxprune.runners.cli import main
    from fxprune.runners.demo import prepare

    out = Path(args.out)
    weights, data, test = prepare(out)
    argv = ["transfer", "timm:efficientnet_lite0", "--weights", str(weights), "--num-classes", "10", "--data", str(data),
            "--test", str(test), "--image-size", "64", "--epochs", "10", "--step", "0.1", "--max-steps", "30",
            "--out", str(out / "small.pt2")]
    print("fxprune " + " ".join(argv), flush=True)
    return main(argv)
