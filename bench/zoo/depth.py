"""How deep channel pruning goes across the timm registry: params kept at `prune-channels{ratio=0.3},fold`
for every model of the registry's channels run, and, for each model still keeping more than 0.65, the op
that blocks its largest kept group (the analysis's own barrier name), rerun with today's code.

    .venv/bin/python -m bench.zoo.depth [--jobs 2] # reruns the models above 0.65 (resumable), then the page
    .venv/bin/python -m bench.zoo.depth --report   # the page from what is there
    .venv/bin/python -m bench.zoo.depth --again timm:ecaresnet26t ...   # those models measured again, then the page

Each rerun is a fresh process (1 thread, at most 600 s) appending to results/registry-depth.jsonl; the page
is results/registry-depth.md with a histogram, registry-depth.png. "before": the registry run's own rows
(results/channels-timm-all).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUN = HERE / "results" / "channels-timm-all" / "results.jsonl"
OUT = HERE / "results" / "registry-depth.jsonl"
LIMIT = 0.65  # issue 35: at most 3% of the models may keep more than this share of their params


def before() -> dict[str, float]:
    """Params kept per model in the registry's channels run (models it pruned or found nothing in)."""
    rows = [json.loads(line) for line in RUN.read_text().splitlines()]
    return {r["model"]: r["params_after"] / r["params_before"] for r in rows
            if r["status"] in ("ok", "no-gain") and r.get("params_before")}


def one(model_id: str) -> dict:
    """Prune one model now; the blocking op of its largest kept group (channels that do not reach the output)."""
    import torch

    import fxprune
    from fxprune.analysis.channels import analyse
    from fxprune.analysis.counting import total_params
    from fxprune.analysis.flow_types import tensor_args
    from fxprune.core.api import traced_for_passes
    from fxprune.runners import zoo
    from fxprune.runners.models import create

    torch.set_num_threads(1)
    entry = next(e for e in zoo.load(HERE.parent.parent / "zoo_configs" / "timm_all.toml") if e.id == model_id)
    model = zoo.wake(create(model_id).eval())
    headless = getattr(model, "num_classes", None) == 0 and hasattr(model, "reset_classifier")
    if headless:  # its embedding is its output and would stay whole: measured as a classifier is
        model.reset_classifier(1000)
    model, inputs = zoo.example(entry, model.eval())
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    small = fxprune.prune(model, inputs, "prune-channels{ratio=0.3},fold")
    graph = analyse(traced_for_passes(model), inputs)
    output = next(n for n in graph.gm.graph.nodes if n.op == "output")  # its channels stay whatever else holds them
    ends = [a if a in graph.flow.value else b for a in tensor_args(output)  # (or those of the op that made it)
            for b in ([a] if a in graph.flow.value else tensor_args(a))]
    outputs = {graph.flow.find(e) for a in ends if a in graph.flow.value for e in graph.flow.value[a][1].tolist()}
    kept = sorted((g for g in graph.groups if g.blocked and not outputs & set(g.classes)), key=lambda g: -g.size)
    reason = kept[0].blocked if kept else None
    return {"model": model_id, "kept": total_params(small) / total_params(model), "reason": reason,
            "blocked_by": None if reason is None else op_of(reason),
            "blocked_channels": sum(g.size for g in kept), "channels": sum(g.size for g in graph.groups),
            "head_added": headless}


def op_of(reason: str) -> str:
    """The op a barrier names: "module stages.0 (TinyVitBlock)" -> "module TinyVitBlock", "stack (s_3)" -> "stack"."""
    head, _, rest = reason.partition(" (")
    return f"module {rest.split(')')[0]}" if head.startswith("module ") and rest else head


def rerun(ids: list[str], jobs: int = 1, again: set[str] = frozenset()) -> None:
    """Measure each model not yet in OUT (or in `again`) in its own process, `jobs` at a time; each row names
    the commit."""
    from concurrent.futures import ThreadPoolExecutor

    done = {json.loads(line)["model"] for line in OUT.read_text().splitlines()} if OUT.exists() else set()
    todo = [m for m in ids if m not in done or m in again]
    lock = threading.Lock()

    def commit() -> str:  # the code a row was measured with (+ where fxprune's own files differ from it)
        head, changed = (subprocess.run(["git", *a], capture_output=True, text=True, cwd=HERE).stdout.strip()
                         for a in (["rev-parse", "--short", "HEAD"], ["status", "--porcelain", "--", "../../fxprune",
                                                                        "../../passes"]))
        return head + ("+" if changed else "")

    def measure(i_model: tuple[int, str]) -> None:
        i, model_id = i_model
        print(f"[{len(done) + i + 1}/{len(ids)}] {model_id}", flush=True)
        code = commit()
        try:
            run = subprocess.run([sys.executable, "-m", "bench.zoo.depth", "--one", model_id], capture_output=True,
                                 text=True, timeout=600, cwd=HERE.parent.parent)
            row = (json.loads(run.stdout.splitlines()[-1]) if run.returncode == 0 else
                   {"model": model_id, "error": (run.stderr.strip().splitlines() or ["?"])[-1][:200]})
        except subprocess.TimeoutExpired:
            row = {"model": model_id, "error": "over 600 s"}
        with lock, open(OUT, "a") as f:
            f.write(json.dumps({**row, "commit": code}) + "\n")

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(measure, enumerate(todo)))


def report(old: dict[str, float]) -> str:
    new = {r["model"]: r for r in map(json.loads, OUT.read_text().splitlines())} if OUT.exists() else {}
    now = {m: new[m]["kept"] if "kept" in new.get(m, {}) else k for m, k in old.items()}
    above = sorted(((k, m) for m, k in now.items() if k > LIMIT), reverse=True)
    ops = Counter(_blocker(new[m]) for _, m in above if m in new)
    lines = [
        "# Channel pruning depth across the timm registry", "",
        f"Params kept at `prune-channels{{ratio=0.3}},fold` for the {len(old)} models of the registry's channels run",
        "(random weights, each at its own input size). Reproduce: `.venv/bin/python -m bench.zoo.depth` (reruns the",
        f"models that kept more than {LIMIT} with today's code, 1 thread each, then writes this page). A model",
        "registered without a classifier (its embedding is its output, which stays whole) is rerun with a 1000-class",
        "head, as a transfer would give it. \"nothing blocked\": every group is pruned by 0.3, and what is left is",
        "the classifier's outputs and layers whose params shrink linearly with their channels (depthwise).",
        f"Rows were measured at commits {', '.join(sorted(Counter(r.get('commit', '?') for r in new.values())))}",
        "(each row's commit is in registry-depth.jsonl).", "",
        "| | models | median kept | above 0.65 | share above 0.65 |", "| --- | --- | --- | --- | --- |",
        f"| before (the registry run) | {len(old)} | {statistics.median(old.values()):.3f} | "
        f"{sum(k > LIMIT for k in old.values())} | {sum(k > LIMIT for k in old.values()) / len(old):.1%} |",
        f"| now ({len(new)} rerun) | {len(now)} | {statistics.median(now.values()):.3f} | {len(above)} | "
        f"{len(above) / len(now):.1%} |", "",
        "![params kept at ratio 0.3, before and now](registry-depth.png)", "",
        "## What blocks the models still above 0.65, by count", "",
        "| op blocking the largest kept group | models |", "| --- | --- |",
        *[f"| {op} | {n} |" for op, n in ops.most_common()], "",
        "## Every model above 0.65, deepest last", "",
        "| model | kept before | kept now | blocked by |", "| --- | --- | --- | --- |",
        *[f"| {m.removeprefix('timm:')} | {old[m]:.3f} | {k:.3f} | "
          f"{_blocker(new[m]) if m in new else 'not rerun'} |" for k, m in above],
    ]
    plot(old, now)
    return "\n".join(lines) + "\n"


def _blocker(row: dict) -> str:
    return row.get("error") or row.get("blocked_by") or "nothing blocked"


def plot(old: dict[str, float], now: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fxprune.core.io import atomic_write

    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = [i / 40 for i in range(41)]
    ax.hist(list(old.values()), bins, alpha=0.5, label="before")
    ax.hist(list(now.values()), bins, alpha=0.5, label="now")
    ax.axvline(LIMIT, color="k", lw=0.8, ls=":")
    ax.set(xlabel="share of params kept at ratio 0.3", ylabel="models", yscale="log",
           title="timm registry: channel pruning depth")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(HERE / "results" / "registry-depth.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--one", help="measure one model in this process and print its row")
    ap.add_argument("--report", action="store_true", help="only write the page")
    ap.add_argument("--jobs", type=int, default=1, help="models measured at a time, each in its own process (1)")
    ap.add_argument("--again", nargs="+", default=[], metavar="MODEL",
                    help="measure these models again (the page reads each model's last row)")
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one)))
        return
    old = before()
    above = sorted((m for m, k in old.items() if k > LIMIT), key=lambda m: -old[m])
    unknown = [m for m in args.again if m not in above]
    if unknown:
        ap.error(f"--again {unknown[0]}: not one of the {len(above)} models the registry run left above {LIMIT} "
                 f"(the models this bench reruns; {RUN.relative_to(HERE)})")
    if not args.report:
        rerun(above, args.jobs, set(args.again))
    from fxprune.core.io import atomic_write_text

    atomic_write_text(HERE / "results" / "registry-depth.md", report(old))


if __name__ == "__main__":
    main()
