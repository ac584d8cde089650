"""Design choices of joint pruning and importance averaging, measured: each variant prunes the same
transferred model on the same fixed schedule (15% of params per step, the scales and head retrained one
epoch after each step) and reports val accuracy after each step.

    .venv/bin/python -m bench.transfer.variants channels joint joint:norm joint:mom channels:mom   # ~22 min

Variants: WHAT (channels, joint, bases, double) with `:mom` (Taylor importance averaged across steps,
momentum 0.9) or `:norm` (joint, with every unit's importance divided by the mean of its channel group /
its layer's bases, as prune-channels ranks within groups, instead of raw loss units). Val: the last 500
training digits, as bench.transfer.recipe. Prints one line per variant: seconds, then params kept:val accuracy.
"""

from __future__ import annotations

import sys
import time

import torch

import fxprune
from fxprune.analysis.channels import taylor as channel_taylor
from fxprune.analysis.importance import taylor_scores

from .digits import batches, digits
from .lite0 import load_lite0

joint = sys.modules["fxprune.passes.prune_joint"]


SCHEDULE = "constant"  # the lr schedule these results were measured with (before cosine became the default)


def channel_taylor_normalised(graph, data, loss_fn=None, momentum=None):
    s = channel_taylor(graph, data, loss_fn, momentum)
    for g in graph.groups:
        if all(c in s for c in g.classes):
            mean = sum(s[c] for c in g.classes) / g.size
            if mean > 0:
                for c in g.classes:
                    s[c] /= mean
    return s


def taylor_scores_normalised(gm, pairs, data, loss_fn=None, momentum=None):
    return [t / t.mean().clamp_min(1e-300) for t in taylor_scores(gm, pairs, data, loss_fn, momentum)]


def main(variants: list[str]) -> None:
    torch.manual_seed(0)
    (x_train, y_train), _ = digits(64)
    train = batches(x_train[:-500], y_train[:-500], 64, shuffle_seed=0)
    val = batches(x_train[-500:], y_train[-500:], 250)
    x = x_train[:1]
    gm = fxprune.prune(load_lite0(10), x, "decompose-conv,insert-scaling")
    fxprune.train_scaling(gm, train, epochs=6, lr=1e-2, schedule=SCHEDULE, progress=False)
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}; A0 val", fxprune.evaluate(gm, val)["accuracy"],
          flush=True)
    for variant in variants:
        what, _, option = variant.partition(":")
        normalised = option == "norm"
        joint.taylor = channel_taylor_normalised if normalised else channel_taylor
        joint.taylor_scores = taylor_scores_normalised if normalised else taylor_scores
        start = time.time()
        history = fxprune.prune_iteratively(gm, x, data=train, val_data=val, prune_what=what, step=0.15,
                                               until="params=0.1", importance_data=train[:8],
                                               momentum=0.9 if option == "mom" else None, schedule=SCHEDULE,
                                               progress=False).history
        print(variant, round(time.time() - start),
              " ".join(f"{h['params_kept']:.3f}:{h['val_accuracy']:.3f}" for h in history[1:]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
