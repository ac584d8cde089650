"""bench/channels/results/*.jsonl (zoo_peer runs) -> bench/channels/README.md and results/coverage.png:
how many models each tool prunes at the same channel ratio, its time, and every failure with its reason.

    .venv/bin/python -m bench.channels.summarize
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from tabulate import tabulate

from fxprune.core.io import atomic_write_text
from fxprune.runners.zoo import load

HERE = Path(__file__).resolve().parent
ZOOS = {"torchvision": ("tv.jsonl", "zoo_configs/torchvision.toml"), "timm": ("timm.jsonl", "zoo_configs/timm.toml"),
        "transformers": ("transformers.jsonl", "zoo_configs/transformers.toml")}
TOOLS = {"fxprune": "fxprune `prune-channels`", "torch_pruning": "Torch-Pruning MetaPruner (L2 magnitude)"}


def rows_of(name: str) -> list[dict]:
    path = HERE / "results" / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def main() -> None:
    root = HERE.parent.parent
    summary, failures, lossless, versus, named, coverage = [], [], [], [], [], {}
    ratio = next((r["ratio"] for z in ZOOS.values() for r in rows_of(z[0])), "?")
    for zoo, (results, config) in ZOOS.items():
        rows = rows_of(results)
        entries = load(root / config)
        listed, measured = len(entries), {r["model"] for r in rows}
        failures += [[zoo, e.id, "(both)", "skipped by the config", e.skip] for e in entries if e.skip]
        failures += [[zoo, e.id, "(both)", "not run yet", ""] for e in entries if not e.skip and e.id not in measured]
        for tool, label in TOOLS.items():
            runs = [r for r in rows if tool in r]
            ok = [r for r in runs if r[tool]["status"] == "ok"]
            kept = [r[tool]["params_after"] / r["params_before"] for r in ok]
            coverage.setdefault(zoo, {})[tool] = (len(ok), listed)
            summary.append([zoo, label, f"{len(ok)} / {listed}", f"{len(ok) / listed:.1%}",
                            f"{statistics.median(kept):.3f}" if kept else "",
                            f"{statistics.median(r[tool]['seconds'] for r in runs):.2f}" if runs else "",
                            f"{sum(r[tool]['seconds'] for r in runs):.0f}"])
            failures += [[zoo, r["model"], label, r[tool]["status"], r[tool].get("reason", "")]
                         for r in runs if r[tool]["status"] != "ok"]
        failures += [[zoo, r["model"], "(both)", "error", r["error"]] for r in rows if "error" in r]
        both = [r for r in rows if all(r.get(t, {}).get("status") == "ok" for t in TOOLS)]
        fewer = [r for r in both if r["fxprune"]["params_after"] <= r["torch_pruning"]["params_after"]]
        more = sorted(((r["fxprune"]["params_after"] / r["torch_pruning"]["params_after"], r["model"])
                       for r in both if r not in fewer), reverse=True)
        versus.append([zoo, str(len(both)), str(len(fewer)),
                       f"{statistics.median(x for x, _ in more):.2f}x" if more else "",
                       ", ".join(f"{m} ({x:.2f}x)" for x, m in more[:4])])
        if zoo == "transformers":
            named += [[r["model"], f"{r['params_before']:,}",
                       *(f"{r[t]['params_after'] / r['params_before']:.3f}" if r.get(t, {}).get("status") == "ok"
                         else r.get(t, {}).get("status", "") for t in TOOLS)] for r in rows]
        checked = [r["fxprune_lossless"] for r in rows if "fxprune_lossless" in r]
        vacuous = [c for c in checked if c.get("zeroed") == 0]  # no prunable group: nothing to check
        lossless.append([zoo, f"{sum(c['status'] == 'ok' for c in checked)} / {len(checked) - len(vacuous)}",
                         str(len(vacuous)),
                         f"{max((c['rel_l2_error'] for c in checked if 'rel_l2_error' in c), default=0):.1e}"])
        failures += [[zoo, r["model"], "fxprune lossless check", r["fxprune_lossless"]["status"],
                      r["fxprune_lossless"].get("reason", f"zeroed {r['fxprune_lossless'].get('zeroed')}, removed "
                                                         f"{r['fxprune_lossless'].get('removed')}")]
                     for r in rows if r.get("fxprune_lossless", {}).get("status", "ok") != "ok"
                     and r["fxprune_lossless"].get("zeroed") != 0]
    text = f"""# Channel pruning across the zoo: fxprune against Torch-Pruning

Reproduce (1 thread, random weights with `fxprune.runners.zoo.wake`):
`.venv/bin/python -m bench.channels.zoo_peer zoo_configs/torchvision.toml --out bench/channels/results/tv.jsonl`
(and `timm.toml` -> `timm.jsonl`, `transformers.toml` -> `transformers.jsonl`), then
`.venv/bin/python -m bench.channels.summarize`; `--peer-from OLD.jsonl` reuses Torch-Pruning's rows of an
earlier run (same models, ratio and version). tv.jsonl and timm.jsonl: fxprune's rows measured 2026-11-24 (after
nn.MultiheadAttention and torchvision's Swin attention were traced as plain ops and channel slices, padding
modules, Conv2dSame, Upsample, F.normalize and `x @ W` were understood; the swin_v2 and maxvit_t rows again after Swin V2's
attention was traced and einsum understood), Torch-Pruning's from the 2026-11-22 runs; transformers.jsonl: 2026-11-23.

1 thread, at most 600 s per pruning call. The script measures each model in a fresh process with an
address-space limit (`--memory-gib`: 10 to 12 GiB in the runs here, so two runs fit beside each
other; 20 GiB for vit_h_14 and deepseek_vit_412m, run alone); a tool that needs more fails with a MemoryError or "can't allocate memory". The runs here
were resumed several times: the rows made before Torch-Pruning twice ran the machine out of memory
(swin_t, efficientformerv2_s0) came from one long process without that limit.
Both tools get each model at channel ratio {ratio}, the classifier kept. "ok": the pruned model runs,
its output has the original shape and it has fewer params. Time: the pruning call alone (fxprune:
trace, analysis, removal; Torch-Pruning: dependency graph, importance, removal). Models a config
skips (with the reason in the config) are counted as not pruned.

{tabulate(summary, ["zoo", "tool", "pruned", "share", "median params kept", "median s", "total s"],
          tablefmt="github", disable_numparse=True)}

![models pruned by each tool, per zoo](results/coverage.png)

## Transformers and ConvNeXt (issue 17's goal: at most 0.6 of the params kept at ratio {ratio})

{tabulate(named, ["model", "params", "fxprune params kept", "Torch-Pruning params kept"], tablefmt="github",
          disable_numparse=True)}

## Params kept: fxprune against Torch-Pruning where both prune

{tabulate(versus, ["zoo", "both prune", "fxprune keeps at most Torch-Pruning's params", "elsewhere, fxprune / Torch-Pruning (median)",
                  "most"],
          tablefmt="github", disable_numparse=True)}

## Lossless check (fxprune)

Half the channels of every prunable group zeroed (their weight slices), then
`prune-channels{{criterion=l1 ratio=0.5}}`: it must remove exactly those channels and keep the logits
(relative L2 error < 1e-5 or max abs error <= 1e-4). Norms over channels (LayerNorm, RMSNorm, GroupNorm,
per group) compute their statistics over fewer channels once channels are removed, so there the
reference is the zeroed model with those channels masked out of the norms' statistics
(`fxprune.analysis.channels.as_removed`); elsewhere it is the zeroed model itself.

{tabulate(lossless, ["zoo", "passed", "nothing prunable", "worst rel. L2 error"], tablefmt="github", disable_numparse=True)}

## Every model a tool did not prune (or fxprune's check did not pass)

{tabulate(failures, ["zoo", "model", "tool", "status", "reason"], tablefmt="github", disable_numparse=True)}
"""
    atomic_write_text(HERE / "README.md", text)
    plot({z: c for z, c in coverage.items() if z != "transformers"}, HERE / "results" / "coverage.png")
    print(text)


def plot(coverage: dict, path: Path) -> None:
    """Share of each zoo's models that each tool prunes, as grouped bars labelled with the counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fxprune.core.io import atomic_write

    zoos = list(coverage)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for i, (tool, label) in enumerate({"fxprune": "fxprune", "torch_pruning": "Torch-Pruning 1.6"}.items()):
        counts = [coverage[z][tool] for z in zoos]
        bars = ax.bar([j + 0.38 * (i - 0.5) for j in range(len(zoos))], [100 * a / b for a, b in counts], 0.36,
                      label=label)
        ax.bar_label(bars, [f"{a}/{b}" for a, b in counts], fontsize=8)
    ax.set_xticks(range(len(zoos)), [{"torchvision": "torchvision classification",
                                      "timm": "timm, one model per family"}.get(z, z) for z in zoos])
    ax.set(ylabel="models channel-pruned (%)", ylim=(0, 112), title="Channel pruning at ratio 0.3, random weights")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


if __name__ == "__main__":
    main()
