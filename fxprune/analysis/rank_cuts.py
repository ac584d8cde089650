"""Rank cuts of decomposed pairs, costed as `fold` will leave them: the candidates of budget pruning.

A *cut* lowers one pair's rank; it loses the importance of the bases it drops and saves the params
(or MACs) the pair shrinks by. A pair costs unit * min(r * (m + n), m * n) (fold merges it back
where the pair no longer pays), so cutting a full-rank 1x1 pair saves nothing until more than half
of its bases are gone: a cut may drop several bases at once to get there.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from fxprune.core.lowrank import Pair


class RankCuts:
    """`scores[i]` (g, r): importance of every basis of `pairs[i]`; `unit[i]`: what one basis per
    (m + n) costs (groups for params; output positions x groups for MACs); `shares`: compare each
    layer's importance as a share of its own total (singular values of different layers are not
    comparable) instead of as it is (loss units)."""

    def __init__(self, pairs: list[Pair], scores: list[torch.Tensor], unit: list[int], min_rank: int,
                 shares: bool = False):
        self.pairs, self.unit, self.min_rank = pairs, unit, min_rank
        self.ranks = [p.rank for p in pairs]
        self.lost = []  # per pair: importance lost by keeping only the k most important bases, k = 0..rank
        for e in scores:
            v = e.sort(dim=1, descending=True).values.sum(dim=0)
            if shares:
                v = v / v.sum().clamp_min(1e-300)
            self.lost.append(v.sum() - torch.cat([v.new_zeros(1), v.cumsum(0)]))

    def cost(self, i: int, r: torch.Tensor | int) -> torch.Tensor:
        p = self.pairs[i]
        return self.unit[i] * torch.minimum(torch.as_tensor(r, dtype=torch.float64) * (p.m + p.n),
                                            torch.tensor(float(p.m * p.n), dtype=torch.float64))

    def size(self) -> float:
        """What the pairs cost at their current ranks."""
        return sum(self.cost(i, r).item() for i, r in enumerate(self.ranks))

    def candidates(self, i: int, r: int) -> torch.Tensor:
        """The ranks below r that pair i may be cut to."""
        return torch.arange(self.min_rank, r)

    def _options(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r = self.ranks[i]
        keep = self.candidates(i, r)
        return keep, self.cost(i, r) - self.cost(i, keep), self.lost[i][keep] - self.lost[i][r]

    def best(self, i: int) -> tuple[float, int, float] | None:
        """(importance lost per unit saved, new rank, saved) of the cut of pair i that loses least per
        unit saved; None when no cut of it saves anything."""
        keep, saved, lost = self._options(i)
        if not (saved > 0).any():
            return None
        ratio = torch.where(saved > 0, lost / saved.clamp_min(1e-300), torch.inf)
        j = int(ratio.argmin())
        return ratio[j].item(), int(keep[j]), saved[j].item()

    def cheapest_saving(self, i: int, need: float) -> tuple[float, int, float] | None:
        """(importance lost, new rank, saved) of the cut of pair i that loses least among those
        saving at least `need`; None when none does."""
        keep, saved, lost = self._options(i)
        lost = torch.where(saved >= need, lost, torch.inf)
        if not len(keep) or not torch.isfinite(lost).any():
            return None
        j = int(lost.argmin())
        return lost[j].item(), int(keep[j]), saved[j].item()


class TimedRankCuts(RankCuts):
    """Rank cuts costed in seconds: `seconds(i, r)` is pair i at rank r as fold leaves it, timed
    (a latency table); only `grid` ranks per pair are candidates (ceil(rank * k / grid), k = 1..grid,
    and min_rank), so each pair is timed at most grid + 1 times."""

    def __init__(self, pairs: list[Pair], scores: list[torch.Tensor], seconds: Callable[[int, int], float],
                 min_rank: int, shares: bool = False, grid: int = 16):
        super().__init__(pairs, scores, [1] * len(pairs), min_rank, shares)
        self.seconds, self.grid = seconds, grid

    def candidates(self, i: int, r: int) -> torch.Tensor:
        full = self.pairs[i].rank
        points = {max(self.min_rank, math.ceil(full * k / self.grid)) for k in range(1, self.grid + 1)}
        return torch.tensor(sorted(p for p in points | {self.min_rank} if p < r), dtype=torch.long)

    def cost(self, i: int, r: torch.Tensor | int) -> torch.Tensor:
        r = torch.as_tensor(r)
        return torch.tensor([self.seconds(i, int(k)) for k in r.reshape(-1)], dtype=torch.float64).reshape(r.shape)


def pair_units(pairs: list[Pair], macs: dict[str, int] | None = None) -> list[int]:
    """RankCuts' unit per pair: its groups (counting params) or, given analysis.counting.node_macs,
    its coef node's output positions x groups (counting MACs)."""
    if macs is None:
        return [p.groups for p in pairs]
    return [macs[p.coef_node.name] // (p.m * p.rank) for p in pairs]
