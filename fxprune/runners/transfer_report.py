"""The report `fxprune transfer` writes beside the model: Markdown, and accuracy against params (PNG)."""

from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from fxprune.core.io import atomic_write
from fxprune.training.options import TransferOptions
from fxprune.training.recipe import TransferResult, resolution_note, val_change


def write_plot(path: Path, result: TransferResult, settings: dict) -> bool:
    """Val (and test) accuracy against the share of params kept, every try, the chosen one ringed; False
    where matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for phase, marker in (("descent", "o"), ("settle", "s")):
        rows = [s for s in result.steps if s["phase"] == phase or phase == "descent" and s["phase"] == "start"]
        kept = [100 * s["params_kept"] for s in rows]
        ax.plot(kept, [s["val_accuracy"] for s in rows], marker=marker, ms=4, ls="-" if phase == "descent" else "",
                label=f"val, {phase} tries" if phase == "descent" else "val, settling tries")
        if all("test_accuracy" in s for s in rows):
            ax.plot(kept, [s["test_accuracy"] for s in rows], marker=marker, ms=4, alpha=0.6,
                    ls="--" if phase == "descent" else "", label=f"test, {phase} tries (decides nothing)")
    chosen = result.chosen
    ax.plot([100 * chosen["params_kept"]], [chosen["val_accuracy"]], "o", ms=12, mfc="none", color="k",
            label=f"chosen: {100 * chosen['params_kept']:.1f}% of params kept")
    ax.axhline(result.accuracy[0], color="k", lw=0.8, label=f"transferred: {result.accuracy[0]:.3f}")
    if result.until.startswith("accuracy="):
        ax.axhline(float(result.until.partition("=")[2]), color="k", lw=0.8, ls=":", label=f"floor ({settings['until']})")
    ax.set_xlim(102, 0)
    ax.set(xlabel="params kept (% of the transferred model's, BatchNorm folded)",
           ylabel=f"accuracy (val: {settings['val_images']} images)",
           title=f"{settings['model']} on {Path(settings['data']).name}: pruning without fine-tuning any weight")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return True


def search_text(options: TransferOptions) -> str:
    """How the search runs, in one sentence (banner and report)."""
    return (f"descent steps of {options.step:g} of what is left, each retrained {options.retrain_epochs} epochs at lr "
            f"{options.retrain_lr_value:g} ({options.retrain_schedule}; the head at "
            f"{options.retrain_head_lr_value:g}), at most {options.max_steps}, stopping after {options.patience} in a "
            f"row below the floor; then at most {options.probes} settling tries of {options.settle_epochs} epochs "
            "(lr decaying to 0) bisecting for the deepest step that holds"
            + (f", each also keeping {options.agreement:.0%} of the transferred model's predictions on the train "
               "images" if options.agreement and options.until.startswith("accuracy") else ""))


def check_change(result: TransferResult) -> str:
    """The check set's accuracy before and after, and the change with its paired standard error."""
    c0, c1 = result.check_accuracy
    return f"{c0:.3f} -> {c1:.3f} ({100 * (c1 - c0):+.1f} ± {100 * result.check_se:.1f} points)"


def margin_text(margin: float, until: str) -> str:
    """How a step is judged against an accuracy floor, for the banner and the report: '' without a margin
    or without an accuracy stop rule."""
    if not margin or not until.startswith("accuracy"):
        return ""
    return f", judged on val accuracy less {margin:g} standard error{'s' * (margin != 1)} of its change"


def report_markdown(out: Path, result: TransferResult, settings: dict, table: list[dict], plotted: bool,
                    options: TransferOptions) -> str:
    p, a, m = result.params, result.accuracy, result.macs
    plot = f"![accuracy against params kept]({out.with_suffix('.png').name})\n" if plotted else (
        "(install matplotlib for the accuracy-against-params plot)\n")
    t = result.test_accuracy
    claims = []
    if result.check_accuracy is not None:
        claims.append(f"**Check accuracy ({result.check_images} val images held out from every decision): "
                      f"{check_change(result)}.**")
    if t:
        claims.append(f"**Test accuracy ({result.test_images} held-out images): {t[0]:.3f} -> {t[1]:.3f}.**")
    note = resolution_note(result)
    claims.append(f"Val accuracy {a[0]:.3f} -> {a[1]:.3f} ({val_change(result)}{'; ' + note if note else ''}): val "
                  "took every decision, so it is the optimistic one.")
    return f"""# fxprune transfer: {settings['model']} on {settings['data']}

- {settings['weights_note'][0].upper() + settings['weights_note'][1:]}
- Data: {len(settings['classes'])} classes, {settings['train_images']} train / {settings['val_images']} val images \
at {settings['image_size']}x{settings['image_size']}
- Trained: the basis scales and the head, {settings['epochs']} epochs of Adam (lr {settings['lr']}, \
{settings['schedule']} schedule); no other weight was changed. Pruned: {settings['prune']} by \
{settings['criterion']} importance until {settings['until']} ({result.until}{margin_text(settings['margin'], result.until)}): \
{search_text(options)}.
- Search: {result.search}.
- Time: {result.seconds['train']:.0f} s training, {result.seconds['prune']:.0f} s pruning ({settings['threads']} threads; \
{settings['device']}, amp {settings['amp']}{', ' + str(settings['processes']) + ' processes' if settings['processes'] > 1 else ''}; \
batch {settings['batch_size']}, augment {settings['augment']}, seed {settings['seed']})

{chr(10).join(claims)} **Params {p[0]:,} -> {p[1]:,} ({100 * (1 - p[1] / p[0]):.1f}% fewer); \
MACs {m[0]:,} -> {m[1]:,} ({100 * (1 - m[1] / m[0]):.1f}% fewer).** Sizes count BatchNorm folded into the layers, \
before and after.

{tabulate(table, headers="keys", tablefmt="github")}

{plot}
Model: `{out.name}` (load with `torch.export.load("{out.name}").module()`; any batch size; the inputs are
RGB images of {settings['image_size']}x{settings['image_size']} scaled to [0, 1], normalised with mean
{tuple(round(v, 3) for v in settings['mean'])} and std {tuple(round(v, 3) for v in settings['std'])}; classes in order
{', '.join(settings['classes'])}).
"""
