"""Write bench/zoo/README.md from the zoo runs' results.jsonl files.

Run: .venv/bin/python bench/zoo/summarize.py
"""

import json
import statistics
from pathlib import Path

from fxprune.runners import zoo

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent.parent / "zoo_configs"
RUNS = [("torchvision", "lossless-torchvision", "torchvision.toml"), ("timm", "lossless-timm", "timm.toml"),
        ("torchvision segmentation, video, flow", "lossless-tv-dense", "torchvision_dense.toml"),
        ("torchvision detection (backbones)", "lossless-tv-detection", "torchvision_detection.toml")]
CHANNEL_RUNS = [("torchvision segmentation, video, flow", "channels-tv-dense", "torchvision_dense.toml"),
                ("torchvision detection (backbones)", "channels-tv-detection", "torchvision_detection.toml")]
DEFAULT_RUNS = [("torchvision", "default-torchvision", "torchvision.toml"), ("timm", "default-timm", "timm.toml")]


def read(folder: str) -> dict[str, dict]:
    path = HERE / "results" / folder / "results.jsonl"
    return {r["model"]: r for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}


def tally(folder: str, config: str, statuses: tuple[str, ...]) -> tuple[list[str], dict[str, dict], dict[str, int]]:
    """The model ids a config lists, the results of a run by model, and how many have each status."""
    ids = [e.id for e in zoo.load(CONFIGS / config)]
    rows = read(folder)
    return ids, rows, {s: sum(r["status"] == s for r in rows.values()) for s in statuses}


def unused_notes(rows: dict[str, dict]) -> list[str]:
    return [f"- {r['model']}: its {r['params_unused']:,} parameters of training-only heads never run in eval; "
            "they are outside the counts (named under its layer table)." for r in rows.values()
            if r.get("params_unused")]


def default_section() -> list[str]:
    """The default pipeline (lossy): how much it saves per model on random weights."""
    from fxprune import DEFAULT_PIPELINE

    lines = ["", "## The default pipeline", "",
             f"`{DEFAULT_PIPELINE}` (`fxprune zoo CONFIG --out bench/zoo/results/default-NAME --jobs 2`, 1 torch",
             "thread per worker). On random weights the singular values are flat, so a 95% energy threshold",
             "keeps most of each layer and `fold` merges most pairs back: the savings below are a floor, not",
             "what pretrained weights give. Status `ok`: output shapes kept and params fell; `no-gain`: nothing",
             "was worth removing. Per-layer tables: `default-NAME/layers/`.", "",
             "| zoo | models | ok | no-gain | error | skipped | not run yet | params saved (median, best) "
             "| MACs saved (median) | time, summed over models |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, folder, config in DEFAULT_RUNS:
        ids, rows, count = tally(folder, config, ("ok", "no-gain", "error", "skipped"))
        sized = [r for r in rows.values() if "params_after" in r]
        saved = {r["model"]: 1 - r["params_after"] / r["params_before"] for r in sized}
        macs = [1 - r["macs_after"] / r["macs_before"] for r in sized]
        best = max(saved, key=saved.get, default=None)
        lines.append(
            f"| {f'[{name}](results/{folder}/summary.md)' if (HERE / 'results' / folder / 'summary.md').exists() else name} | {len(ids)} | {count['ok']} | {count['no-gain']} | {count['error']} | "
            f"{count['skipped']} | {sum(i not in rows for i in ids)} | "
            + (f"{statistics.median(saved.values()):.1%}, {saved[best]:.1%} ({best}) | {statistics.median(macs):.1%} | "
               if sized else "- | - | ")
            + f"{sum(r['seconds'] for r in rows.values()) / 60:.0f} min |")
        notes += [f"- {r['model']}: {r['status']}: {r.get('reason', '')}" for r in rows.values()
                  if r["status"] in ("error", "skipped")]
        notes += unused_notes(rows)
    return lines + [""] + notes


def channels_section() -> list[str]:
    """prune-channels beyond classification: shapes kept (every output leaf), params fallen."""
    lines = ["", "## Channels beyond classification", "",
             "`prune-channels{ratio=0.3},fold` (`fxprune zoo CONFIG --pipeline \"prune-channels{ratio=0.3},fold\" --out",
             "bench/zoo/results/channels-NAME --jobs 2`). Status `ok`: every output leaf keeps its shape (segmentation's",
             "`out` and `aux`; a detector's backbone feature maps, with the whole detector then run) and params fell.", "",
             "| zoo | models | ok | no-gain | shape-changed | error | params kept (median) | MACs kept (median) |",
             "|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, folder, config in CHANNEL_RUNS:
        ids, rows, count = tally(folder, config, ("ok", "no-gain", "shape-changed", "error"))
        sized = [r for r in rows.values() if r["status"] == "ok"]
        kept = [r["params_after"] / r["params_before"] for r in sized]
        macs = [r["macs_after"] / r["macs_before"] for r in sized]
        lines.append(f"| {f'[{name}](results/{folder}/summary.md)' if (HERE / 'results' / folder / 'summary.md').exists() else name} | "
                     f"{len(ids)} | {count['ok']} | {count['no-gain']} | {count['shape-changed']} | {count['error']} | "
                     + (f"{statistics.median(kept):.2f} | {statistics.median(macs):.2f} |" if sized else "- | - |"))
        notes += [f"- {r['model']}: {r['status']}: {r.get('reason', '')}" for r in rows.values()
                  if r["status"] not in ("ok",)]
    return lines + [""] + notes


def judged(row: dict) -> float:
    """The error an ok row was judged by: against the float64 outputs where it has one (see zoo.float64_errors)."""
    return row.get("float64_rel_l2_error", row["rel_l2_error"])


def mismatch_text(row: dict) -> str:
    """A mismatch row's error, with how far float32 itself takes the model from its float64 outputs and the
    rewrite's distance from them, where the row has them."""
    text = f"relative L2 error {row['rel_l2_error']:.2e} over the limit {row['rel_l2_limit']:g}"
    if "float32_rel_l2_error" in row:
        text += f"; float32 itself: {row['float32_rel_l2_error']:.2e} from float64"
    if "float64_rel_l2_error" in row:
        text += f", the rewrite {row['float64_rel_l2_error']:.2e} from it"
    return text


def main() -> None:
    lines = ["# Zoo results", "",
             "`decompose-conv,fold` at full rank must reproduce the logits (float32, eval mode, batch 1):",
             "relative L2 error below 1e-5. Random weights, with zero-initialised parameters given small random",
             "values and BatchNorm given random statistics (`fxprune.runners.zoo.wake`) so that every layer matters.",
             "`fold` must never grow a model. Produced by `fxprune zoo CONFIG --pipeline decompose-conv,fold",
             "--out bench/zoo/results/lossless-NAME --jobs 2` (1 thread per worker; `--resume` continues a run). Time: the",
             "seconds each model's run took, summed (CPU time of one thread).", "",
             "| zoo | models | ok | mismatch | vacuous | error | skipped | not run yet | worst rel. L2 error | grew "
             "| time, summed over models |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, folder, config in RUNS:
        ids, rows, count = tally(folder, config, ("ok", "mismatch", "vacuous", "error", "skipped"))
        ok = [r for r in rows.values() if r["status"] == "ok"]
        worst = max(ok, key=judged, default=None)
        worst_text = (f"{judged(worst):.1e} ({worst['model']}{', against float64' if 'float64_rel_l2_error' in worst else ''})"
                      if worst else "-")
        grew = sum(r["params_after"] > r["params_before"] or r["macs_after"] > r["macs_before"] for r in ok)
        missing = [i for i in ids if i not in rows]
        lines.append(f"| [{name}](results/{folder}/summary.md) | {len(ids)} | {count['ok']} | {count['mismatch']} | "
                     f"{count['vacuous']} | {count['error']} | {count['skipped']} | {len(missing)} | {worst_text} | "
                     f"{grew} | {sum(r.get('seconds', 0) for r in rows.values()) / 60:.0f} min |")
        for r in rows.values():
            if r["status"] == "mismatch":
                notes.append(f"- {r['model']}: mismatch: {mismatch_text(r)}")
            elif r["status"] == "ok" and "float64_rel_l2_error" in r:
                notes.append(f"- {r['model']}: ok against the float64 outputs: {r['float64_rel_l2_error']:.2e} from "
                             f"them ({r['rel_l2_error']:.2e} from the float32 outputs, which float32 itself takes "
                             f"{r['float32_rel_l2_error']:.2e} from float64)")
            elif r["status"] != "ok":
                notes.append(f"- {r['model']}: {r['status']}: {r.get('reason', '')}")
        if missing:
            notes.append(f"- {name}: not run yet: {', '.join(missing)}")
        notes += unused_notes(rows)
    registry = ["", "## The whole timm registry", "",
                "Every model of timm's registry, by family (traced, lossless, prunable, errors with their reasons): "
                "[registry.md](results/registry.md), written by `python -m bench.zoo.registry`."]
    (HERE / "README.md").write_text("\n".join(lines + [""] + notes + default_section() + channels_section() + registry)
                                    + "\n")


if __name__ == "__main__":
    main()
