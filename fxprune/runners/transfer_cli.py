"""`fxprune transfer` (an image folder in, a small model out) and `fxprune demo` (the same on the
weights and digits that the bench extra ships)."""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
from pathlib import Path

import torch
from tabulate import tabulate

from fxprune.core import distributed
from fxprune.core.errors import FxPruneError
from fxprune.core.io import atomic_write_text
from fxprune.runners.commands import load_model_args
from fxprune.runners.export import save_exported
from fxprune.runners.resume import Checkpoint
from fxprune.training.data import LoaderOptions, load_image_folder, load_test_folder, normalization
from fxprune.training.options import OptionError, TransferOptions
from fxprune.training.recipe import TransferResult, resolution_note, transfer, val_change
from fxprune.training.runtime import Runtime
from fxprune.training.scales import evaluate
from fxprune.runners.transfer_report import check_change, margin_text, report_markdown, search_text, write_plot


FLAGS = {"prune_what": "prune"}  # TransferOptions fields whose flag is not the field's name


def run_transfer(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".pt2":
        raise ValueError(f"--out {args.out}: write a .pt2 file (the model, torch.export); the report goes beside it")
    runtime = Runtime.resolve(_local(args.device), args.amp, args.channels_last, flags=True)
    if args.margin < 0:
        raise ValueError(f"--margin {args.margin:g}: give a number of standard errors >= 0")
    options = transfer_options(args)
    loading = LoaderOptions(batch_size=args.batch_size, seed=args.seed, workers=args.workers, augment=args.augment,
                            auto_augment=args.aa,
                            pin_memory=runtime.device.type == "cuda" if args.pin_mem is None else args.pin_mem)
    loading.check()
    settings = {k: v for k, v in vars(args).items() if k not in ("command", "resume")}
    checkpoint = Checkpoint(out.with_suffix(".ckpt"), settings)
    if args.resume and not checkpoint.exists():
        raise FxPruneError(f"--resume: no checkpoint {checkpoint.path} beside --out (a run writes one after every kept "
                           "step, and removes it when it finishes)")
    distributed.start(runtime.device)
    lead = distributed.rank() == 0
    say = print if lead else _silent
    if lead:
        check_writable(out)
    _seed(args.seed)
    model, notes = load_model_args(args)
    norm = normalization(model, args.image_size)
    data = load_image_folder(args.data, norm, loading, val_split=args.val_split, holdout=args.holdout,
                             num_classes=args.num_classes)
    test = load_test_folder(args.test, data.classes, norm, loading) if args.test else None
    x = next(iter(data.val))[0][:1]
    with torch.no_grad():
        outputs = model(x).shape[-1]
    if outputs != len(data.classes):
        raise FxPruneError(f"{args.model} outputs {outputs} classes but --data {args.data} has {len(data.classes)} "
                           f"class folders: pass --num-classes {len(data.classes)} for a new head")
    resume = checkpoint.read(runtime.device) if args.resume else None
    say(f"{args.model}: {'; '.join(notes)}", flush=True)  # notes say "weights: ..."
    ranks = f" x {distributed.world()} processes" if distributed.world() > 1 else ""
    held = f" + {data.check.images} held out" if data.check is not None else ""
    say(f"data: {args.data}: {len(data.classes)} classes, {data.train.images} train / {data.val.images}{held} "
        f"val images at {norm.size}x{norm.size}; augment {args.augment}; batch {args.batch_size}{ranks}; "
        f"{runtime.text()}; threads {torch.get_num_threads()}; workers {args.workers}", flush=True)
    say(f"training the basis scales and the head: {args.epochs} epochs, lr {args.lr:g} ({args.schedule}); then "
        f"pruning {args.prune} ({args.criterion}) until {args.until}{margin_text(args.margin, args.until)}: "
        f"{search_text(options)}", flush=True)
    if resume is not None:
        say(f"resuming from {checkpoint.path}: {len(resume['search']['history']) - 1} tries done", flush=True)

    def save_checkpoint(state: dict) -> None:
        if lead:
            checkpoint.write(state)

    result = transfer(model, x, options, train=data.train, val=data.val, check=data.check,
                      agreement_data=data.agreement, device=runtime,
                      checkpoint=save_checkpoint, resume=resume, progress=lead)
    if not lead:
        return 0
    if test is not None:  # at the end only (checked before training): transfer(test=) scores it at every try
        result.test_accuracy = tuple(evaluate(runtime.model(copy.deepcopy(m)), test, device=runtime)["accuracy"]
                                     for m in (result.transferred, result.model))
        result.test_images = test.images
    save_exported(result.model, (x,), out)
    settings.update(retrain_lr=options.retrain_lr_value, retrain_head_lr=options.retrain_head_lr_value,
                    classes=data.classes, train_images=data.train.images, val_images=data.val.images,
                    image_size=norm.size, mean=norm.mean, std=norm.std,
                    threads=torch.get_num_threads(), device=str(runtime.device), amp=runtime.amp,
                    channels_last=runtime.channels_last, processes=distributed.world(),
                    weights_note="; ".join(notes))
    write_outputs(out, result, settings, options)
    checkpoint.remove()  # the run is whole: nothing is left to resume
    print()
    print(tabulate(steps_table(result), headers="keys", tablefmt="simple"))
    p, a = result.params, result.accuracy
    print(f"\nsearch: {result.search}")
    if result.test_accuracy is not None:
        t = result.test_accuracy
        print(f"test accuracy ({result.test_images} held-out images) {t[0]:.3f} -> {t[1]:.3f}")
    if result.check_accuracy is not None:
        print(f"check accuracy ({result.check_images} val images no decision saw) {check_change(result)}")
    print(f"val accuracy {a[0]:.3f} -> {a[1]:.3f} ({val_change(result)}; it took the decisions)")
    note = resolution_note(result)
    if note:
        print(f"note: {note}")
    print(f"params {p[0]:,} -> {p[1]:,} ({100 * (1 - p[1] / p[0]):.1f}% fewer); "
          f"MACs {result.macs[0]:,} -> {result.macs[1]:,} ({100 * (1 - result.macs[1] / result.macs[0]):.1f}% fewer)")
    print(f"wrote {out} (load: torch.export.load('{out}').module()), {out.with_suffix('.md')}, "
          f"{out.with_suffix('.json')}" + (", " + str(out.with_suffix(".png")) if out.with_suffix(".png").exists() else ""))
    return 0


def transfer_options(args: argparse.Namespace) -> TransferOptions:
    """The TransferOptions the command line gives, checked."""
    options = TransferOptions(epochs=args.epochs, lr=args.lr, schedule=args.schedule, prune_what=args.prune,
                              criterion=args.criterion, until=args.until, step=args.step, max_steps=args.max_steps,
                              patience=args.patience, probes=args.probes, retrain_epochs=args.retrain_epochs,
                              settle_epochs=args.settle_epochs, retrain_schedule=args.retrain_schedule,
                              importance_batches=args.importance_batches, momentum=args.momentum, basis=args.basis,
                              distill=args.distill, retrain_lr=args.retrain_lr, retrain_head_lr=args.retrain_head_lr,
                              margin=args.margin, agreement=args.agreement)
    try:
        options.check("fxprune transfer")
    except OptionError as e:  # named as the flag that set it
        raise e.named(f"--{FLAGS.get(e.field, e.field.replace('_', '-'))} {e.value}") from None
    return options


def check_writable(out: Path) -> None:
    """--out can be written: not a folder, and the nearest folder that exists on its path writable (checked
    before any work, creating nothing: the files' own writes make the folders)."""
    if out.is_dir():
        raise FxPruneError(f"--out {out}: is a folder; name the .pt2 file to write, e.g. {out / 'small.pt2'}")
    existing = next(p for p in (out.parent.absolute(), *out.parent.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise FxPruneError(f"--out {out}: {existing} is a file, so no folder can be made there; name a writable "
                           "place")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FxPruneError(f"--out {out}: cannot write in {existing} (permission denied or a read-only file "
                           "system); name a writable place")


def _local(device: str) -> str:
    """Under torchrun, 'cuda' (and 'auto' where there is CUDA) as this rank's GPU, cuda:LOCAL_RANK."""
    cuda = device == "cuda" or device == "auto" and torch.cuda.is_available()
    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if cuda and distributed.launched() else device


def _seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _silent(*args, **kwargs) -> None:
    return None


def steps_table(result: TransferResult) -> list[dict]:
    """One row per try: the start, the descent steps, the settling tries; "kept" marks the path to the model
    returned ("chosen" its own row), "holds" whether the try met the stop rule."""
    first, chosen = result.steps[0], result.chosen
    return [{"try": s["try"], "phase": s["phase"], "step": s["step"], "params": f"{s['params']:,}",
             "params kept": f"{s['params'] / first['params']:.3f}", "MACs kept": f"{s['macs'] / first['macs']:.3f}",
             **({"latency ms": f"{s['latency_ms']:.2f}"} if "latency_ms" in s else {}),
             "val accuracy": f"{s['val_accuracy']:.3f}",
             **({"agreement": f"{s['agreement']:.3f}" if "agreement" in s else ""}
                if any("agreement" in r for r in result.steps) else {}),
             "holds": "yes" if s["holds"] else "no",
             "kept": "chosen" if s is chosen else "yes" if s["kept"] else ""} for s in result.steps]



def write_outputs(out: Path, result: TransferResult, settings: dict, options: TransferOptions) -> None:
    record = {"settings": settings, "until": result.until, "accuracy": list(result.accuracy),
              "params": list(result.params), "macs": list(result.macs), "epochs": result.epochs,
              "steps": result.steps, "search": result.search, "seconds": result.seconds}
    if result.test_accuracy is not None:
        record.update(test_accuracy=list(result.test_accuracy), test_images=result.test_images)
    if result.check_accuracy is not None:
        record.update(check_accuracy=list(result.check_accuracy), check_se=result.check_se,
                      check_images=result.check_images)
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    plotted = write_plot(out.with_suffix(".png"), result, settings)
    atomic_write_text(out.with_suffix(".md"), report_markdown(out, result, settings, steps_table(result), plotted,
                                                                      options))


def run_demo(args: argparse.Namespace) -> int:
    from fxprune.runners.arguments import build_parser
    from fxprune.runners.demo import prepare

    out = Path(args.out)
    weights, data, test = prepare(out)
    argv = ["transfer", "timm:efficientnet_lite0", "--weights", str(weights), "--num-classes", "10", "--data", str(data),
            "--test", str(test), "--image-size", "64", "--epochs", "10", "--augment", "none", "--device", "cpu",
            "--out", str(out / "small.pt2")]
    print("fxprune " + " ".join(argv), flush=True)
    return run_transfer(build_parser().parse_args(argv))
