"""Write bench/zoo/README.md from the zoo runs' results.jsonl files.

Run: .venv/bin/python bench/zoo/summarize.py
"""

import json
from pathlib import Path

from fxprune import zoo

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent.parent / "zoo_configs"
RUNS = [("torchvision", "lossless-torchvision", "torchvision.toml"), ("timm", "lossless-timm", "timm.toml")]


def main() -> None:
    lines = ["# Zoo results", "",
             "`decompose-conv,fold` at full rank must reproduce the logits (float32, eval mode, batch 1):",
             "relative L2 error below 1e-5. Random weights, with zero-initialised parameters given small random",
             "values and BatchNorm given random statistics (`fxprune.zoo.wake`) so that every layer matters.",
             "`fold` must never grow a model. Produced by `fxprune zoo CONFIG --pipeline decompose-conv,fold",
             "--out bench/zoo/lossless-NAME --jobs 2` (1 thread per worker; `--resume` continues a run).", "",
             "| zoo | models | ok | mismatch | vacuous | error | skipped | not run yet | worst rel. L2 error | grew |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, folder, config in RUNS:
        ids = [e.id for e in zoo.load(CONFIGS / config)]
        path = HERE / folder / "results.jsonl"
        rows = {r["model"]: r for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}
        count = {s: sum(r["status"] == s for r in rows.values()) for s in ("ok", "mismatch", "vacuous", "error", "skipped")}
        ok = [r for r in rows.values() if r["status"] == "ok"]
        worst = max(ok, key=lambda r: r["rel_l2_error"], default=None)
        worst_text = f"{worst['rel_l2_error']:.1e} ({worst['model']})" if worst else "-"
        grew = sum(r["params_after"] > r["params_before"] or r["macs_after"] > r["macs_before"] for r in ok)
        missing = [i for i in ids if i not in rows]
        lines.append(f"| [{name}]({folder}/summary.md) | {len(ids)} | {count['ok']} | {count['mismatch']} | "
                     f"{count['vacuous']} | {count['error']} | {count['skipped']} | {len(missing)} | {worst_text} | "
                     f"{grew} |")
        for r in rows.values():
            if r["status"] != "ok":
                notes.append(f"- {r['model']}: {r['status']}: {r.get('reason', '')}")
        if missing:
            notes.append(f"- {name}: not run yet: {', '.join(missing)}")
    (HERE / "README.md").write_text("\n".join(lines + [""] + notes) + "\n")


if __name__ == "__main__":
    main()
