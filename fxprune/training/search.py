"""The prune/retrain search. Descend: cut `step` of what is left along the importance ranking and retrain the
scales briefly at a high lr (it repairs a deep cut), until `patience` steps in a row miss the val floor, the
size goal is met or the steps run out. Then settle the deepest step: a longer retraining with the lr
decaying to 0. Where it holds, descend on from it (after a miss) or stop; where it does not, bisect with the
probes left: the descent steps between the deepest try that held and it, then cuts halfway (in params).

A descent step is judged on val alone (it only steers); a settled try, which is what the search returns,
must also keep `agreement` of the transferred model's predictions on `agreement_data` (the train images:
many more than val, and the best predictor of the change on new data, bench/transfer/results/depth.md),
and with that evidence val may sit one standard error under the floor. At most `max_steps` + `probes` tries.
Under torchrun every rank runs the same search: importance is averaged across ranks inside the passes and
rank 0's verdict on every try is broadcast, so every rank cuts the same channels.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
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
from fxprune.training.scales import hits, paired_se, top1, train_scaling


MIN_REFINEMENT = 0.25
"""The finest cut the bisection tries between two settled tries, as a share of `step`: finer cuts change
too few params to move the decision statistics."""


def chosen_row(history: list[dict]) -> dict:
    """The row of the model a search returned: the last one on its path."""
    return next(r for r in reversed(history) if r["kept"])


@dataclass
class Search:
    model: fx.GraphModule  # the chosen model, not yet folded
    history: list[dict]  # one row per try in order (the start, descent steps, settle probes); "kept" marks the path
    stop: str  # why the descent ended

    @property
    def chosen(self) -> dict:
        return chosen_row(self.history)

    def summary(self) -> str:
        tries = sum(r["phase"] != "start" for r in self.history)
        probes = sum(r["phase"] == "settle" for r in self.history)
        return f"{tries} tries ({tries - probes} descent steps, {probes} settling); the descent stopped: {self.stop}"


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
                      test_data: Iterable | None = None, agreement_data: Iterable | None = None,
                      device: str | Runtime = "cpu", resume: dict | None = None,
                      on_keep: Callable[[dict], None] | None = None, progress: bool = True, **changes) -> Search:
    """Descend, then settle (the module docstring), by `options` (a PruneOptions, or its fields as keywords).

    `gm` comes from a pipeline that ran decompose-conv and insert-scaling (it is not modified).
    `prune_what`: "bases", "channels", "joint" (bases and channels in one Taylor ranking) or "double"
    (both, each half the step); `criterion` ranks them (taylor on `importance_data`, default `data`).
    until='accuracy=A': a try holds where its val accuracy, less `margin` paired standard errors of its
    change, is at least A; a settled try with `agreement_data` (batches in a fixed order, labels unread)
    also keeps `agreement` of the start's top-1 classes on them, and its val guard is one standard error
    looser. params=F, macs=F, latency=F (timed with `latency`, by default this device's table): the
    descent stops at that size and its last model is settled, no decision taken. `test_data` is scored at
    every try and decides nothing. After every try `on_keep(state)` gets the state that `resume=` goes on
    from. Returns a Search: the chosen model (the start where no try held) and every try's row.
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
    agreeing = agreement_data is not None and o.agreement > 0 and key == "accuracy"

    def record(model: fx.GraphModule, phase: str, step: int, size: tuple[int, int] | None = None) -> dict:
        params, macs = size or folded_size(model, inputs)  # `size`: known already, the fold is not repeated
        first = state["history"][0] if state["history"] else {"params": params, "macs": macs}
        row = {"try": len(state["history"]), "phase": phase, "step": step,
               "bases": sum(p.rank * p.groups for p in find_pairs(model)), "params": params, "macs": macs,
               "params_kept": params / first["params"], "macs_kept": macs / first["macs"], "kept": phase == "start"}
        if timing:  # the step's pass has just timed this architecture, folded; scales do not change it
            timed = history_of(model)[-1].stats.get("latency-ms-after") if phase == "descent" else None
            row["latency_ms"] = timed if timed is not None else folded_seconds(timing["latency"], model, inputs) * 1e3
            row["latency_kept"] = row["latency_ms"] / (state["history"][0] if state["history"] else row)["latency_ms"]
        if val_data is not None:
            right = hits(model, val_data, runtime)
            if state["start_hits"] is None:  # the starting model's: each try's change is paired with them
                state["start_hits"] = right
            row.update(val_accuracy=right.sum().item() / len(right), val_se=paired_se(state["start_hits"], right))
        if test_data is not None:
            right = hits(model, test_data, runtime)
            row["test_accuracy"] = right.sum().item() / len(right)
        if agreeing and phase != "descent":
            classes = top1(model, agreement_data, runtime)[0]
            if state.get("start_top1") is None:
                state["start_top1"] = classes
            row["agreement"] = (classes == state["start_top1"]).sum().item() / len(classes)
        row["holds"] = distributed.from_rank0(key != "accuracy" or (
            row["val_accuracy"] - (o.margin - 1) * row["val_se"] >= goal and row["agreement"] >= o.agreement
            if phase == "settle" and agreeing else row["val_accuracy"] - o.margin * row["val_se"] >= goal))
        return row

    def retrain(model: fx.GraphModule, settling: bool) -> None:
        train_scaling(model, data, o.settling() if settling else o.retraining(), loss_fn=loss_fn,
                      teacher=state["teacher"], device=runtime, progress=False)

    def saved(row: dict) -> None:
        state["history"].append(row)
        if on_keep is not None:
            on_keep(state)

    def settle(k: float, descends: bool = False, size: tuple[int, int] | None = None) -> bool:
        """Settle step k (a halfway cut: of `size`); where it holds it is the best so far (and, with
        `descends`, where the descent goes on)."""
        model = runtime.model(copy.deepcopy(state["models"][k]))
        retrain(model, settling=True)
        row = record(model, "settle", k, size or _step_size(state, k))
        row["descended"] = row["holds"] and descends
        if row["holds"]:
            if k != int(k):  # a refinement: cut from the model at lo, which the path now goes through
                state["history"][state["best"]]["descended"] = True
            state["lo"], state["best"], state["models"][k], state["misses"] = k, row["try"], model, 0
            for j in state["models"]:
                if j < k:  # never tried again: the bisection stays above lo
                    state["models"][j] = None
        else:
            state["hi"] = k
        bar.update()
        saved(row)
        return row["holds"]

    def cut(model: fx.GraphModule, size: float) -> fx.GraphModule:
        return runtime.model(prune(model, inputs, step_text(size),
                                   data=data if importance_data is None else importance_data,
                                   **({"loss_fn": loss_fn} if loss_fn else {}), **timing))

    if resume is None:
        gm = runtime.model(copy.deepcopy(gm))
        state = {"history": [], "models": {0: gm}, "misses": 0, "stop": None, "start_hits": None, "start_top1": None,
                 "best": 0, "lo": 0, "hi": None, "teacher": prune(gm, inputs, "fold") if o.distill else None}
        saved(record(gm, "start", 0))
    else:
        state = {**resume, "history": list(resume["history"]), "models": dict(resume["models"])}
    bar = progress_bar(None, total=o.max_steps + o.probes, desc="prune", show=progress,
                       initial=len(state["history"]) - 1)
    while state["hi"] is None:  # descend; where the descent pauses, settle its deepest step
        deepest = max(state["models"])
        last = state["history"][_row_of(state, deepest)]
        probes = sum(r["phase"] == "settle" for r in state["history"])
        pause = (f"{o.until} reached" if key != "accuracy" and last[f"{key}_kept"] <= goal * (1 + 1e-9) else
                 f"{o.max_steps} descent steps used (max_steps)" if deepest >= o.max_steps else
                 f"{o.patience} steps in a row below the floor" if state["misses"] >= o.patience else
                 "nothing left to cut" if state.get("empty") else None)
        if pause is not None:
            if deepest == state["lo"] or probes >= o.probes:
                state["stop"] = pause if deepest == state["lo"] else f"{o.probes} settling tries used (probes)"
                break
            descends = key == "accuracy" and pause.endswith("below the floor")
            if not settle(deepest, descends):
                state["stop"] = f"step {deepest} stayed below the floor after settling"
            elif not descends:
                state["stop"] = pause
                break
            continue
        size = o.step if key == "accuracy" else min(o.step, 1 - goal / last[f"{key}_kept"])
        candidate = cut(state["models"][deepest], size)
        retrain(candidate, settling=False)
        row = record(candidate, "descent", deepest + 1)
        bar.update()
        if row["bases"] == last["bases"] and row["params"] == last["params"]:
            state["empty"] = True
            continue
        state["misses"] = 0 if row["holds"] else state["misses"] + 1
        state["models"][deepest + 1] = candidate
        bar.set_postfix(params=f"{row['params_kept']:.3f}", acc=f"{row.get('val_accuracy', float('nan')):.3f}",
                        refresh=False)
        saved(row)
    while state["hi"] is not None and sum(r["phase"] == "settle" for r in state["history"]) < o.probes:
        lo, hi = state["lo"], state["hi"]  # bisect below a step that failed: first its descent steps,
        inner = sorted(k for k in state["models"] if lo < k < hi)
        if inner:
            settle(inner[(len(inner) - 1) // 2])
            continue
        params = {r["step"]: r["params"] for r in state["history"] if r["phase"] != "descent"}
        size = 1 - (params[hi] / params[lo]) ** 0.5  # then cuts from lo to halfway to hi in params
        candidate = cut(state["models"][lo], size) if size >= o.step * MIN_REFINEMENT else None
        made = folded_size(candidate, inputs) if candidate is not None else None
        if made is None or not params[hi] < made[0] < params[lo]:
            break  # too fine a cut to move the statistics, or one the layers' widths cannot make
        state["models"][(lo + hi) / 2] = candidate
        settle((lo + hi) / 2, size=made)
    bar.close()
    best = state["history"][state["best"]]
    for row in state["history"]:  # the path to the chosen model
        row["kept"] = row is best or row["phase"] == "start" or row["step"] <= best["step"] and (
            row["phase"] == "descent" or row["descended"])
    model = state["models"][best["step"]]
    return Search(model, state["history"], state["stop"])


def _step_size(state: dict, step: int) -> tuple[int, int]:
    """(params, MACs) of descent step `step`, as its row recorded them: settling retrains, it cuts nothing."""
    row = state["history"][_row_of(state, step)]
    return row["params"], row["macs"]


def _row_of(state: dict, step: int) -> int:
    """The history index of descent step `step` (0: the start)."""
    return next(i for i, r in enumerate(state["history"]) if r["step"] == step and r["phase"] in ("start", "descent"))
