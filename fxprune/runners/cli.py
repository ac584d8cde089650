"""The `fxprune` command: run a pipeline on a zoo model and print what it saved; list passes."""

from __future__ import annotations

import sys

from tabulate import tabulate

from fxprune.core.errors import FxPruneError
from fxprune.runners.arguments import build_parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(__doc__).parse_args(argv)
    try:
        if args.command == "passes":
            from fxprune.core.pipeline import describe_passes

            print(tabulate(describe_passes(), headers="keys", tablefmt="simple"))
            return 0
        if args.command == "zoo":
            from fxprune.runners.zoo_run import run_zoo, summary_table

            from fxprune.runners.zoo import load, select

            configs = [c for c in args.config if c.endswith(".toml")]
            if configs and (len(args.config) > 1 or args.exclude):
                raise ValueError("name one zoo config, or model patterns (with --exclude), not both")
            entries = load(configs[0]) if configs else select(args.config, args.exclude)
            label = configs[0] if configs else " ".join(args.config + [f"--exclude {x}" for x in args.exclude])
            print(summary_table(run_zoo(entries, label, args.pipeline, args.out, resume=args.resume,
                                        jobs=args.jobs, compile=args.compile, executor=args.executor,
                                        address=args.address, task_memory_gb=args.task_memory,
                                        time_limit=args.time_limit), fmt="simple"))
            return 0
        if args.command in ("transfer", "demo"):
            from fxprune.runners.transfer_cli import run_demo, run_transfer

            return run_transfer(args) if args.command == "transfer" else run_demo(args)
        from fxprune.runners.commands import run_model, show_groups

        return show_groups(args) if args.command == "groups" else run_model(args)
    except (FxPruneError, ValueError) as e:
        print(f"fxprune: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
