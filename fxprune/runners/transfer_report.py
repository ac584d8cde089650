"""The report `fxprune transfer` writes beside the model: Markdown, and accuracy against params (PNG)."""

from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from fxprune.core.io import atomic_write
from fxprune.training.recipe import TransferResult, resolution_note, val_change


def write_plot(path: Path, result: TransferResult, settings: dict) -> bool:
    """Val accuracy against params over the pruning steps; False where matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([s["params"] / 1e6 for s in result.steps], [s["val_accuracy"] for s in result.steps], marker="o",
            label=f"prune {settings['prune']} ({settings['criterion']}), scales retrained after each step")
    ax.axhline(result.accuracy[0], color="k", lw=0.8, label=f"transferred: {result.accuracy[0]:.3f}")
    ax.axhline(float(result.until.partition("=")[2]) if result.until.startswith("accuracy=") else float("nan"),
               color="k", lw=0.8, ls=":", label=f"floor ({settings['until']})")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set(xlabel="parameters (millions, BatchNorm folded)", ylabel=f"val accuracy ({settings['val_images']} images)",
           title=f"{settings['model']} on {Path(settings['data']).name}: pruning without fine-tuning any weight")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return True


def margin_text(margin: float, until: str) -> str:
    """How a step is judged against an accuracy floor, for the banner and the report: '' without a margin
    or without an accuracy stop rule."""
    if not margin or not until.startswith("accuracy"):
        return ""
    return f", judged on val accuracy less {margin:g} standard error{'s' * (margin != 1)} of its change"


def head_text(head_lr: float | None) -> str:
    """The head's lr in the retraining after each step, where it differs from the scales': '' for None."""
    if head_lr is None:
        return ""
    return " (the head kept as transferred)" if head_lr == 0 else f" (the head at lr {head_lr:g})"


def report_markdown(out: Path, result: TransferResult, settings: dict, table: list[dict], plotted: bool) -> str:
    p, a, m = result.params, result.accuracy, result.macs
    plot = f"![val accuracy against params]({out.with_suffix('.png').name})\n" if plotted else (
        "(install matplotlib for the accuracy-against-params plot)\n")
    t = result.test_accuracy
    test = (f"**Test accuracy ({result.test_images} held-out images, which chose nothing): {t[0]:.3f} -> {t[1]:.3f}.** "
            "Val accuracy chose the step to stop at, so it is the optimistic one.\n\n" if t else "")
    note = resolution_note(result)
    return f"""# fxprune transfer: {settings['model']} on {settings['data']}

- {settings['weights_note'][0].upper() + settings['weights_note'][1:]}
- Data: {len(settings['classes'])} classes, {settings['train_images']} train / {settings['val_images']} val images \
at {settings['image_size']}x{settings['image_size']}
- Trained: the basis scales and the head, {settings['epochs']} epochs of Adam (lr {settings['lr']}, \
{settings['schedule']} schedule); no other weight \
was changed. Pruned: {settings['prune']} by {settings['criterion']} importance, {settings['step']} of the params per \
step, scales retrained one epoch at lr {settings['retrain_lr']:g}{head_text(settings.get('retrain_head_lr'))} after each, until {settings['until']} ({result.until}\
{margin_text(settings['margin'], result.until)}).
- Time: {result.seconds['train']:.0f} s training, {result.seconds['prune']:.0f} s pruning ({settings['threads']} threads; \
{settings['device']}, amp {settings['amp']}{', ' + str(settings['processes']) + ' processes' if settings['processes'] > 1 else ''}; \
batch {settings['batch_size']}, augment {settings['augment']}, seed {settings['seed']})

{test}**Val accuracy {a[0]:.3f} -> {a[1]:.3f}** ({val_change(result)}{'; ' + note if note else ''}). **Params {p[0]:,} -> {p[1]:,} ({100 * (1 - p[1] / p[0]):.1f}% fewer); \
MACs {m[0]:,} -> {m[1]:,} ({100 * (1 - m[1] / m[0]):.1f}% fewer).** Sizes count BatchNorm folded into the layers, \
before and after.

{tabulate(table, headers="keys", tablefmt="github")}

{plot}
Model: `{out.name}` (load with `torch.export.load("{out.name}").module()`; any batch size; the inputs are
RGB images of {settings['image_size']}x{settings['image_size']} scaled to [0, 1], normalised with mean
{tuple(round(v, 3) for v in settings['mean'])} and std {tuple(round(v, 3) for v in settings['std'])}; classes in order
{', '.join(settings['classes'])}).
"""
