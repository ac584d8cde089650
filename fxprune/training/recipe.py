"""The whole user job in one call: a pretrained model and labelled data in, a small accurate model out.

transfer() = decompose-conv,insert-scaling (lossless; a new head stays one plain layer), train the
basis scales and the head, prune iteratively (retraining the scales after each step) until the stop
rule, then fold into plain torch modules. No backbone weight is fine-tuned.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.fx as fx
from torch import nn

from fxprune.analysis.counting import total_macs, total_params
from fxprune.core.api import as_inputs, prune
from fxprune.analysis.importance import split_batch
from fxprune.training.options import TransferOptions, stop_rule, with_changes
from fxprune.training.runtime import Runtime, as_runtime
from fxprune.training.scales import evaluate, hits, paired_se, train_scaling
from fxprune.training.search import chosen_row, prune_iteratively


@dataclass
class TransferResult:
    model: fx.GraphModule  # folded: plain torch modules
    transferred: fx.GraphModule  # the transferred model before pruning, folded
    params: tuple[int, int]  # (transferred, pruned), BatchNorm folded in both
    macs: tuple[int, int]
    accuracy: tuple[float, float]  # val accuracy (transferred, pruned)
    until: str  # the stop rule as applied (accuracy-drop resolved to accuracy=A)
    epochs: list[dict] = field(default_factory=list)  # train_scaling's per-epoch history
    steps: list[dict] = field(default_factory=list)  # prune_iteratively's rows, one per try ("kept": the path)
    search: str = ""  # the search's tries and why its descent stopped
    seconds: dict[str, float] = field(default_factory=dict)
    test_accuracy: tuple[float, float] | None = None  # on a held-out set, where one was given (transferred, pruned)
    test_images: int = 0
    check_accuracy: tuple[float, float] | None = None  # on `check`: images no decision saw (transferred, pruned)
    check_se: float = 0.0  # paired standard error of the check change
    check_images: int = 0

    @property
    def chosen(self) -> dict:
        return chosen_row(self.steps)


def transfer(model: nn.Module, example_inputs, options: TransferOptions | None = None, *, train: Iterable,
             val: Iterable, check: Iterable | None = None, test: Iterable | None = None,
             agreement_data: Iterable | None = None, device: str | Runtime = "cpu",
             checkpoint: Callable[[dict], None] | None = None, resume: dict | None = None,
             progress: bool = True, **changes) -> TransferResult:
    """Train the basis scales and the head of `model` on `train` (a new head: start it at zero with
    fxprune.zero_head), prune iteratively until the stop rule (default: the smallest model within 1 point
    of the transferred one's val accuracy), and fold. `options`: a TransferOptions, or its fields as keywords.

    Every decision is taken on `val`; `agreement_data` (train images un-augmented, in a fixed order)
    gives a settled try its second test: it must keep `agreement` of the transferred model's predictions
    on them. `check` (images no decision saw) is scored once at the end with the paired standard error of
    its change: the claim. `test` is scored at every try for the record and decides nothing.
    Training runs on `device` (a name or a Runtime); the models returned are on the CPU and `model` is
    neither modified nor moved. After every try `checkpoint(state)` gets what `resume=state` needs to go
    on exactly as this run would have.
    """
    o = with_changes(options or TransferOptions(), changes, "transfer")
    runtime = as_runtime(device)
    inputs = as_inputs(example_inputs)
    if resume is None:
        clock = {}
        start = time.perf_counter()
        if o.basis == "svd":
            gm = prune(model, inputs, "decompose-conv,insert-scaling")
        else:
            gm = prune(model, inputs, f"decompose-conv{{basis={o.basis}}},insert-scaling",
                       data=_first(train, o.importance_batches))
        gm = runtime.model(gm)
        epochs_run = train_scaling(gm, train, o.training(), val_data=val, device=runtime, progress=progress)
        clock["train"] = time.perf_counter() - start
        base = prune(gm, runtime.inputs(inputs), "fold")
        a0 = evaluate(base, val, device=runtime)["accuracy"]
        stage = {"base": base, "accuracy": a0, "until": stop_rule(o.until, a0), "epochs": epochs_run,
                 "seconds": clock, "importance_epoch": _epoch(train)}
    else:
        stage = dict(resume)
        gm = None
        _seek(train, stage["importance_epoch"])
    some = _first(train, o.importance_batches)
    if resume is not None:
        _seek(train, stage["train_epoch"])
        _set_rng(stage["rng"])
    base, a0, clock = stage["base"], stage["accuracy"], stage["seconds"]
    start = time.perf_counter() - clock.get("prune", 0.0)

    def on_keep(search: dict) -> None:
        if checkpoint is not None:
            clock["prune"] = time.perf_counter() - start
            checkpoint({**stage, "search": search, "train_epoch": _epoch(train), "rng": _rng()})

    search = prune_iteratively(gm, inputs, o.pruning(stage["until"]), data=train, val_data=val,
                               importance_data=runtime.batches(some), test_data=test,
                               agreement_data=agreement_data, device=runtime,
                               resume=stage.get("search"), on_keep=on_keep, progress=progress)
    small = prune(search.model, runtime.inputs(inputs), "fold")
    clock["prune"] = time.perf_counter() - start
    accuracy = evaluate(small, val, device=runtime)["accuracy"]
    tested = tuple(evaluate(m, test, device=runtime)["accuracy"] for m in (base, small)) if test is not None else None
    checked = [hits(m, check, runtime) for m in (base, small)] if check is not None else None
    small, base = _on_cpu(small), _on_cpu(base)
    result = TransferResult(small, base, (total_params(base), total_params(small)),
                            (total_macs(base, inputs), total_macs(small, inputs)), (a0, accuracy), stage["until"],
                            stage["epochs"], search.history, search.summary(), clock)
    if checked is not None:
        result.check_accuracy = tuple(right.float().mean().item() for right in checked)
        result.check_se, result.check_images = paired_se(*checked), len(checked[0])
    if test is not None:
        result.test_accuracy = tested
        result.test_images = sum(len(split_batch(batch)[1]) for batch in test)
    return result


def _on_cpu(gm: fx.GraphModule) -> fx.GraphModule:
    return gm.to("cpu").to(memory_format=torch.contiguous_format)


def _epoch(data: Iterable) -> int | None:
    """Where a loader with a seeded order (training.data.Loader) is: the passes it has begun."""
    return getattr(data, "epoch", None)


def _seek(data: Iterable, epoch: int | None) -> None:
    if epoch is not None:
        data.epoch = epoch


def _rng() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def val_change(result: TransferResult) -> str:
    """The pruned model's val accuracy change from the transferred model's, in points, with its paired
    standard error (prune_iteratively's val_se of the chosen try)."""
    a0, a1 = result.accuracy
    return f"{100 * (a1 - a0):+.1f} ± {100 * result.chosen['val_se']:.1f} points (1 standard error)"


def resolution_note(result: TransferResult) -> str | None:
    """Where the val change's standard error is wider than the drop an accuracy floor allowed, a note
    saying so (the drop on new data can differ from val's by that much); else None."""
    a0, se = result.accuracy[0], result.chosen["val_se"]
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
