"""prune-basis: drop the bases with the least energy, per layer or against a global budget."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.fx as fx

from fxprune.analysis import node_macs, total_macs, total_params
from fxprune.lowrank import Pair, find_pairs, rebuild_pair, set_module
from fxprune.pass_base import FxPass, PassContext, PassResult, option, register

DEFAULT_ENERGY = 0.95


@register
@dataclass(frozen=True)
class PruneBasis(FxPass):
    """Importance of basis i is its effective singular value S_i*|s_i| (the norm of its coef column).

    Per layer (`energy`): keep the smallest rank whose cumulative squared importance reaches that
    fraction of the layer's total, in every group. Global (`target-params` / `target-macs`): remove
    bases in order of their share of their layer's energy until the model, counted as `fold` will
    leave it (a pair that no longer pays is merged back), is at most that fraction of its size.
    """

    name = "prune-basis"
    summary = "remove low-energy bases of decomposed layers (per-layer energy or a global budget)"
    lossless = False
    requires = {"decompose-conv": "it prunes the bases that decompose-conv creates"}
    energy: float | None = option(None, f"per-layer energy to keep, in (0, 1]; {DEFAULT_ENERGY} if no target")
    min_rank: int = option(1, "never keep fewer bases per group than this")
    target_params: float | None = option(None, "global budget: fraction of the model's params to keep")
    target_macs: float | None = option(None, "global budget: fraction of the model's MACs to keep")

    def __post_init__(self):
        given = [o for o in ("energy", "target_params", "target_macs") if getattr(self, o) is not None]
        if len(given) > 1:
            raise self.fail(f"give one of energy, target-params, target-macs, not {' and '.join(given)}"
                            .replace("_", "-"))
        for o in given:
            if not 0 < getattr(self, o) <= 1:
                raise self.fail(f"option '{o.replace('_', '-')}' must be in (0, 1], got {getattr(self, o)}")
        if self.min_rank < 1:
            raise self.fail(f"option 'min-rank' must be at least 1, got {self.min_rank}")

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        pairs = find_pairs(gm)
        before = sum(p.rank * p.groups for p in pairs)
        if self.target_params is not None or self.target_macs is not None:
            ranks, reached = self._budget_ranks(gm, ctx, pairs)
        else:
            energy = DEFAULT_ENERGY if self.energy is None else self.energy
            ranks, reached = [self._energy_rank(p, energy) for p in pairs], True
        changed = 0
        for pair, rank in zip(pairs, ranks):
            if rank < pair.rank:
                keep = pair.importance().topk(rank, dim=1).indices
                set_module(gm, pair.path, rebuild_pair(pair, keep))
                changed += 1
        after = sum(r * p.groups for p, r in zip(pairs, ranks))
        stats = {"bases-before": before, "bases-after": after, "layers-pruned": changed}
        if not reached:
            stats["budget-reached"] = False
            warnings.warn(f"{self}: the budget cannot be reached with min-rank={self.min_rank}; "
                          "every decomposed layer was pruned to min-rank", stacklevel=2)
        return PassResult(gm, changed > 0, stats)

    def _energy_rank(self, pair: Pair, energy: float) -> int:
        e = pair.importance().pow(2).sort(dim=1, descending=True).values.double()
        cum = e.cumsum(dim=1)
        need = (cum < energy * cum[:, -1:] * (1 - 1e-12)).sum(dim=1) + 1
        return int(min(pair.rank, max(self.min_rank, need.max().item())))

    def _budget_ranks(self, gm: fx.GraphModule, ctx: PassContext, pairs: list[Pair]) -> tuple[list[int], bool]:
        if self.target_params is not None:
            unit = [p.groups for p in pairs]  # cost of one basis per (m + n)
            total, fraction = total_params(gm), self.target_params
        else:
            macs = node_macs(gm, ctx.example_inputs)
            unit = [macs[p.coef_node.name] // (p.m * p.rank) for p in pairs]  # output positions x groups
            total, fraction = total_macs(gm, ctx.example_inputs), self.target_macs

        def cost(i: int, r: int) -> int:
            p = pairs[i]
            return unit[i] * min(r * (p.m + p.n), p.m * p.n)

        ranks = [p.rank for p in pairs]
        current = total - sum(unit[i] * p.rank * (p.m + p.n) for i, p in enumerate(pairs))
        current += sum(cost(i, r) for i, r in enumerate(ranks))
        budget = fraction * current
        order = []
        for i, p in enumerate(pairs):
            e = p.importance().pow(2).double()
            share = (e / e.sum(dim=1, keepdim=True).clamp_min(1e-300)).sort(dim=1, descending=True).values
            order += [(share[:, k].max().item(), i) for k in range(self.min_rank, p.rank)]
        order.sort(key=lambda t: t[0])
        for _, i in order:
            if current <= budget:
                break
            current += cost(i, ranks[i] - 1) - cost(i, ranks[i])
            ranks[i] -= 1
        return ranks, current <= budget
