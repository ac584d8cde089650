"""A training view of a decomposed model that runs a pair as one layer where that costs less.

With its weights frozen, a pair costs a forward and an input gradient through both halves:
2 P r (m + n) multiply-adds per group for P output positions. Run as one layer whose weight
coef diag(s) basis is formed per call, it costs 2 P m n, P m n more for the weight gradient that
reaches the scales, and 3 m r n to form the weight and its gradient. Full-rank 1x1 layers on large
maps are cheaper merged; 3x3 layers (n = 9 in) and small maps are not, so the choice is made per call
from the input's shape. The view shares every module and parameter with the model it was made from:
training it trains that model.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxprune.core.lowrank import find_pairs, is_conv, same_format


class MergedPair(nn.Module):
    """A pair (basis, coef) computed either as its two layers or as one layer with weight coef diag(s) basis,
    whichever costs fewer multiply-adds for this input (`cost`)."""

    def __init__(self, basis: nn.Module, coef: nn.Module):
        super().__init__()
        self.basis, self.coef = basis, coef

    def cost(self, x: torch.Tensor) -> tuple[int, int]:
        """(as a pair, merged): multiply-adds of forward and backward for input `x`."""
        w = self.basis.weight
        g = getattr(self.basis, "groups", 1)
        r, m, n = w.shape[0] // g, self.coef.weight.shape[0] // g, math.prod(w.shape[1:])
        channels = x.shape[x.dim() - w.dim() + 1] if is_conv(self.basis) else x.shape[-1]
        positions = x.numel() // max(channels, 1) // math.prod(getattr(self.basis, "stride", (1,)))
        scale = getattr(self.coef, "scale", None)
        weight_grad = scale is not None and scale.requires_grad
        pair = 2 * positions * g * r * (m + n)
        merged = (2 + weight_grad) * positions * g * m * n + 3 * g * m * r * n
        return pair, merged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pair, merged = self.cost(x)
        if pair <= merged:
            return self.coef(self.basis(x))
        g = getattr(self.basis, "groups", 1)
        basis = self.basis.weight.reshape(g, -1, math.prod(self.basis.weight.shape[1:]))
        coef = self.coef.weight.reshape(g, self.coef.weight.shape[0] // g, -1)
        scale = getattr(self.coef, "scale", None)
        if scale is not None:
            coef = coef * scale.view(g, 1, -1)
        weight = torch.bmm(coef, basis).reshape(-1, *self.basis.weight.shape[1:])
        if not is_conv(self.basis):
            return F.linear(x, weight, self.coef.bias)
        return self.basis._conv_forward(x, same_format(weight, self.basis.weight), self.coef.bias)


def merged_view(gm: fx.GraphModule) -> fx.GraphModule:
    """A GraphModule computing `gm` with every pair run by a MergedPair; `gm` itself is unchanged (the
    view holds its modules, not copies). `gm` where it has no pairs."""
    pairs = [p for p in find_pairs(gm) if list(p.basis_node.users) == [p.coef_node]]
    if not pairs:
        return gm
    graph, nodes = fx.Graph(), {}
    graph.output(graph.graph_copy(gm.graph, nodes))
    view = fx.GraphModule(gm, graph)  # the copied graph over the same modules
    for i, p in enumerate(pairs):
        name = f"fxprune_merged_{i}"
        view.add_submodule(name, MergedPair(p.basis, p.coef))
        basis, coef = nodes[p.basis_node], nodes[p.coef_node]
        with view.graph.inserting_after(coef):
            merged = view.graph.call_module(name, basis.args, basis.kwargs)
        coef.replace_all_uses_with(merged)
        view.graph.erase_node(coef)
        view.graph.erase_node(basis)
    view.recompile()
    return view
