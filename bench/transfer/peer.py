"""The peer: Torch-Pruning's MetaPruner (channel pruning), magnitude or Taylor importance, one shot,
no fine-tuning, its per-layer ratio bisected until the model meets a parameter budget."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F


def importance(name: str):
    import torch_pruning as tp

    if name == "magnitude":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.TaylorImportance()
    raise ValueError(f"unknown Torch-Pruning importance {name!r}: magnitude or taylor")


def tp_prune(model: torch.nn.Module, x: torch.Tensor, ratio: float, how: str, data: list) -> torch.nn.Module:
    """A pruned copy: every prunable layer but the classifier loses `ratio` of its channels."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    for p in pruned.parameters():  # Torch-Pruning builds its dependency graph from autograd
        p.requires_grad_(True)
    head = [m for m in pruned.modules() if isinstance(m, torch.nn.Linear)][-1:]
    pruner = tp.pruner.MetaPruner(pruned, x, importance=importance(how), pruning_ratio=ratio,
                                  ignored_layers=head)
    if how == "taylor":
        for inputs, targets in data:
            F.cross_entropy(pruned(inputs), targets).backward()
    pruner.step()
    return pruned.requires_grad_(False)


def at_budget(model: torch.nn.Module, x: torch.Tensor, keep: float, how: str, data: list,
              steps: int = 12) -> tuple[torch.nn.Module, float]:
    """(pruned model, ratio): the smallest channel ratio whose model keeps at most `keep` of the params."""
    total = sum(p.numel() for p in model.parameters())
    lo, hi, best = 0.0, 0.99, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        pruned = tp_prune(model, x, mid, how, data)
        if sum(p.numel() for p in pruned.parameters()) <= keep * total:
            hi, best = mid, (pruned, mid)
        else:
            lo = mid
    if best is None:
        best = (tp_prune(model, x, hi, how, data), hi)
    return best
