"""Data-driven importance of the basis scaling factors: first-order Taylor, (s_i * dL/ds_i)^2."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F

from fxprune.core import distributed
from fxprune.core.lowrank import Pair
from fxprune.core.smoothing import BASES, smoothed


def split_batch(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) from a batch given as a tuple or list whose first two items are those."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(f"a batch of data= must be (inputs, targets), got {type(batch).__name__}")


def taylor_scores(gm: fx.GraphModule, pairs: list[Pair], data: Iterable, loss_fn: Callable | None = None,
                  momentum: float | None = None) -> list[torch.Tensor]:
    """Per pair, (g, r): (s_i * dL/ds_i)^2 averaged over the batches of `data` (eval mode; under torchrun
    the gradient of each global batch, averaged across ranks, is what is squared); with
    `momentum`, blended with the estimate an earlier run left on the pair (core.smoothing)."""
    loss_fn = loss_fn or F.cross_entropy
    scales = [p.coef.scale for p in pairs]
    for s in scales:
        s.requires_grad_(True)
    totals = [torch.zeros_like(s, dtype=torch.float64) for s in scales]
    batches = 0
    with torch.enable_grad():
        for batch in data:
            x, y = split_batch(batch)
            grads = distributed.mean(list(torch.autograd.grad(loss_fn(gm(x), y), scales, allow_unused=True)))
            for t, s, g in zip(totals, scales, grads):
                if g is not None:
                    t += (s.detach() * g).double().pow(2)
            batches += 1
    if not batches:
        raise ValueError("data= yielded no batch")
    return [smoothed(p.coef, BASES, t / batches, momentum).view(p.groups, p.rank) for t, p in zip(totals, pairs)]
