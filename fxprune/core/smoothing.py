"""Taylor importance smoothed across pruning steps: a running average carried on the modules.

One batch of gradients is a noisy estimate of what removing a unit costs; Molchanov et al. (2019)
average it over steps with momentum 0.9. The running estimate of a unit lives on a module as a plain
attribute (in no state_dict, count or graph) aligned with the dimension pruning slices: the bases of a
pair on its BasisScalingConv (gathered by rebuild_pair with the scales), the channels of a group on
each of its members that owns those channels as outputs (sliced with the weights by channel removal).
So a unit keeps its history while others are removed around it; `fold` drops every estimate.
"""

from __future__ import annotations

import torch
from torch import nn

BASES = "fxprune_basis_taylor"  # on a BasisScalingConv: (g * r,), one per scale
CHANNELS = "fxprune_channel_taylor"  # on a channel group member: (positions,), one per output channel


def smoothed(module: nn.Module, key: str, new: torch.Tensor, momentum: float | None) -> torch.Tensor:
    """`new` blended with the estimate stored on `module` (momentum * old + (1 - momentum) * new; `new`
    alone where there is none yet), stored back. With momentum None: `new`, nothing stored."""
    if momentum is None:
        return new
    old = module.__dict__.get(key)
    value = new if old is None or old.shape != new.shape else momentum * old.to(new.device) + (1 - momentum) * new
    module.__dict__[key] = value
    return value


def stored(module: nn.Module, key: str) -> torch.Tensor | None:
    return module.__dict__.get(key)


def forget(gm: nn.Module) -> None:
    """Drop every running estimate (fold: the pruned model carries no pruning state)."""
    for m in gm.modules():
        m.__dict__.pop(BASES, None)
        m.__dict__.pop(CHANNELS, None)
