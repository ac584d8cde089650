"""prune-basis: drop the bases with the least energy, per layer or against a global budget."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.fx as fx

from fxprune.analysis.counting import node_macs, total_macs, total_params
from fxprune.analysis.importance import taylor_scores
from fxprune.analysis.latency import measured_prefix, rest_and_folded, table_for
from fxprune.analysis.layer_shapes import pair_at
from fxprune.analysis.rank_cuts import RankCuts, TimedRankCuts, pair_units
from fxprune.core.lowrank import Pair, find_pairs, pays, rebuild_pair, set_module
from fxprune.core.pass_base import FxPass, PassContext, PassResult, option, register

DEFAULT_ENERGY = 0.95


@register
@dataclass(frozen=True)
class PruneBasis(FxPass):
    """Importance (`criterion`): energy, the effective singular value S_i*|s_i| (the norm of basis
    i's coef column); scale, |s_i|; taylor, (s_i*dL/ds_i)^2 averaged over the batches of `data=`
    (loss `loss_fn=`, default cross-entropy). Squared values are compared, so energy keeps (S_i*|s_i|)^2.

    Per layer (`energy`): keep the smallest rank whose cumulative squared importance reaches that
    fraction of the layer's total, in every group; a layer where that rank would not pay
    (r*(m + n) >= m*n per group: fold would merge it back) keeps every basis and is counted in
    `no-gain-kept`, so no layer loses accuracy for no saving. Global (`target-params` / `target-macs` /
    `target-latency`): until the model, counted as `fold` will leave it (a pair that no longer pays is
    merged back), is at most that fraction of its size, cut the rank of the layer that loses the least
    importance per param (MAC, second) saved; latency as in prune-channels (a table of layer times on
    this machine, `latency=`), with 16 candidate ranks per layer; only cuts that save count, so a budget never leaves a pair that does not pay
    at a lower rank either. taylor and scale are compared across layers as they are (loss units; every
    scale starts at 1); energy as a share of its layer's energy.
    """

    name = "prune-basis"
    summary = "remove low-energy bases of decomposed layers (per-layer energy or a global budget)"
    lossless = False
    requires = {"decompose-conv": "it prunes the bases that decompose-conv creates"}
    criterion: Literal["energy", "scale", "taylor"] = option(
        "energy", "importance: energy (S_i*|s_i|, no data), scale (|s_i|) or taylor ((s_i*dL/ds_i)^2, needs data=)")
    energy: float | None = option(None, f"per-layer energy to keep, in (0, 1]; {DEFAULT_ENERGY} if no target")
    min_rank: int = option(1, "never keep fewer bases per group than this")
    target_params: float | None = option(None, "global budget: fraction of the model's params to keep")
    target_macs: float | None = option(None, "global budget: fraction of the model's MACs to keep")
    target_latency: float | None = option(None, "global budget: fraction of the model's measured latency to keep")
    momentum: float | None = option(None, "taylor: blend with the estimate an earlier run left on the modules, "
                                          "momentum*old + (1-momentum)*new (0.9 in Molchanov et al. 2019)")

    def __post_init__(self):
        self.check_options(("energy", "target_params", "target_macs", "target_latency"),
                           {"energy": "(0, 1]", "target_params": "(0, 1]", "target_macs": "(0, 1]",
                            "target_latency": "(0, 1]", "min_rank": ">= 1",
                            "momentum": "[0, 1)"})
        self.check_momentum()

    @property
    def context_keys(self) -> tuple[str, ...]:  # latency= is read only for target-latency
        return ("data", "loss_fn", "latency") if self.target_latency is not None else ("data", "loss_fn")

    def check_context(self, extra: dict) -> None:
        self.check_data_for_taylor(extra)

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        pairs = find_pairs(gm)
        before = sum(p.rank * p.groups for p in pairs)
        scores = self._scores(gm, ctx, pairs)
        extra = {}
        if self.target_latency is not None:
            ranks, reached, extra = self._latency_ranks(gm, ctx, pairs, scores)
        elif self.target_params is not None or self.target_macs is not None:
            ranks, reached = self._budget_ranks(gm, ctx, pairs, scores)
        else:
            energy = DEFAULT_ENERGY if self.energy is None else self.energy
            ranks, reached = [self._energy_rank(p, e, energy) for p, e in zip(pairs, scores)], True
        no_gain = sum(r < p.rank and not pays(r, p.m, p.n) for p, r in zip(pairs, ranks))
        # a cut that does not pay would be merged back by fold at the lower rank: loss for no saving
        ranks = [r if pays(r, p.m, p.n) else p.rank for p, r in zip(pairs, ranks)]
        changed = self._apply(gm, pairs, scores, ranks)
        after = sum(r * p.groups for p, r in zip(pairs, ranks))
        stats = {"bases-before": before, "bases-after": after, "layers-pruned": changed, "no-gain-kept": no_gain,
                 **extra}
        if not reached:
            stats["budget-reached"] = False
            how = (f"every rank cut that saves time was made ({extra.get('latency-ms-after')} ms of "
                   f"{extra.get('latency-ms')} measured)" if self.target_latency is not None
                   else "every decomposed layer was pruned to min-rank")
            warnings.warn(f"{self}: the budget cannot be reached with min-rank={self.min_rank}; {how}", stacklevel=2)
        return PassResult(gm, changed > 0, stats)

    def _scores(self, gm: fx.GraphModule, ctx: PassContext, pairs: list[Pair]) -> list[torch.Tensor]:
        """Per pair, (g, r) energy-like importance: squared, so cumulative shares are meaningful."""
        if self.criterion == "energy":
            return [p.importance().double().pow(2) for p in pairs]
        unscaled = [p.source for p in pairs if p.scale is None]
        if unscaled:
            raise self.fail(f"criterion={self.criterion} needs the scaling factors of insert-scaling, which "
                            f"{unscaled[0]} has not got: run 'decompose-conv,insert-scaling' first")
        if self.criterion == "scale":
            return [p.scale.double().pow(2) for p in pairs]
        return taylor_scores(gm, pairs, ctx.extra["data"], ctx.extra.get("loss_fn"), self.momentum)

    def _energy_rank(self, pair: Pair, score: torch.Tensor, energy: float) -> int:
        e = score.sort(dim=1, descending=True).values
        cum = e.cumsum(dim=1)
        need = (cum < energy * cum[:, -1:] * (1 - 1e-12)).sum(dim=1) + 1
        return int(min(pair.rank, max(self.min_rank, need.max().item())))

    @staticmethod
    def _apply(gm: fx.GraphModule, pairs: list[Pair], scores: list[torch.Tensor], ranks: list[int]) -> int:
        """Rebuild each pair with its `rank` most important bases; the number of pairs changed."""
        changed = 0
        for pair, score, rank in zip(pairs, scores, ranks):
            if rank < pair.rank:
                set_module(gm, pair.path, rebuild_pair(pair, score.topk(rank, dim=1).indices))
                changed += 1
        return changed

    def _latency_ranks(self, gm: fx.GraphModule, ctx: PassContext, pairs: list[Pair],
                       scores: list[torch.Tensor]) -> tuple[list[int], bool, dict]:
        """_budget_ranks in seconds, met as measured: the greedy orders every cut that saves by
        importance lost per second (pairs timed at candidate ranks); the table's prediction (the rest
        of the model held fixed: it errs slow) bounds a bisection over that order on folded copies."""
        table = table_for(ctx.extra.get("latency"), gm)
        inputs = ctx.example_inputs
        _, start = rest_and_folded(table, gm, inputs)
        cuts = TimedRankCuts(pairs, scores, lambda i, r: table.layers(pair_at(pairs[i], r)), self.min_rank,
                             shares=self.criterion == "energy")
        steps = self._greedy(cuts, start, float("-inf"))[3]  # every cut that saves, in order

        def ranks_at(k: int) -> list[int]:
            ranks = [p.rank for p in pairs]
            for i, rank, _ in steps[:k]:
                ranks[i] = rank
            return ranks

        def trial(k: int) -> fx.GraphModule:
            copied = copy.deepcopy(gm)
            self._apply(copied, find_pairs(copied), scores, ranks_at(k))
            return copied

        bound = next((k + 1 for k, (_, _, left) in enumerate(steps) if left <= self.target_latency * start), len(steps))
        k, met, stats = measured_prefix(table, gm, inputs, self.target_latency, trial, bound, len(steps))
        table.save()
        return ranks_at(k), met, stats

    def _budget_ranks(self, gm: fx.GraphModule, ctx: PassContext, pairs: list[Pair],
                      scores: list[torch.Tensor]) -> tuple[list[int], bool]:
        """Cost-aware greedy: repeatedly apply the rank cut, in any layer, that loses the least
        importance per param (or MAC) saved (fxprune.analysis.rank_cuts)."""
        if self.target_params is not None:
            unit, total, fraction = pair_units(pairs), total_params(gm), self.target_params
        else:
            unit = pair_units(pairs, node_macs(gm, ctx.example_inputs))
            total, fraction = total_macs(gm, ctx.example_inputs), self.target_macs
        cuts = RankCuts(pairs, scores, unit, self.min_rank, shares=self.criterion == "energy")
        current = total - sum(u * p.rank * (p.m + p.n) for u, p in zip(unit, pairs)) + cuts.size()
        return self._greedy(cuts, current, fraction * current)[:2]

    @staticmethod
    def _greedy(cuts: RankCuts, current: float, budget: float) -> tuple[list[int], bool, float, list]:
        """(ranks, budget met, size left, the cuts made: (pair, new rank, size after) in order): cut
        until `current` is within `budget`."""
        steps = []
        best = {i: cuts.best(i) for i in range(len(cuts.pairs))}
        while current > budget:
            live = [(c[0], i) for i, c in best.items() if c is not None]
            if not live:
                break
            i = min(live)[1]
            if best[i][2] >= current - budget:  # this cut would finish: finish with the one losing least
                i, cut = min(((k, cuts.cheapest_saving(k, current - budget)) for k in best if best[k] is not None),
                             key=lambda t: t[1][0] if t[1] else float("inf"))
                best[i] = cut
            _, cuts.ranks[i], saved = best[i]
            current -= saved
            steps.append((i, cuts.ranks[i], current))
            best[i] = cuts.best(i)
        return cuts.ranks, current <= budget, current, steps
