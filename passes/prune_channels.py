"""prune-channels: remove whole channels, every coupled layer at once (double pruning)."""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Literal

import torch.fx as fx

from fxprune.analysis.channels import (ChannelGraph, ChannelGroup, analyse, bn_scale, channel_scale, kept_shares,
                                       macs_after, magnitude, params_after, remove, taylor)
from fxprune.analysis.counting import node_macs, total_macs
from fxprune.analysis.latency import first_fit, measured_prefix, rest_and_folded, table_for
from fxprune.analysis.layer_shapes import folded_layers
from fxprune.core.pass_base import FxPass, PassContext, PassResult, option, register

DEFAULT_RATIO = 0.3


@register
@dataclass(frozen=True)
class PruneChannels(FxPass):
    """Remove whole channels. The analysis (fxprune.analysis.channels) couples the channels of layers joined
    by a residual add, a concat, a depthwise conv, a norm, an SE gate or a flatten into one group, removed
    together; any op it does not understand keeps its group whole (`fxprune groups MODEL` says why).
    The model's outputs keep their size.

    Importance of a channel, summed over its layers: l1/l2 (weight norms, each layer's divided by their
    mean), bn (|gamma|), scale (|s| of insert-channel-scaling's scales), taylor ((sum of w*dL/dw)^2 over
    `data=`). `ratio`: each group keeps floor((1 - ratio) * n) of its n channels (Torch-Pruning's
    rounding). `target-params` / `target-macs` / `target-latency`: the least important channels of the
    whole model go until that fraction is left, counted as `fold` will leave the model; latency is
    measured on the example inputs (a LatencyTable's prediction bounds a bisection on folded copies). A
    group keeps at least one channel, with `round-to=N` a multiple of N. Attention (`heads`): whole heads
    go, or (dim) every head loses the same positions of its head_dim.
    """

    name = "prune-channels"
    summary = "remove whole channels of coupled layers (residuals, concat, depthwise, BN, SE, flatten)"
    lossless = False
    criterion: Literal["l1", "l2", "bn", "scale", "taylor"] = option(
        "l2", "importance: l1 or l2 (weight norms), bn (|gamma|), scale (|s| of channel scales), "
              "taylor ((w*dL/dw)^2, needs data=)")
    ratio: float | None = option(None, f"share of each group's channels to remove (at least; floor((1-ratio)*n) "
                                       f"kept), in [0, 1); {DEFAULT_RATIO} if no target")
    target_params: float | None = option(None, "global budget: fraction of the model's params to keep")
    target_macs: float | None = option(None, "global budget: fraction of the model's MACs to keep")
    target_latency: float | None = option(None, "global budget: fraction of the model's measured latency to keep")
    round_to: int = option(1, "keep a multiple of this many channels per group (or the whole group)")
    momentum: float | None = option(None, "taylor: blend with the estimate an earlier run left on the modules, "
                                          "momentum*old + (1-momentum)*new (0.9 in Molchanov et al. 2019)")
    heads: Literal["whole", "dim"] = option("whole", "attention: whole (remove whole heads) or dim (keep the heads, "
                                                     "remove position j of every head's head_dim together)")

    def __post_init__(self):
        self.check_options(("ratio", "target_params", "target_macs", "target_latency"),
                           {"ratio": "[0, 1)", "target_params": "(0, 1]", "target_macs": "(0, 1]",
                            "target_latency": "(0, 1]", "round_to": ">= 1",
                            "momentum": "[0, 1)"})
        self.check_momentum()

    @property
    def context_keys(self) -> tuple[str, ...]:  # latency= is read only for target-latency
        return ("data", "loss_fn", "latency") if self.target_latency is not None else ("data", "loss_fn")

    def check_context(self, extra: dict) -> None:
        self.check_data_for_taylor(extra)

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        graph = analyse(gm, ctx.example_inputs, self.heads)
        score = self._scores(graph, ctx)
        scored = [g for g in graph.prunable if all(c in score for c in g.classes)]
        reached, extra = True, {}
        if self.target_params is None and self.target_macs is None and self.target_latency is None:
            removed = set()
            for g in scored:
                ranked = sorted(g.classes, key=lambda c: score[c])
                removed.update(ranked[:g.size - self._keep(g, math.floor((1 - self.ratio_) * g.size + 1e-9))])
        elif self.target_latency is not None:
            removed, reached, extra = self._latency(graph, scored, score, ctx)
        else:
            removed, reached = self._budget(scored, score, self._size(graph, ctx))
        before = sum(g.size for g in graph.prunable)
        changed = remove(graph, removed)
        stats = {"groups": len(graph.groups), "groups-prunable": len(graph.prunable),
                 "groups-unscored": len(graph.prunable) - len(scored), "channels-before": before,
                 "channels-after": before - len(removed), "layers-changed": changed, **extra}
        if not reached:
            stats["budget-reached"] = False
            warnings.warn(f"{self}: the budget cannot be reached: every prunable group is down to its minimum",
                          stacklevel=2)
        return PassResult(gm, changed > 0, stats)

    @property
    def ratio_(self) -> float:
        return DEFAULT_RATIO if self.ratio is None else self.ratio

    def _keep(self, group: ChannelGroup, keep: int) -> int:
        """Channels a group keeps when asked to keep `keep`: at least 1, a multiple of round-to."""
        return min(group.size, max(1, -(-keep // self.round_to) * self.round_to))  # integer ceil: no underflow

    def _scores(self, graph: ChannelGraph, ctx: PassContext) -> dict[int, float]:
        if self.criterion in ("l1", "l2"):
            return magnitude(graph, 1 if self.criterion == "l1" else 2)
        if self.criterion == "bn":
            return bn_scale(graph)
        if self.criterion == "scale":
            if graph.prunable and not any(m.role == "scale" for m in graph.flow.members):
                raise self.fail("criterion=scale needs channel scales: run insert-channel-scaling and "
                                "fxprune.train_scaling(gm, data, l1=...) first")
            return channel_scale(graph)
        return taylor(graph, ctx.extra["data"], ctx.extra.get("loss_fn"), self.momentum)

    def _size(self, graph: ChannelGraph, ctx: PassContext) -> tuple[Callable[[set[int]], int], float]:
        """What the budget counts (params or MACs, as fold will leave them) given the channels
        removed, and the most it may be."""
        if self.target_params is not None:
            return (lambda removed: params_after(graph, removed)), self.target_params * params_after(graph, set())
        macs = node_macs(graph.gm, ctx.example_inputs)
        fixed = total_macs(graph.gm, ctx.example_inputs) - sum(macs.values())  # attention: not prunable here
        return (lambda removed: fixed + macs_after(graph, removed, macs)), self.target_macs * (
            fixed + macs_after(graph, set(), macs))

    def _latency(self, graph: ChannelGraph, groups: list[ChannelGroup], score: dict[int, float],
                 ctx: PassContext) -> tuple[set[int], bool, dict]:
        """The fewest channels (in ranking order) whose removal leaves the model, folded, measured
        within `target-latency` of its own folded time. The table's prediction (the rest of the model
        held fixed: it errs slow) bounds the search; measured copies decide it by bisection."""
        table = table_for(ctx.extra.get("latency"), graph.gm)
        inputs = ctx.example_inputs
        rest, start = rest_and_folded(table, graph.gm, inputs)
        removed, n = self._sequence(groups, score)

        def trial(k: int) -> fx.GraphModule:
            copied = copy.deepcopy(graph.gm)
            remove(ChannelGraph(copied, graph.flow, graph.groups, graph._roots), removed(k))
            return copied

        bound = first_fit(lambda k: rest + table.layers(folded_layers(graph.gm, kept_shares(graph, removed(k))))
                          <= self.target_latency * start, 0, n)
        k, met, stats = measured_prefix(table, graph.gm, inputs, self.target_latency, trial, bound, n)
        table.save()
        return removed(k), met, stats

    def _budget(self, groups: list[ChannelGroup], score: dict[int, float],
                size: tuple[Callable[[set[int]], int], float]):
        """Remove the globally least important channels until the size fits."""
        removed, n = self._sequence(groups, score)
        count, budget = size
        chosen = removed(first_fit(lambda k: count(removed(k)) <= budget, 0, n))
        return chosen, count(chosen) <= budget

    def _sequence(self, groups: list[ChannelGroup], score: dict[int, float]) -> tuple[Callable[[int], set[int]], int]:
        """(removed(k): the k globally least important channels (score / group mean), each group
        stopping at its minimum, round-to applied; the most k can be)."""
        order = []
        for g in groups:
            mean = sum(score[c] for c in g.classes) / g.size or 1.0
            order += [(score[c] / mean, c) for c in g.classes]
        order.sort()
        group_of = {c: g for g in groups for c in g.classes}
        left = {id(g): g.size for g in groups}
        sequence = []  # the removal order, each group stopping at its minimum
        for _, c in order:
            g = group_of[c]
            if left[id(g)] - 1 >= self._keep(g, 1):
                sequence.append(c)
                left[id(g)] -= 1

        def removed(k: int) -> set[int]:
            chosen = set(sequence[:k])
            for g in groups:  # round-to: give back the most important of the removed channels
                gone = sorted((c for c in g.classes if c in chosen), key=lambda c: -score[c])
                chosen.difference_update(gone[:self._keep(g, g.size - len(gone)) - (g.size - len(gone))])
            return chosen
        return removed, len(sequence)
