"""prune-joint: bases and whole channels in one ranking (double pruning with one budget)."""

from __future__ import annotations

import copy
import heapq
import warnings
from dataclasses import dataclass

import torch.fx as fx

from fxprune.analysis.channels import ChannelGraph, analyse, kept_shares, macs_after, params_after, remove, taylor
from fxprune.analysis.counting import node_macs, total_macs
from fxprune.analysis.importance import taylor_scores
from fxprune.analysis.latency import measured_prefix, rest_and_folded, table_for
from fxprune.analysis.layer_shapes import folded_layers, pair_at
from fxprune.analysis.rank_cuts import RankCuts, TimedRankCuts, pair_units
from fxprune.core.lowrank import find_pairs, rebuild_pair, set_module
from fxprune.core.pass_base import FxPass, PassContext, PassResult, option, register


@register
@dataclass(frozen=True)
class PruneJoint(FxPass):
    """Bases and channels compete in one ranking: until the model, counted as `fold` will leave it,
    is at most `target-params` (or `target-macs`, or `target-latency`: seconds from a table of layer
    times on this machine, `latency=`, as in prune-channels) of its size, make the cut that loses the least
    importance per param (MAC) saved, whether it lowers a pair's rank (several bases at once where
    a pair only pays below some rank, as in prune-basis) or removes one channel of a group (every
    coupled layer, as in prune-channels). Both importances are first-order Taylor estimates of the
    loss change, in the same units: a basis (s_i*dL/ds_i)^2, a channel (sum of w*dL/dw over its
    weights)^2, averaged over the batches of `data=` (loss `loss_fn=`). Ties go to the cut that
    saves more. Savings are costed at the sizes the pass starts from; the pass then counts the
    model exactly and goes on cutting until the budget holds. A group keeps at least one channel.
    """

    name = "prune-joint"
    summary = "remove bases and channels in one ranking: least Taylor importance per param (MAC) saved"
    lossless = False
    requires = {"insert-scaling": "bases are ranked by the Taylor importance of their scaling factors"}
    target_params: float | None = option(None, "fraction of the model's params to keep")
    target_macs: float | None = option(None, "fraction of the model's MACs to keep")
    target_latency: float | None = option(None, "fraction of the model's measured latency to keep")
    min_rank: int = option(1, "never keep fewer bases per group than this")
    momentum: float | None = option(None, "taylor: blend with the estimate an earlier run left on the modules, "
                                          "momentum*old + (1-momentum)*new (0.9 in Molchanov et al. 2019)")

    def __post_init__(self):
        self.check_options(("target_params", "target_macs", "target_latency"),
                           {"target_params": "(0, 1]", "target_macs": "(0, 1]", "target_latency": "(0, 1]",
                            "min_rank": ">= 1", "momentum": "[0, 1)"})
        if self.target_params is None and self.target_macs is None and self.target_latency is None:
            raise self.fail("give a budget: target-params=F, target-macs=F or target-latency=F "
                            "(fraction of the model to keep)")

    @property
    def context_keys(self) -> tuple[str, ...]:  # latency= is read only for target-latency
        return ("data", "loss_fn", "latency") if self.target_latency is not None else ("data", "loss_fn")

    def check_context(self, extra: dict) -> None:
        if extra.get("data") is None:
            raise self.fail("needs data for Taylor importance: pass batches of (inputs, targets), e.g. "
                            "fxprune.prune(model, x, pipeline, data=train_loader)")

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        pairs, graph = find_pairs(gm), analyse(gm, ctx.example_inputs)
        data, loss_fn = ctx.extra["data"], ctx.extra.get("loss_fn")
        basis_scores = taylor_scores(gm, pairs, data, loss_fn, self.momentum)
        channel_scores = taylor(graph, data, loss_fn, self.momentum)
        table = None
        if self.target_params is not None:
            unit, fraction = pair_units(pairs), self.target_params

            def size(removed, ranks=None):
                return params_after(graph, removed, ranks)
        elif self.target_macs is not None:
            macs = node_macs(gm, ctx.example_inputs)
            unit, fraction = pair_units(pairs, macs), self.target_macs
            fixed = total_macs(gm, ctx.example_inputs) - sum(macs.values())  # attention: not prunable here

            def size(removed, ranks=None):
                return fixed + macs_after(graph, removed, macs, ranks)
        else:
            table, fraction = table_for(ctx.extra.get("latency"), gm), self.target_latency
            rest, _ = rest_and_folded(table, gm, ctx.example_inputs)

            def size(removed, ranks=None):
                return rest + table.layers(folded_layers(gm, kept_shares(graph, removed), ranks))

        if table is None:
            cuts = RankCuts(pairs, basis_scores, unit, self.min_rank)
        else:
            cuts = TimedRankCuts(pairs, basis_scores, lambda i, r: table.layers(pair_at(pairs[i], r)), self.min_rank)
        groups = [g for g in graph.prunable if all(c in channel_scores for c in g.classes)]
        order = [sorted(g.classes, key=lambda c: channel_scores[c]) for g in groups]
        start = size(set())
        if table is None:  # every channel of a group costs alike
            per_channel = [start - size({g.classes[0]}) for g in groups]
        else:  # timed: one channel's saving drowns in timing noise, so average over half the group
            per_channel = [(start - size(set(o[:max(1, len(o) // 2)]))) / max(1, len(o) // 2) for o in order]
        heap: list[tuple] = []

        def offer_pair(i: int) -> None:
            best = cuts.best(i)
            if best is not None:
                heapq.heappush(heap, (best[0], -best[2], 0, i, best[1]))

        def offer_group(j: int, k: int) -> None:
            if k < groups[j].size - 1 and per_channel[j] > 0:
                heapq.heappush(heap, (channel_scores[order[j][k]] / per_channel[j], -per_channel[j], 1, j, k))

        for i in range(len(pairs)):
            offer_pair(i)
        for j in range(len(groups)):
            offer_group(j, 0)
        budget, estimate, removed = fraction * start, float(start), set()

        def pop() -> tuple[int, int, int]:
            """Make the next cut of the ranking; (kind, index, position) of it."""
            nonlocal estimate
            _, minus_saved, kind, i, at = heapq.heappop(heap)
            estimate += minus_saved
            if kind == 0:
                cuts.ranks[i] = at
                offer_pair(i)
            else:
                removed.add(order[i][at])
                offer_group(i, at + 1)
            return kind, i, at

        extra = {}
        if table is not None:  # met as measured: every cut in ranking order, then bisection on folded copies
            sequence = []
            while heap:
                sequence.append((*pop(), estimate))
            removed, cuts.ranks, reached, extra = self._measured(gm, graph, pairs, basis_scores, order, sequence,
                                                                 table, ctx.example_inputs, budget)
            table.save()
        else:
            while heap:
                while estimate > budget and heap:
                    pop()
                estimate = size(removed, self._ranks(pairs, cuts.ranks))  # exact, with every cut made so far
                if estimate <= budget:
                    break
            reached = estimate <= budget
        changed = self._apply(gm, graph, basis_scores, removed, cuts.ranks)
        channels = sum(g.size for g in graph.prunable)
        stats = {"bases-before": sum(p.rank * p.groups for p in pairs),
                 "bases-after": sum(r * p.groups for p, r in zip(pairs, cuts.ranks)),
                 "channels-before": channels, "channels-after": channels - len(removed), "layers-changed": changed,
                 **extra}
        if not reached:
            stats["budget-reached"] = False
            warnings.warn(f"{self}: the budget cannot be reached: every pair is at min-rank and every "
                          "prunable group down to one channel", stacklevel=2)
        return PassResult(gm, changed > 0, stats)

    @staticmethod
    def _apply(gm: fx.GraphModule, graph, basis_scores, removed: set[int], ranks: list[int]) -> int:
        """Remove the channels, then cut each pair to its rank; the number of modules changed."""
        changed = remove(graph, removed)
        for pair, score, rank in zip(find_pairs(gm), basis_scores, ranks):  # channels first: ranks stay
            if rank < pair.rank:
                set_module(gm, pair.path, rebuild_pair(pair, score.topk(rank, dim=1).indices))
                changed += 1
        return changed

    def _measured(self, gm, graph, pairs, basis_scores, order, sequence, table, inputs, budget):
        """(channels removed, ranks, met, stats) of the shortest prefix of `sequence` (every cut in
        ranking order, with the predicted size after it) whose folded copy measures within
        target-latency of the folded model; the prediction (rest held fixed: it errs slow) bounds it."""
        def at(k: int) -> tuple[set[int], list[int]]:
            removed, ranks = set(), [p.rank for p in pairs]
            for kind, i, pos, _ in sequence[:k]:
                if kind == 0:
                    ranks[i] = pos
                else:
                    removed.add(order[i][pos])
            return removed, ranks

        def trial(k: int) -> fx.GraphModule:
            copied = copy.deepcopy(gm)
            self._apply(copied, ChannelGraph(copied, graph.flow, graph.groups, graph._roots), basis_scores, *at(k))
            return copied

        bound = next((k + 1 for k, step in enumerate(sequence) if step[3] <= budget), len(sequence))
        k, met, stats = measured_prefix(table, gm, inputs, self.target_latency, trial, bound, len(sequence))
        return (*at(k), met, stats)

    @staticmethod
    def _ranks(pairs, ranks: list[int]) -> dict[str, int]:
        return {p.path: r for p, r in zip(pairs, ranks) if r < p.rank}
