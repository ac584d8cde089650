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


BISECTIONS = 12  # halvings of the channel ratio per budget (bench.transfer.mnist --quick uses fewer)


def at_budget(model: torch.nn.Module, x: torch.Tensor, keep: float, how: str, data: list,
              steps: int = BISECTIONS) -> tuple[torch.nn.Module, float]:
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


def retrain_head(model: torch.nn.Module, train: list, epochs: int = 1, lr: float = 1e-2) -> None:
    """Train only the classifier (the last Linear), in eval mode: what fxprune's iterative arms retrain
    besides the basis scales, which a Torch-Pruning model has not got."""
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    params = list(head.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    model.eval()
    for _ in range(epochs):
        for inputs, targets in train:
            loss = F.cross_entropy(model(inputs), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for p in params:
        p.requires_grad_(False)


def iterative(model: torch.nn.Module, x: torch.Tensor, step: float, until: float, how: str, data: list,
              train: list, steps: int = BISECTIONS):
    """Torch-Pruning on fxprune's iterative schedule: prune to (1 - step)^k of the params (the ratio found
    in `steps` bisections), retrain the classifier one epoch, repeat until `until`. Yields (k, model) after
    each step."""
    total = sum(p.numel() for p in model.parameters())
    current, k = model, 0
    while sum(p.numel() for p in current.parameters()) > until * total:
        k += 1
        keep = (1 - step) ** k * total / sum(p.numel() for p in current.parameters())
        current, _ = at_budget(current, x, keep, how, data, steps)
        retrain_head(current, train)
        yield k, current
