"""Second moments of layer responses on data: what a data-aware basis (decompose-conv{basis=data}) is made from."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.fx as fx

from fxprune.analysis.importance import split_batch
from fxprune.core.lowrank import groups_of, is_conv


def response_moments(gm: fx.GraphModule, paths: list[str], data: Iterable) -> dict[str, torch.Tensor]:
    """Per layer path: E[y y^T] per group, (g, m, m) in float64, over every output position of every
    batch of `data` (inputs, targets), y the layer's output without its bias."""
    sums = {p: None for p in paths}
    counts = dict.fromkeys(paths, 0)

    def hook(path: str, layer: torch.nn.Module):
        def record(_module, _inputs, out):
            y = out.detach().double()
            y = y.movedim(1, -1).reshape(-1, y.shape[1]) if is_conv(layer) else y.reshape(-1, y.shape[-1])
            if layer.bias is not None:
                y = y - layer.bias.detach().double()
            y = y.view(len(y), groups_of(layer), -1).transpose(0, 1)  # (g, positions, m)
            moment = y.transpose(1, 2) @ y
            sums[path] = moment if sums[path] is None else sums[path] + moment
            counts[path] += y.shape[1]
        return record

    handles = [gm.get_submodule(p).register_forward_hook(hook(p, gm.get_submodule(p))) for p in paths]
    batches = 0
    try:
        with torch.no_grad():
            for batch in data:
                gm(split_batch(batch)[0])
                batches += 1
    finally:
        for h in handles:
            h.remove()
    if not batches:
        raise ValueError("data= yielded no batch")
    return {p: s / counts[p] for p, s in sums.items() if s is not None}
