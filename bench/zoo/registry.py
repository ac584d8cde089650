"""The whole timm registry by family: traced, lossless, prunable, errors with their reasons.

Runs (2 workers, 1 thread each; resumable with --resume, so the run can be spread over sessions):
    fxprune zoo zoo_configs/timm_all.toml --pipeline decompose-conv,fold --out bench/zoo/results/lossless-timm-all --jobs 2 --resume
    fxprune zoo zoo_configs/timm_all.toml --pipeline "prune-channels{ratio=0.3},fold" \\
        --out bench/zoo/results/channels-timm-all --jobs 2 --resume
Then: .venv/bin/python -m bench.zoo.registry   (writes bench/zoo/results/registry.md and registry.png)

A model is *traced* when its row is not a TraceError; *lossless* when decompose-conv,fold kept its
outputs within 1e-5 (relative L2); *prunable* when prune-channels{ratio=0.3},fold kept every output
shape and removed params.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import timm

from fxprune.runners import zoo

from .summarize import mismatch_text

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent.parent / "zoo_configs" / "timm_all.toml"
LOSSLESS, CHANNELS = "lossless-timm-all", "channels-timm-all"
# Published coverage of the peers, for the README line beside ours (their own counts, not rerun here).
PEERS = [("Torch-Pruning: pruned (timm 0.9.2, published)", 119, 294), ("torch-dag: pruned (published)", 585, 945)]
COLUMNS = ["family", "models", "skipped", "not run yet", "run", "traced", "lossless", "mismatch", "errors", "channels run",
           "prunable", "no-gain", "channel errors", "params kept (median)"]


def read(folder: str) -> dict[str, dict]:
    path = HERE / "results" / folder / "results.jsonl"
    return {r["model"]: r for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}


def families() -> dict[str, str]:
    return {f"timm:{name}": family for family in timm.list_modules() for name in timm.list_models(module=family)}


def counts(ids: list[str], skipped: set[str], lossless: dict, channels: dict) -> dict:
    run = [lossless[i] for i in ids if i in lossless and i not in skipped]
    ran = [channels[i] for i in ids if i in channels and i not in skipped]
    kept = [r["params_after"] / r["params_before"] for r in ran if r["status"] == "ok"]
    return {"models": len(ids), "skipped": sum(i in skipped for i in ids),
            "not run yet": sum(i not in lossless and i not in skipped for i in ids),
            "run": len(run), "traced": sum(not r.get("reason", "").startswith("TraceError") for r in run),
            "lossless": sum(r["status"] == "ok" for r in run), "mismatch": sum(r["status"] == "mismatch" for r in run),
            "errors": sum(r["status"] == "error" for r in run), "channels run": len(ran),
            "prunable": sum(r["status"] == "ok" for r in ran), "no-gain": sum(r["status"] == "no-gain" for r in ran),
            "channel errors": sum(r["status"] not in ("ok", "no-gain") for r in ran),
            "params kept (median)": f"{statistics.median(kept):.2f}" if kept else "-"}


def reasons(rows: dict, what: str) -> list[str]:
    """Failures grouped by reason (its first 140 characters), most frequent first."""
    by_reason = defaultdict(list)
    for r in rows.values():
        if r["status"] not in ("ok", "skipped"):
            text = r.get("reason") or (mismatch_text(r) if r["status"] == "mismatch" else r["status"])
            by_reason[f"{r['status']}: {text[:140]}"].append(r["model"].removeprefix("timm:"))
    lines = [f"### {what}: {sum(map(len, by_reason.values()))} models", ""]
    for text, models in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"- {len(models)} x {text} ({', '.join(sorted(models)[:12])}{', ...' if len(models) > 12 else ''})")
    return lines + [""]


def plot(total: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [("fxprune traced", total["traced"], total["run"]), ("fxprune lossless", total["lossless"], total["run"]),
            ("fxprune prunable (channels)", total["prunable"], total["channels run"]),
            *[(name, n, of) for name, n, of in PEERS]]
    bars = [(name, n, of) for name, n, of in bars if of]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(bars) + 1.2))
    ax.barh([b[0] for b in bars][::-1], [b[1] / b[2] for b in bars][::-1], color="tab:blue")
    for y, (name, n, of) in enumerate(bars[::-1]):
        ax.text(min(n / of, 0.98), y, f" {n}/{of}", va="center", ha="right" if n / of > 0.8 else "left", color="k")
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the models run")
    ax.set_title(f"timm registry coverage (fxprune: timm {timm.__version__}, models under the limit)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    entries = zoo.load(CONFIG)
    ids, skipped = [e.id for e in entries], {e.id for e in entries if e.skip}
    lossless, channels = read(LOSSLESS), read(CHANNELS)
    fam = families()
    by_family = defaultdict(list)
    for i in ids:
        by_family[fam.get(i, "?")].append(i)
    total = counts(ids, skipped, lossless, channels)
    seconds = [sum(r.get("seconds", 0) for r in rows.values()) for rows in (lossless, channels)]
    lines = ["# The whole timm registry", "",
             f"Every model of timm {timm.__version__}'s registry ({len(ids)}; zoo_configs/timm_all.toml, smallest first,",
             "each at its own input size), random weights (`fxprune.runners.zoo.wake`), batch 1, float32, CPU, 2 workers",
             "of 1 thread. Reproduce: see bench/zoo/registry.py. Models above 300M params are skipped (the rule and",
             "its reason: zoo_configs/make_timm.py).", "",
             f"- lossless (`decompose-conv,fold`): {total['run']} of {total['models'] - total['skipped']} run"
             f"{'' if total['run'] == total['models'] - total['skipped'] else ' so far'}, "
             f"{total['traced']} traced, {total['lossless']} lossless (rel. L2 < 1e-5), {total['mismatch']} mismatch, "
             f"{total['errors']} errors; {seconds[0] / 3600:.1f} CPU-hours. A rewrite is lossless when its outputs are within",
             "  1e-5 of the original's float32 outputs or, where it misses that, of its float64 outputs ("
             + ", ".join(sorted(i.removeprefix("timm:") for i, r in lossless.items()
                                if "float64_rel_l2_error" in r and r["status"] == "ok")) + ").",
             f"- channels (`prune-channels{{ratio=0.3}},fold`): {total['channels run']} run, {total['prunable']} prunable, "
             f"{total['no-gain']} no-gain, {total['channel errors']} errors; {seconds[1] / 3600:.1f} CPU-hours.",
             "- peers' published coverage: " + "; ".join(f"{name}: {n}/{of}" for name, n, of in PEERS) + ".",
             "", "![coverage](registry.png)", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for family in sorted(by_family):
        row = counts(by_family[family], skipped, lossless, channels)
        lines.append(f"| {family} | " + " | ".join(str(row[c]) for c in COLUMNS[1:]) + " |")
    lines.append("| **total** | " + " | ".join(f"**{total[c]}**" for c in COLUMNS[1:]) + " |")
    lines += ["", "## Failures by reason", ""] + reasons(lossless, "decompose-conv,fold") + reasons(channels, "prune-channels")
    (HERE / "results" / "registry.md").write_text("\n".join(lines) + "\n")
    plot(total, HERE / "results" / "registry.png")
    print(f"wrote {HERE / 'results' / 'registry.md'}: {Counter(r['status'] for r in lossless.values())}")


if __name__ == "__main__":
    main()
