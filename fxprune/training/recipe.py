"""The whole user job in one call: a pretrained model and labelled data in, a small accurate model out.

transfer() = decompose-conv,insert-scaling (lossless; a new head stays one plain layer), train the
basis scales and the head, prune iteratively (retraining the scales after each step) until the stop
rule, then fold into plain torch modules. No backbone weight is fine-tuned.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.fx as fx
from torch import nn

from fxprune.analysis.counting import total_macs, total_params
from fxprune.core.api import as_inputs, prune
from fxprune.analysis.importance import split_batch
from fxprune.training.scales import evaluate, prune_iteratively, train_scaling


@dataclass
class TransferResult:
    model: fx.GraphModule  # folded: plain torch modules
    transferred: fx.GraphModule  # the transferred model before pruning, folded
    params: tuple[int, int]  # (transferred, pruned), BatchNorm folded in both
    macs: tuple[int, int]
    accuracy: tuple[float, float]  # val accuracy (transferred, pruned)
    until: str  # the stop rule as applied (accuracy-drop resolved to accuracy=A)
    epochs: list[dict] = field(default_factory=list)  # train_scaling's per-epoch history
    steps: list[dict] = field(default_factory=list)  # prune_iteratively's per-step history
    seconds: dict[str, float] = field(default_factory=dict)
    test_accuracy: tuple[float, float] | None = None  # on a held-out set, where one was given (transferred, pruned)
    test_images: int = 0


RETRAIN_LR_SHARE = 0.3
"""The retraining after each pruning step runs at this share of the transfer's lr, by default. On the
demo (Lite0 -> digits, cosine, the head retrained too): 0.3 removed 65.2% of params (test 0.927 -> 0.932)
where 0.1 removed 59.8% (-> 0.926) within 1 point of val, and 81.0% (-> 0.905) vs 64.8% (-> 0.914) above
val 0.90; a whole lr took the unpruned model from val 0.928 to 0.892 in one epoch."""


RETRAIN_HEAD_LR = 0.0
"""The head's lr in that retraining, by default: the head stays as transferred and only the scales repair a
step. On optdigits' four splits (bench/transfer/results/floor_lr.md, 1-point floor) this held the floor on
test on all four (54.8% of params removed, test -0.1 points on average, worst -1.0), where retraining the
head too removed 61.1% at -2.0 (worst -3.4): the head's moves spent the floor on val noise. Single runs went
the other way (demo: test -0.6 vs +0.5; mnist: -1.3 vs -0.7): over the six runs the floor held on test in 5
with the head kept, 3 with it retrained."""


def retrain_lr_for(lr: float, retrain_lr: float | None) -> float:
    """The lr of the retraining after each pruning step: `retrain_lr` where given, else RETRAIN_LR_SHARE * lr."""
    return RETRAIN_LR_SHARE * lr if retrain_lr is None else retrain_lr


def stop_rule(until: str, transferred_accuracy: float) -> str:
    """`accuracy-drop=D` (at most D below the transferred model's val accuracy) as accuracy=A;
    the other rules of prune_iteratively (params=F, macs=F, accuracy=A) as they are."""
    key, _, value = until.partition("=")
    if key != "accuracy-drop":
        return until
    try:
        drop = float(value)
    except ValueError:
        drop = -1.0
    if not 0 <= drop < 1:
        raise ValueError(f"until={until!r}: write accuracy-drop=D with D in [0, 1), e.g. accuracy-drop=0.01")
    return f"accuracy={max(transferred_accuracy - drop, 1e-9):.6f}"


def transfer(model: nn.Module, example_inputs, *, train: Iterable, val: Iterable, epochs: int = 5, lr: float = 1e-2,
             prune_what: str = "channels", criterion: str = "taylor", until: str = "accuracy-drop=0.01",
             step: float = 0.05, max_steps: int = 50, importance_batches: int | None = 8,
             momentum: float | None = None, basis: str = "svd", distill: float = 0.0, schedule: str = "cosine",
             retrain_lr: float | None = None, retrain_head_lr: float | None = RETRAIN_HEAD_LR, margin: float = 0.0,
             test: Iterable | None = None,
             progress: bool = True) -> TransferResult:
    """Train the basis scales and the head of `model` (pretrained backbone, new head: start it at zero
    with fxprune.zero_head, as the CLI does, or the scales move under a head still giving noise) on `train`,
    then prune `prune_what` ('bases', 'channels', 'joint' or 'double') iteratively with `criterion`,
    `step` of the params per step, retraining the scales one epoch after each (at `retrain_lr`, by default
    RETRAIN_LR_SHARE * lr: retraining a converged model at the first lr costs it accuracy by itself,
    one at lr / 10 recovers too little from a step; the head at `retrain_head_lr`, by default
    RETRAIN_HEAD_LR = 0: kept as transferred; None: retrained at `retrain_lr` too), until `until`
    (default: the smallest model whose val accuracy stays within 1 point of the transferred one),
    and fold. Taylor importance is measured on the first `importance_batches` batches of `train`
    (None: all; 8 costs a quarter of an epoch of 32 batches and ranked as well here), averaged across
    steps with `momentum` where given. `basis="data"` decomposes into bases fitted to the responses on
    those batches (decompose-conv{basis=data}) instead of each layer's SVD. `distill` > 0: the retraining
    after each step distils from the transferred model with that weight. Every training run decays lr
    by `schedule` (train_scaling's: cosine to 0, or constant). A step holds while its val accuracy less
    `margin` standard errors of its change stays above the floor (prune_iteratively's). `test`, where given,
    is evaluated at every kept step and at the end, for the record: it decides nothing. `model` is not
    modified."""
    inputs = as_inputs(example_inputs)
    clock = {}
    start = time.perf_counter()
    if basis == "svd":
        gm = prune(model, inputs, "decompose-conv,insert-scaling")
    else:
        gm = prune(model, inputs, f"decompose-conv{{basis={basis}}},insert-scaling", data=_first(train, importance_batches))
    epochs_run = train_scaling(gm, train, epochs=epochs, lr=lr, val_data=val, schedule=schedule, progress=progress)
    clock["train"] = time.perf_counter() - start
    base = prune(gm, inputs, "fold")
    a0 = evaluate(base, val)["accuracy"]
    rule = stop_rule(until, a0)
    start = time.perf_counter()
    some = _first(train, importance_batches)
    pruned, steps = prune_iteratively(gm, inputs, data=train, val_data=val, criterion=criterion,
                                      prune_what=prune_what, step=step, until=rule, epochs=1,
                                      lr=retrain_lr_for(lr, retrain_lr), head_lr=retrain_head_lr,
                                      max_steps=max_steps, importance_data=some, momentum=momentum, distill=distill,
                                      schedule=schedule, margin=margin, test_data=test, progress=progress)
    small = prune(pruned, inputs, "fold")
    clock["prune"] = time.perf_counter() - start
    with torch.no_grad():
        accuracy = evaluate(small, val)["accuracy"]
    result = TransferResult(small, base, (total_params(base), total_params(small)),
                            (total_macs(base, inputs), total_macs(small, inputs)), (a0, accuracy), rule,
                            epochs_run, steps, clock)
    if test is not None:
        result.test_accuracy = tuple(evaluate(m, test)["accuracy"] for m in (base, small))
        result.test_images = sum(len(split_batch(batch)[1]) for batch in test)
    return result


def val_change(result: TransferResult) -> str:
    """The pruned model's val accuracy change from the transferred model's, in points, with its paired
    standard error (prune_iteratively's val_se at the last kept step)."""
    a0, a1 = result.accuracy
    return f"{100 * (a1 - a0):+.1f} ± {100 * result.steps[-1]['val_se']:.1f} points (1 standard error)"


def resolution_note(result: TransferResult) -> str | None:
    """Where the val change's standard error is wider than the drop an accuracy floor allowed, a note
    saying so (the drop on new data can differ from val's by that much); else None."""
    a0, se = result.accuracy[0], result.steps[-1]["val_se"]
    key, _, floor = result.until.partition("=")
    if key != "accuracy" or not se > a0 - float(floor) > 0:
        return None
    se_points, floor_points = 100 * se, 100 * (a0 - float(floor))
    digits = 1 if round(se_points, 1) > round(floor_points, 1) else 2  # never "±1.0, more than the 1.0-point floor"
    return (f"val measures this change only to ±{se_points:.{digits}f} points, more than the "
            f"{floor_points:.1f}-point floor allows: on new data the drop can differ by as much; "
            "hold out more val images to trust a floor this tight")


def _first(data: Iterable, batches: int | None) -> Iterable:
    """The first `batches` batches of `data` (all of it for None)."""
    return data if batches is None else list(itertools.islice(iter(data), batches))
