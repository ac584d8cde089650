"""Transfer learning on the scaling factors: train_scaling, and how a model is scored on data.

Training runs in eval mode: BatchNorm keeps its running statistics and dropout is off, so the only
thing that changes is what insert-scaling left trainable (the scales and the head). Under torchrun
the model is wrapped in DistributedDataParallel: each rank trains on its share of every batch.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from fxprune.core import distributed
from fxprune.core.progress import bar as progress_bar
from fxprune.nn import BasisScalingConv, ChannelScaling
from fxprune.training.options import TrainOptions, with_changes
from fxprune.training.runtime import Runtime, as_runtime

TEMPERATURE = 4.0  # softening of both models' logits in distillation


def evaluate(gm: torch.nn.Module, data: Iterable, loss_fn: Callable | None = None,
             device: str | Runtime = "cpu") -> dict[str, float]:
    """Mean loss and top-1 accuracy over `data` (batches of (inputs, targets)); `gm` on `device`'s device."""
    runtime = as_runtime(device)
    loss_fn = loss_fn or F.cross_entropy
    total = correct = 0
    loss = 0.0
    with torch.no_grad(), runtime.autocast():
        for batch in data:
            x, y = runtime.batch(batch)
            out = gm(x).float()
            loss += loss_fn(out, y).item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
    return {"loss": loss / max(total, 1), "accuracy": correct / max(total, 1)}


def top1(gm: torch.nn.Module, data: Iterable, device: str | Runtime = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Per example of `data` (batches of (inputs, targets)), in order: (`gm`'s top-1 class, the target)."""
    runtime = as_runtime(device)
    with torch.no_grad(), runtime.autocast():
        pairs = [(gm(x).argmax(1).cpu(), y.cpu()) for x, y in map(runtime.batch, data)]
    return torch.cat([c for c, _ in pairs]), torch.cat([y for _, y in pairs])


def hits(gm: torch.nn.Module, data: Iterable, device: str | Runtime = "cpu") -> torch.Tensor:
    """Per example of `data`, in order: whether `gm`'s top-1 class is the target."""
    classes, targets = top1(gm, data, device)
    return classes == targets


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


def train_scaling(gm: fx.GraphModule, data: Iterable, options: TrainOptions | None = None, *,
                  val_data: Iterable | None = None, loss_fn: Callable | None = None,
                  teacher: torch.nn.Module | None = None, device: str | Runtime = "cpu", progress: bool = True,
                  **changes) -> list[dict[str, float]]:
    """Train what insert-scaling / insert-channel-scaling left trainable, by `options` (TrainOptions; or
    its fields as keywords): `l1` adds l1 * sum|s| over every scale (of bases and of channels) to drive
    unneeded ones to 0; with a `teacher` (e.g. the unpruned model) the objective is distillation_loss
    with weight `distill` (the reported loss stays the task loss). `schedule="cosine"` decays lr to 0
    over the run (a step per batch, or per epoch where `data` has no len()): at a constant lr Adam moves
    every scale by about lr per step whatever its gradient, so where the model ends depends on rounding
    and data order (bench/transfer/results/stability.md). `head_lr`: the lr of everything trainable that
    is not a scale (the head); 0 keeps it. `gm` must be on `device`'s device (Runtime: also autocast and
    memory format); the scales, their gradients and Adam's state stay float32.

    Returns one dict per epoch: train loss/accuracy and, with `val_data`, val loss/accuracy.
    """
    o = with_changes(options or TrainOptions(), changes, "train_scaling")
    runtime = as_runtime(device)
    params = [p for p in gm.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train_scaling: nothing requires grad; run the 'decompose-conv,insert-scaling' "
                         "or 'insert-channel-scaling' pipeline first")
    where = params[0].device
    if where.type != runtime.device.type or (where.index or 0) != (runtime.device.index or 0):
        raise ValueError(f"train_scaling: the model is on {where} and device is {runtime.device}: "
                         f"move it there first (gm.to('{runtime.device}'))")
    scales = [m.scale if isinstance(m, BasisScalingConv) else m.weight for m in gm.modules()
              if isinstance(m, (BasisScalingConv, ChannelScaling))]
    if o.head_lr is not None:
        ids = {id(s) for s in scales}
        groups = [{"params": [p for p in params if id(p) in ids]},
                  {"params": [p for p in params if id(p) not in ids], "lr": o.head_lr}]
        params = [g for g in groups if g["params"]]
    opt = ({"adam": torch.optim.Adam, "radam": torch.optim.RAdam}[o.optimizer](params, lr=o.lr)
           if o.optimizer != "sgd" else torch.optim.SGD(params, lr=o.lr, momentum=0.9))
    per_batch = hasattr(data, "__len__")
    decay = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(o.epochs * len(data) if per_batch else o.epochs, 1))
             if o.schedule == "cosine" else None)
    scaler = runtime.scaler()
    loss_fn = loss_fn or F.cross_entropy
    gm.eval()
    model = gm
    if distributed.active():  # each rank's gradients averaged with the others' before every step
        model = DistributedDataParallel(gm, device_ids=[runtime.device] if runtime.device.type == "cuda" else None,
                                        broadcast_buffers=False)
    history = []
    for epoch in range(1, o.epochs + 1):
        seen = correct = 0
        total_loss = 0.0
        bar = progress_bar(data, desc=f"epoch {epoch}/{o.epochs}", show=progress, leave=True)
        for batch in bar:
            x, y = runtime.batch(batch)
            with runtime.autocast():
                out = model(x).float()
                loss = loss_fn(out, y)
                objective = loss
                if teacher is not None:
                    with torch.no_grad():
                        soft_targets = teacher(x).float()
                    objective = distillation_loss(out, soft_targets, loss, o.distill)
            if o.l1:
                objective = objective + o.l1 * sum(s.abs().sum() for s in scales)
            opt.zero_grad(set_to_none=True)
            scaler.scale(objective).backward()
            scaler.step(opt)
            scaler.update()
            if decay is not None and per_batch:
                decay.step()
            total_loss += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        row = {"epoch": epoch, "train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1)}
        if val_data is not None:
            val = evaluate(gm, val_data, loss_fn, runtime)
            row.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", acc=f"{row['train_accuracy']:.3f}",
                            val_acc=f"{val['accuracy']:.3f}")
        bar.close()
        history.append(row)
        if decay is not None and not per_batch:
            decay.step()
    return history
