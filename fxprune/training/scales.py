"""Transfer learning on the scaling factors: train_scaling and the iterative prune/retrain schedule.

Training runs in eval mode: BatchNorm keeps its running statistics and dropout is off, so the only
thing that changes is what insert-scaling left trainable (the scales and the head).
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F

from fxprune.analysis.counting import total_macs, total_params
from fxprune.core.api import as_inputs, prune
from fxprune.analysis.importance import split_batch
from fxprune.analysis.latency import LatencyTable, folded_seconds, table_for
from fxprune.core.lowrank import find_pairs
from fxprune.core.manager import history as history_of
from fxprune.nn import BasisScalingConv, ChannelScaling
from fxprune.core.pipeline import Pipeline
from fxprune.core.progress import bar as progress_bar

TEMPERATURE = 4.0  # softening of both models' logits in distillation


def evaluate(gm: torch.nn.Module, data: Iterable, loss_fn: Callable | None = None) -> dict[str, float]:
    """Mean loss and top-1 accuracy over `data` (batches of (inputs, targets))."""
    loss_fn = loss_fn or F.cross_entropy
    total = correct = 0
    loss = 0.0
    with torch.no_grad():
        for batch in data:
            x, y = split_batch(batch)
            out = gm(x)
            loss += loss_fn(out, y).item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
    return {"loss": loss / max(total, 1), "accuracy": correct / max(total, 1)}


def hits(gm: torch.nn.Module, data: Iterable) -> torch.Tensor:
    """Per example of `data` (batches of (inputs, targets)), in order: whether `gm`'s top-1 class is the target."""
    with torch.no_grad():
        return torch.cat([gm(x).argmax(1) == y for x, y in map(split_batch, data)])


def paired_se(before: torch.Tensor, after: torch.Tensor) -> float:
    """Standard error of the change in accuracy from `before` to `after` (hits of two models on the same
    examples): sqrt(discordant - (gained - lost)^2 / n) / n, the examples that changed carrying all of it."""
    n = len(before)
    gained, lost = int((after & ~before).sum()), int((before & ~after).sum())
    return max(gained + lost - (gained - lost) ** 2 / n, 0.0) ** 0.5 / n


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, hard: torch.Tensor, weight: float,
                      temperature: float = TEMPERATURE) -> torch.Tensor:
    """(1 - weight) * `hard` (the task loss) + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))
    (Hinton et al. 2015: T^2 keeps the soft term's gradients on the hard term's scale)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True,
                    reduction="batchmean") * t * t
    return (1 - weight) * hard + weight * soft


def train_scaling(gm: fx.GraphModule, data: Iterable, *, epochs: int = 1, lr: float = 1e-2,
                  optimizer: str = "adam", loss_fn: Callable | None = None, val_data: Iterable | None = None,
                  l1: float = 0.0, teacher: torch.nn.Module | None = None, distill: float = 0.5,
                  schedule: str = "cosine", head_lr: float | None = None,
                  progress: bool = True) -> list[dict[str, float]]:
    """Train what insert-scaling / insert-channel-scaling left trainable; `l1` adds l1 * sum|s| over
    every scale (of bases and of channels) to drive unneeded ones to 0. With a `teacher` (e.g. the
    unpruned model), the objective is distillation_loss with weight `distill` (no weight of either
    model changes but the scales and head of `gm`); the reported loss stays the task loss.
    `schedule="cosine"` decays lr to 0 over the run (torch's CosineAnnealingLR, a step per batch, or per
    epoch where `data` has no len()), "constant" keeps it: Adam moves every scale by about lr per step
    whatever its gradient, so at a constant lr where the model ends depends on rounding and data order
    (bench/transfer/results/stability.md). `optimizer`: "adam", "radam" (torch's RAdam: plain gradient
    steps until Adam's variance estimate is trustworthy) or "sgd" (momentum 0.9). `head_lr`: the lr of
    everything trainable that is not a scale (the head), where it should differ from `lr`; 0 keeps it.

    Returns one dict per epoch: train loss/accuracy and, with `val_data`, val loss/accuracy.
    """
    params = [p for p in gm.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train_scaling: nothing requires grad; run the 'decompose-conv,insert-scaling' "
                         "or 'insert-channel-scaling' pipeline first")
    if optimizer not in ("adam", "radam", "sgd"):
        raise ValueError(f"train_scaling: optimizer must be 'adam', 'radam' or 'sgd', got {optimizer!r}")
    if not 0 <= distill <= 1:
        raise ValueError(f"train_scaling: distill={distill} is the weight of the teacher's term, in [0, 1]")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"train_scaling: schedule must be 'constant' or 'cosine', got {schedule!r}")
    if head_lr is not None and not head_lr >= 0:
        raise ValueError(f"train_scaling: head_lr={head_lr} is the lr of the head (what is trainable besides the "
                         "scales): give a value >= 0 (0 keeps the head as it is) or None for lr")
    scales = [m.scale if isinstance(m, BasisScalingConv) else m.weight for m in gm.modules()
              if isinstance(m, (BasisScalingConv, ChannelScaling))]
    if head_lr is not None:
        ids = {id(s) for s in scales}
        groups = [{"params": [p for p in params if id(p) in ids]},
                  {"params": [p for p in params if id(p) not in ids], "lr": head_lr}]
        params = [g for g in groups if g["params"]]
    opt = ({"adam": torch.optim.Adam, "radam": torch.optim.RAdam}[optimizer](params, lr=lr) if optimizer != "sgd"
           else torch.optim.SGD(params, lr=lr, momentum=0.9))
    per_batch = hasattr(data, "__len__")
    decay = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(data) if per_batch else epochs)
             if schedule == "cosine" else None)
    loss_fn = loss_fn or F.cross_entropy
    gm.eval()
    history = []
    for epoch in range(1, epochs + 1):
        seen = correct = 0
        total_loss = 0.0
        bar = progress_bar(data, desc=f"epoch {epoch}/{epochs}", show=progress, leave=True)
        for batch in bar:
            x, y = split_batch(batch)
            out = gm(x)
            loss = loss_fn(out, y)
            objective = loss
            if teacher is not None:
                with torch.no_grad():
                    soft_targets = teacher(x)
                objective = distillation_loss(out, soft_targets, loss, distill)
            if l1:
                objective = objective + l1 * sum(s.abs().sum() for s in scales)
            opt.zero_grad(set_to_none=True)
            objective.backward()
            opt.step()
            if decay is not None and per_batch:
                decay.step()
            total_loss += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        row = {"epoch": epoch, "train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1)}
        if val_data is not None:
            val = evaluate(gm, val_data, loss_fn)
            row.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row['train_accuracy']:.3f}",
                            val_acc=f"{val['accuracy']:.3f}")
        bar.close()
        history.append(row)
        if decay is not None and not per_batch:
            decay.step()
    return history


def _parse_until(until: str, has_val: bool) -> tuple[str, float]:
    key, _, value = until.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if key not in ("params", "macs", "latency", "accuracy") or not 0 < number <= 1:
        raise ValueError(f"until={until!r}: write params=F, macs=F or latency=F (fraction of the model to keep) or "
                         "accuracy=A (stop before val accuracy falls below A), with F, A in (0, 1]")
    if key == "accuracy" and not has_val:
        raise ValueError("until='accuracy=...' needs val_data")
    return key, number


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


def prune_iteratively(gm: fx.GraphModule, example_inputs, *, data: Iterable, val_data: Iterable | None = None,
                      criterion: str = "taylor", prune_what: str = "bases", step: float = 0.05,
                      until: str = "params=0.5", epochs: int = 1, lr: float = 1e-2, l1: float = 0.0,
                      max_steps: int = 50, importance_data: Iterable | None = None,
                      loss_fn: Callable | None = None, backoffs: int = 3, momentum: float | None = None,
                      distill: float = 0.0, latency: LatencyTable | None = None, schedule: str = "cosine",
                      margin: float = 0.0, optimizer: str = "adam", head_lr: float | None = None,
                      test_data: Iterable | None = None, progress: bool = True):
    """Repeat: prune `step` of the model's params (or MACs, or latency), retrain the scales; until `until`.

    `gm` comes from a pipeline that ran decompose-conv and insert-scaling (it is not modified).
    `prune_what`: "bases" (prune-basis), "channels" (prune-channels), "joint" (prune-joint: bases
    and channels in one ranking, taylor only) or "double" (both, each taking half the step). `criterion` is the importance of both (taylor, or for bases energy/scale,
    for channels l1/l2/bn); taylor is computed on `importance_data` (default: `data`) and, with
    `momentum`, averaged across steps (momentum * previous + (1 - momentum) * this step's). With
    `distill` > 0 the retraining distils from the unpruned model (train_scaling's teacher, that weight).
    Each retraining runs train_scaling with `optimizer`, `schedule` (cosine: lr decays to 0 within it)
    and `head_lr` (the head's lr in it; None: `lr`).
    With until='accuracy=A', a step holds where its val accuracy, less `margin` standard errors of its
    change from the start (paired, over the val examples that changed: `paired_se`), is at least A: many
    tries against one small val set otherwise keep the steps that pass by luck. A step that does not
    hold is retrained `epochs` more;
    if it is still below, it is undone and tried again at half the step, at most `backoffs` times
    in a row (then the run ends): one noisy step does not end the run. After a step that holds, the
    step grows back by 1.5x up to `step`. `max_steps` counts tries.
    With until='latency=F' each step keeps 1 - `step` of the model's measured time (the passes'
    target-latency: the model folded, on `example_inputs`, timed with `latency`, a LatencyTable; by
    default the one cached for this device) until the folded model takes at most F of the time it
    took at the start.
    Returns (pruned GraphModule, not yet folded; history: one dict per kept step with bases kept,
    params, MACs as fold will leave them (and latency_ms, measured, with until='latency=F'), the step
    size, val accuracy and its paired standard error `val_se`, and the accuracy on `test_data` where
    given: recorded, never used to decide). With until='accuracy=A' the last step that held is returned.
    """
    inputs = as_inputs(example_inputs)
    key, goal = _parse_until(until, val_data is not None)
    if not 0 < step < 1:
        raise ValueError(f"step={step}: the share of the model pruned per step must be in (0, 1)")
    budget = {"macs": "target-macs", "latency": "target-latency"}.get(key, "target-params")
    timing = {"latency": table_for(latency, gm)} if key == "latency" else {}
    Pipeline.parse(_step_pipeline(prune_what, criterion, budget, step, momentum))  # a bad criterion fails here, before any work
    gm = copy.deepcopy(gm)

    def record(i: int, model: fx.GraphModule, size: float) -> dict:
        params, macs = folded_size(model, inputs)
        first = history[0] if history else {"params": params, "macs": macs}
        row = {"step": i, "step_size": size, "bases": sum(p.rank * p.groups for p in find_pairs(model)),
               "params": params, "macs": macs, "params_kept": params / first["params"],
               "macs_kept": macs / first["macs"]}
        if timing:  # the step's pass has just timed this architecture, folded; scales do not change it
            timed = history_of(model)[-1].stats.get("latency-ms-after") if i else None
            row["latency_ms"] = timed if timed is not None else folded_seconds(timing["latency"], model, inputs) * 1e3
            row["latency_kept"] = row["latency_ms"] / (history[0] if history else row)["latency_ms"]
        if val_data is not None:
            right = hits(model, val_data)
            start.setdefault("val", right)
            row.update(val_accuracy=right.sum().item() / len(right), val_se=paired_se(start["val"], right))
        return row

    def keep(row: dict, model: fx.GraphModule) -> None:
        if test_data is not None:
            right = hits(model, test_data)
            row["test_accuracy"] = right.sum().item() / len(right)
        history.append(row)

    def holds(row: dict) -> bool:
        return key != "accuracy" or row["val_accuracy"] - margin * row["val_se"] >= goal

    teacher = prune(gm, inputs, "fold") if distill else None

    def retrain(model: fx.GraphModule) -> None:
        train_scaling(model, data, epochs=epochs, lr=lr, optimizer=optimizer, loss_fn=loss_fn, l1=l1, teacher=teacher,
                      distill=distill, schedule=schedule, head_lr=head_lr, progress=False)

    history: list[dict] = []
    start: dict[str, torch.Tensor] = {}  # the starting model's val hits, which each step's change is paired with
    keep(record(0, gm, 0.0), gm)
    size, missed = step, 0
    bar = progress_bar(range(1, max_steps + 1), desc="prune", show=progress)
    for _ in bar:
        last = history[-1]
        if key != "accuracy" and last[f"{key}_kept"] <= goal:
            break
        candidate = prune(gm, inputs, _step_pipeline(prune_what, criterion, budget, size, momentum),
                          data=data if importance_data is None else importance_data,
                          **({"loss_fn": loss_fn} if loss_fn else {}), **timing)
        retrain(candidate)
        row = record(len(history), candidate, size)
        if row["bases"] == last["bases"] and row["params"] == last["params"]:
            break  # nothing left to prune
        if not holds(row):
            retrain(candidate)  # more retraining where accuracy dropped
            row = record(len(history), candidate, size)
        if not holds(row):
            missed += 1
            if missed > backoffs:
                break
            size /= 2  # undo the step; try again with half of it
            bar.set_postfix(params=f"{last['params_kept']:.3f}", backoff=f"step {size:.3g}")
            continue
        missed = 0
        size = min(step, size * 1.5)  # a step that held grows back towards `step`
        gm = candidate
        keep(row, gm)
        bar.set_postfix(params=f"{row['params_kept']:.3f}", acc=f"{row.get('val_accuracy', float('nan')):.3f}")
    bar.close()
    return gm, history
