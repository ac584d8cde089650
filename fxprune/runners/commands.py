"""What `fxprune run` does, separated from argument parsing."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tabulate import tabulate

from fxprune.core.api import prune
from fxprune.runners.export import save_exported
from fxprune.core.io import atomic_write_text
from fxprune.core.manager import history
from fxprune.runners.models import load_model
from fxprune.analysis.report import savings


def example_input(model: torch.nn.Module, model_id: str, text: str | None, batch: int = 1) -> torch.Tensor:
    """The example input: --input-size, or one the model's first conv implies (C,224,224 for images,
    C,16,112,112 for video); checked by running the model once, so a wrong rank is one clear line."""
    if text is not None:
        size = parse_size(text)
    else:
        first = next((m for m in model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))),
                     None)
        channels = first.in_channels if first is not None else 3
        if isinstance(first, torch.nn.Conv1d):
            raise ValueError(f"{model_id} starts with a 1-D conv: give --input-size C,L (e.g. {channels},1000)")
        size = (channels, 16, 112, 112) if isinstance(first, torch.nn.Conv3d) else (channels, 224, 224)
    x = torch.randn(batch, *size)
    try:
        with torch.no_grad():
            model(x)
    except Exception as e:  # noqa: BLE001 - named in one line
        from fxprune.core.errors import first_line

        raise ValueError(f"{model_id} does not run on an input of shape {tuple(x.shape)} ({type(e).__name__}: "
                         f"{first_line(e)[:200]}): give --input-size, e.g. 3,224,224 for images or 3,16,112,112 "
                         "for video (C,T,H,W)") from None
    return x


def parse_size(text: str) -> tuple[int, ...]:
    try:
        size = tuple(int(v) for v in text.split(","))
    except ValueError:
        size = ()
    if not size or min(size) < 1:
        raise ValueError(f"--input-size {text!r}: write positive integers separated by commas, e.g. 3,224,224")
    return size


def load_model_args(args: argparse.Namespace):
    """The model named on the command line, with --weights/--num-classes/--pretrained/--trust-pickle."""
    return load_model(args.model, weights=args.weights, num_classes=args.num_classes, pretrained=args.pretrained,
                      trust_pickle=args.trust_pickle)


def run_model(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix not in (".md", ".csv", ".json", ".pt2"):
        raise ValueError(f"--out {args.out}: write a .md, .csv or .json file (the table) or .pt2 (the model)")
    torch.manual_seed(0)
    model, notes = load_model_args(args)
    x = example_input(model, args.model, args.input_size, args.batch)
    small = prune(model, x, args.pipeline, verify=args.verify)
    report = savings(model, small, x)
    passes = [[r.text, f"{r.seconds:.2f}", ", ".join(f"{k}={v}" for k, v in r.stats.items())] for r in history(small)]
    print(f"{args.model}: pipeline {args.pipeline}, input {tuple(x.shape)}, threads {torch.get_num_threads()}")
    print(*notes, sep="\n")
    print(tabulate(passes, headers=["pass", "seconds", "statistics"]))
    print()
    print(report)
    t = report.totals
    print(f"\nparams {t['params_before']:,} -> {t['params_after']:,} "
          f"({100 * (1 - t['params_after'] / t['params_before']):.1f}% fewer); MACs {t['macs_before']:,} -> "
          f"{t['macs_after']:,} ({100 * (1 - t['macs_after'] / max(t['macs_before'], 1)):.1f}% fewer)")
    if any(r.stats.get("bn-folded") for r in history(small)):
        print("Folding BatchNorm adds a bias to the layer before it (its row grows a little); the BatchNorm "
              "parameters leave the (other) row.")
    if "prune-basis" in args.pipeline and "target-" not in args.pipeline and not (args.weights or args.pretrained):
        print(f"Note: {args.model} has random weights (nothing is downloaded). Their singular values are flat, "
              "so an energy threshold removes little; pretrained weights concentrate the energy. To see a budget "
              "at work: --pipeline 'decompose-conv,prune-basis{target-params=0.5},fold'.")
    if out is not None:
        if out.suffix == ".pt2":
            save_exported(small, (x,), out)
        elif out.suffix == ".csv":
            report.to_csv(out)
        else:
            atomic_write_text(out, (report.to_markdown() if out.suffix == ".md" else report.to_json()) + "\n")
        print(f"wrote {out}")
    return 0


def show_groups(args: argparse.Namespace) -> int:
    """`fxprune groups MODEL`: the channel groups prune-channels sees, and why some are kept whole."""
    from fxprune.analysis.channels import analyse
    from fxprune.core.api import traced_for_passes

    torch.manual_seed(0)
    model, _ = load_model_args(args)
    x = example_input(model, args.model, args.input_size)
    graph = analyse(traced_for_passes(model), (x,), args.heads)
    rows = []
    for i, g in enumerate(graph.groups):
        members = ", ".join(f"{path}:{role}" for path, role in g.members)
        rows.append([i, g.kind, g.size, members, "prunable" if g.blocked is None else f"kept: {g.blocked}"])
    print(tabulate(rows, headers=["group", "kind", "channels", "members (module:role)", "status"],
                   maxcolwidths=[None, None, None, 70, 40]))
    prunable = graph.prunable
    print(f"\n{args.model}: {len(graph.groups)} groups, {len(prunable)} prunable, holding "
          f"{sum(g.size for g in prunable):,} of {sum(g.size for g in graph.groups):,} channels. Roles: out = output "
          "channels, in = input channels, dw = depthwise conv, bn = BatchNorm, norm = LayerNorm/RMSNorm/GroupNorm, "
          "param = a tensor read directly (position embedding, class token, layer scale), sliced with them.")
    return 0
