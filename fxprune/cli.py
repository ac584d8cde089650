"""The `fxprune` command: run a pipeline on a zoo model and print what it saved; list passes."""

from __future__ import annotations

import argparse
import sys

from tabulate import tabulate

from .api import DEFAULT_PIPELINE
from .errors import FxPruneError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fxprune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="prune one model and print the savings table")
    run.add_argument("model", help="tv:NAME (torchvision) or timm:NAME, e.g. tv:resnet18")
    run.add_argument("--pipeline", default=DEFAULT_PIPELINE, help=f"pass pipeline (default: {DEFAULT_PIPELINE})")
    run.add_argument("--input-size", default="3,224,224", help="C,H,W of the example input (default 3,224,224)")
    run.add_argument("--batch", type=int, default=1, help="batch size of the example input (default 1)")
    run.add_argument("--verify", action="store_true", help="check the graph after every pass")
    run.add_argument("--out", help="also write the savings table (.md, .csv, .json) or the model (.pt2)")
    zoo = sub.add_parser("zoo", help="run a pipeline over every model of a zoo config")
    zoo.add_argument("config", help="a zoo config, e.g. zoo_configs/smoke.toml")
    zoo.add_argument("--pipeline", default=DEFAULT_PIPELINE, help="pass pipeline (entries may override it)")
    zoo.add_argument("--out", required=True, help="folder for results.jsonl, summary.md and summary.csv")
    zoo.add_argument("--resume", action="store_true", help="skip the models already in OUT/results.jsonl")
    zoo.add_argument("--jobs", type=int, default=1, help="models run in parallel processes (1 thread each)")
    zoo.add_argument("--compile", action="store_true",
                     help="also compile each pruned model (inductor, fullgraph) and compare it with eager")
    groups = sub.add_parser("groups", help="print the channel groups prune-channels sees, and why any is kept")
    groups.add_argument("model", help="tv:NAME or timm:NAME")
    groups.add_argument("--input-size", default="3,224,224", help="C,H,W of the example input (default 3,224,224)")
    sub.add_parser("passes", help="list every registered pass with its options and defaults")
    args = parser.parse_args(argv)
    try:
        if args.command == "passes":
            from .pipeline import describe_passes

            print(tabulate(describe_passes(), headers="keys", tablefmt="simple"))
            return 0
        if args.command == "zoo":
            from .zoo_run import run_zoo, summary_table

            print(summary_table(run_zoo(args.config, args.pipeline, args.out, resume=args.resume,
                                        jobs=args.jobs, compile=args.compile), fmt="simple"))
            return 0
        from .commands import run_model, show_groups

        return show_groups(args) if args.command == "groups" else run_model(args)
    except (FxPruneError, ValueError) as e:
        print(f"fxprune: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
