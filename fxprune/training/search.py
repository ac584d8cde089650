"""The iterative prune/retrain search: prune a step of the model, retrain its scales, keep the step
while the stop rule allows; resumable from the state it hands to `on_keep` after every kept step.

Under torchrun every rank runs the same search on the same model: importance is averaged across ranks
inside the passes, and rank 0's verdict on each step is broadcast, so every rank cuts the same channels.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable

import torch.fx as fx

from fxprune.analysis.counting import total_macs, total_params
from fxprune.analysis.latency import LatencyTable, folded_seconds
from fxprune.core import distributed
from fxprune.core.api import as_inputs, prune
from fxprune.core.lowrank import find_pairs
from fxprune.core.manager import history as history_of
from fxprune.core.pipeline import Pipeline
from fxprune.core.progress import bar as progress_bar
from fxprune.training.options import PruneOptions, parse_until, with_changes
from fxprune.training.runtime import Runtime, as_runtime
from fxprune.training.scales import hits, paired_se, train_scaling


def _step_pipeline(prune_what: str, criterion: str, budget: str, step: float, momentum: float | None = None) -> str:
    step = round(step, 9)
    smooth = "" if momentum is None else f" momentum={momentum}"
    if prune_what == "bases":
        return f"prune-basis{{criterion={criterion} {budget}={1 - step}{smooth}}}"
    if prune_what == "channels":
        return f"prune-channels{{criterion={criterion} {budget}={1 - step}{smooth}}}"
    if prune_what == "joint":
        if criterion != "taylor":
            raise ValueError(f"prune_what='joint' ranks bases and channels by Taylor importance only; "
                             f"criterion={criterion!r} is not one it takes")
        return f"prune-joint{{{budget}={1 - step}{smooth}}}"
    if prune_what != "double":
        raise ValueError(f"prune_what={prune_what!r}: write 'bases', 'channels', 'joint' or 'double'")
    half = round((1 - step) ** 0.5, 6)
    return (f"prune-basis{{criterion={criterion} {budget}={half}{smooth}}},"
            f"prune-channels{{criterion={criterion} {budget}={half}{smooth}}}")


def folded_size(gm: fx.GraphModule, inputs: tuple) -> tuple[int, int]:
    """(params, MACs) of `gm` as `fold` would leave it."""
    small = prune(gm, inputs, "fold")
    return total_params(small), total_macs(small, inputs)


def prune_iteratively(gm: fx.GraphModule, example_inputs, options: PruneOptions | None = None, *, data: Iterable,
                      val_data: Iterable | None = None, importance_data: Iterable | None = None,
                      loss_fn: Callable | None = None, latency: LatencyTable | None = None,
                      test_data: Iterable | None = None, device: str | Runtime = "cpu", resume: dict | None = None,
                      on_keep: Callable[[dict], None] | None = None, progress: bool = True, **changes):
    """Repeat: prune `step` of the model's params (or MACs, or latency), retrain the scales; until `until`.
    `options` is a PruneOptions (or its fields as keywords).

    `gm` comes from a pipeline that ran decompose-conv and insert-scaling (it is not modified).
    `prune_what`: "bases" (prune-basis), "channels" (prune-channels), "joint" (prune-joint: bases
    and channels in one ranking, taylor only) or "double" (both, each taking half the step). `criterion`
    is the importance of both (taylor, or for bases energy/scale, for channels l1/l2/bn); taylor is
    computed on `importance_data` (default: `data`) and, with `momentum`, averaged across steps. With
    `distill` > 0 the retraining distils from the unpruned model. Each retraining is train_scaling with
    the options' epochs, lr, head_lr, optimizer, schedule and l1.
    With until='accuracy=A', a step holds where its val accuracy, less `margin` standard errors of its
    change from the start (paired_se), is at least A: many tries against one small val set otherwise
    keep the steps that pass by luck. A step that does not hold is retrained once more; if it is still
    below, it is undone and tried again at half the step, at most `backoffs` times in a row (then the
    run ends). After a step that holds, the step grows back by 1.5x up to `step`. `max_steps` counts tries.
    With until='latency=F' each step keeps 1 - `step` of the folded model's time measured with `latency`
    (a LatencyTable; by default the one cached for this device) until it takes at most F of the start's.
    `gm`, `example_inputs` and the batches run on `device` (a name or a Runtime).
    After each kept step (and the start) `on_keep(state)` gets the search's state; `resume=` that state
    continues the search from there, exactly as it would have gone on.
    Returns (pruned GraphModule, not yet folded; history: one dict per kept step with bases kept,
    params, MACs as fold will leave them (and latency_ms with until='latency=F'), the step size, val
    accuracy and its paired standard error `val_se`, and the accuracy on `test_data` where given:
    recorded, never used to decide). With until='accuracy=A' the last step that held is returned.
    """
    o = with_changes(options or PruneOptions(), changes, "prune_iteratively")
    runtime = as_runtime(device)
    inputs = runtime.inputs(as_inputs(example_inputs))
    key, goal = parse_until(o.until, val_data is not None)
    budget = {"macs": "target-macs", "latency": "target-latency"}.get(key, "target-params")
    timing = ({"latency": latency if latency is not None else LatencyTable(runtime.device)}  # timed where it runs
              if key == "latency" else {})
    step_text = lambda size: _step_pipeline(o.prune_what, o.criterion, budget, size, o.momentum)  # noqa: E731
    Pipeline.parse(step_text(o.step))  # a bad criterion fails here, before any work
    retraining = o.retraining()

    def record(i: int, model: fx.GraphModule, size: float) -> dict:
        params, macs = folded_size(model, inputs)
        first = state["history"][0] if state["history"] else {"params": params, "macs": macs}
        row = {"step": i, "step_size": size, "bases": sum(p.rank * p.groups for p in find_pairs(model)),
               "params": params, "macs": macs, "params_kept": params / first["params"],
               "macs_kept": macs / first["macs"]}
        if timing:  # the step's pass has just timed this architecture, folded; scales do not change it
            timed = history_of(model)[-1].stats.get("latency-ms-after") if i else None
            row["latency_ms"] = timed if timed is not None else folded_seconds(timing["latency"], model, inputs) * 1e3
            row["latency_kept"] = row["latency_ms"] / (state["history"][0] if state["history"] else row)["latency_ms"]
        if val_data is not None:
            right = hits(model, val_data, runtime)
            if state["start_hits"] is None:  # the starting model's: each step's change is paired with them
                state["start_hits"] = right
            row.update(val_accuracy=right.sum().item() / len(right), val_se=paired_se(state["start_hits"], right))
        return row

    def keep(row: dict, model: fx.GraphModule) -> None:
        if test_data is not None:
            right = hits(model, test_data, runtime)
            row["test_accuracy"] = right.sum().item() / len(right)
        state["gm"] = model
        state["history"].append(row)
        if on_keep is not None:
            on_keep(state)

    def holds(row: dict) -> bool:
        return distributed.from_rank0(key != "accuracy" or row["val_accuracy"] - o.margin * row["val_se"] >= goal)

    def retrain(model: fx.GraphModule) -> None:
        train_scaling(model, data, retraining, loss_fn=loss_fn, teacher=state["teacher"], device=runtime,
                      progress=False)

    if resume is None:
        gm = runtime.model(copy.deepcopy(gm))
        state = {"history": [], "size": o.step, "missed": 0, "tries": 0, "start_hits": None,
                 "teacher": prune(gm, inputs, "fold") if o.distill else None}
        keep(record(0, gm, 0.0), gm)
    else:
        state = dict(resume)
        state["history"] = list(state["history"])
        gm = state["gm"]
    bar = progress_bar(range(state["tries"] + 1, o.max_steps + 1), desc="prune", show=progress,
                       initial=state["tries"], total=o.max_steps)
    for tries in bar:
        last = state["history"][-1]
        if key != "accuracy" and last[f"{key}_kept"] <= goal:
            break
        state["tries"] = tries
        candidate = runtime.model(prune(gm, inputs, step_text(state["size"]),
                                        data=data if importance_data is None else importance_data,
                                        **({"loss_fn": loss_fn} if loss_fn else {}), **timing))
        retrain(candidate)
        row = record(len(state["history"]), candidate, state["size"])
        if row["bases"] == last["bases"] and row["params"] == last["params"]:
            break  # nothing left to prune
        if not holds(row):
            retrain(candidate)  # more retraining where accuracy dropped
            row = record(len(state["history"]), candidate, state["size"])
        if not holds(row):
            state["missed"] += 1
            if state["missed"] > o.backoffs:
                break
            state["size"] /= 2  # undo the step; try again with half of it
            bar.set_postfix(params=f"{last['params_kept']:.3f}", backoff=f"step {state['size']:.3g}")
            continue
        state["missed"] = 0
        state["size"] = min(o.step, state["size"] * 1.5)  # a step that held grows back towards `step`
        gm = candidate
        keep(row, gm)
        bar.set_postfix(params=f"{row['params_kept']:.3f}", acc=f"{row.get('val_accuracy', float('nan')):.3f}")
    bar.close()
    return gm, state["history"]
