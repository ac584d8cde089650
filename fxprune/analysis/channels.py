"""Channel groups: which channels must be removed together, how important they are, and removing them.

A *group* is the set of channel classes (see channel_flow) that touch the same layers in the same
roles: the output channels of a residual stream and every layer reading it, or one conv's output
channels with its BatchNorm and the layers reading them. A group with a blocked class is kept whole,
with the reason.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxprune.analysis.channel_flow import ChannelFlow, Member, propagate
from fxprune.analysis.importance import split_batch
from fxprune.core.lowrank import find_pairs, same_format, set_module
from fxprune.core.smoothing import CHANNELS, stored


PER_CHANNEL = ("bn", "scale")  # roles whose weight is one value per channel, not a slice of a layer


@dataclass(frozen=True)
class ChannelGroup:
    members: tuple[tuple[str, str], ...]  # (module path, role), sorted
    classes: tuple[int, ...]  # one root element per channel that is removed as one
    blocked: str | None  # why the group is kept whole; None when it can be pruned

    @property
    def size(self) -> int:
        return len(self.classes)


@dataclass
class ChannelGraph:
    """The analysis of one GraphModule: its groups and where each class sits in each member."""

    gm: fx.GraphModule
    flow: ChannelFlow
    groups: list[ChannelGroup]
    _roots: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.blocked is None]

    def roots(self, member: Member) -> torch.Tensor:
        """The class (root element) of each position of `member` (fixed once the analysis is done,
        so computed once per member: budgets ask for it at every bisection step)."""
        key = id(member)
        if key not in self._roots:
            self._roots[key] = torch.tensor([self.flow.find(e) for e in member.ids.tolist()], dtype=torch.long)
        return self._roots[key]


def analyse(gm: fx.GraphModule, inputs: tuple) -> ChannelGraph:
    flow = propagate(gm, inputs)
    blocked = {}
    for e, reason in flow.blocked.items():
        blocked.setdefault(flow.find(e), reason)
    members: dict[int, set] = defaultdict(set)
    for m in flow.members:
        for e in m.ids.tolist():
            members[flow.find(e)].add((m.path, m.role))
    by_key: dict[tuple, list[int]] = defaultdict(list)
    for root, mem in members.items():
        by_key[(tuple(sorted(mem)), blocked.get(root))].append(root)
    groups = [ChannelGroup(key[0], tuple(sorted(roots)), key[1]) for key, roots in by_key.items()]
    groups.sort(key=lambda g: min(g.classes))
    return ChannelGraph(gm, flow, groups)


def _slices(w: torch.Tensor, role: str) -> torch.Tensor:
    """A weight-shaped tensor as (positions, everything else) for a member role."""
    if role == "in":
        return w.transpose(0, 1).reshape(w.shape[1], -1)
    return w.reshape(w.shape[0], -1)


def magnitude(graph: ChannelGraph, p: int) -> dict[int, float]:
    """Per class: the sum over its members of the Lp norm of its weight slice, each member's
    norms divided by their mean so that layers of any scale count alike."""
    score: dict[int, float] = defaultdict(float)
    for member in graph.flow.members:
        if member.role in PER_CHANNEL:
            continue
        norms = _slices(graph.gm.get_submodule(member.path).weight, member.role).detach().double().norm(p=p, dim=1)
        norms = norms / norms.mean().clamp_min(1e-30)
        for root, v in zip(graph.roots(member).tolist(), norms.tolist()):
            score[root] += v
    return score


def bn_scale(graph: ChannelGraph) -> dict[int, float]:
    """Per class: |gamma| of its BatchNorms (classes without one get no score)."""
    score: dict[int, float] = defaultdict(float)
    for member in graph.flow.members:
        bn = graph.gm.get_submodule(member.path)
        if member.role == "bn" and bn.weight is not None:
            gamma = bn.weight.detach().double().abs()
            for root, v in zip(graph.roots(member).tolist(), (gamma / gamma.mean().clamp_min(1e-30)).tolist()):
                score[root] += v
    return score


def channel_scale(graph: ChannelGraph) -> dict[int, float]:
    """Per class: mean |s| over its ChannelScaling modules (classes without one get no score). Not
    normalised: the scales start at 1 everywhere and an L1 penalty drives unneeded ones to 0."""
    total: dict[int, float] = defaultdict(float)
    count: dict[int, int] = defaultdict(int)
    for member in graph.flow.members:
        if member.role == "scale":
            s = graph.gm.get_submodule(member.path).weight.detach().double().abs()
            for root, v in zip(graph.roots(member).tolist(), s.tolist()):
                total[root] += v
                count[root] += 1
    return {root: v / count[root] for root, v in total.items()}


def taylor(graph: ChannelGraph, data: Iterable, loss_fn: Callable | None = None,
           momentum: float | None = None) -> dict[int, float]:
    """Per class: (sum over its weights of w * dL/dw)^2, averaged over the batches of `data`; with
    `momentum`, blended with the estimate an earlier run left on the class's members (core.smoothing)."""
    loss_fn = loss_fn or F.cross_entropy
    gm = graph.gm
    members = graph.flow.members
    params = {m.path: gm.get_submodule(m.path) for m in members}
    tensors = {(path, name): p for path, mod in params.items() for name, p in mod.named_parameters(recurse=False)
               if name in ("weight", "bias")}
    flags = {k: t.requires_grad for k, t in tensors.items()}
    for t in tensors.values():
        t.requires_grad_(True)
    keys = list(tensors)
    index = [graph.roots(m) for m in members]
    total: dict[int, float] = defaultdict(float)
    batches = 0
    try:
        with torch.enable_grad():
            for batch in data:
                x, y = split_batch(batch)
                grads = dict(zip(keys, torch.autograd.grad(loss_fn(gm(x), y), [tensors[k] for k in keys],
                                                           allow_unused=True)))
                per_class: dict[int, float] = defaultdict(float)
                for member, roots in zip(members, index):
                    for name in ("weight", "bias"):
                        t, g = tensors.get((member.path, name)), grads.get((member.path, name))
                        if t is None or g is None or (name == "bias" and member.role == "in"):
                            continue
                        prod = (t.detach() * g).double()
                        if name == "weight" and member.role not in PER_CHANNEL:
                            prod = _slices(prod, member.role).sum(1)
                        for root, v in zip(roots.tolist(), prod.tolist()):
                            per_class[root] += v
                for root, v in per_class.items():
                    total[root] += v * v
                batches += 1
    finally:
        for k, t in tensors.items():
            t.requires_grad_(flags[k])
    if not batches:
        raise ValueError("data= yielded no batch")
    score = {root: v / batches for root, v in total.items()}
    return score if momentum is None else _smoothed(graph, score, momentum)


def _smoothed(graph: ChannelGraph, score: dict[int, float], momentum: float) -> dict[int, float]:
    """`score` blended with the per-channel estimates stored on the members that own the channels as
    outputs (momentum * old + (1 - momentum) * new; new where none is stored), stored back on them."""
    owners = [m for m in graph.flow.members if m.role != "in"]
    old: dict[int, float] = {}
    for member in owners:
        history, roots = stored(graph.gm.get_submodule(member.path), CHANNELS), graph.roots(member)
        if history is not None and len(history) == len(roots):
            for root, v in zip(roots.tolist(), history.tolist()):
                old.setdefault(root, v)
    score = {root: momentum * old[root] + (1 - momentum) * v if root in old else v for root, v in score.items()}
    for member in owners:
        graph.gm.get_submodule(member.path).__dict__[CHANNELS] = torch.tensor(
            [score.get(root, 0.0) for root in graph.roots(member).tolist()], dtype=torch.float64)
    return score


def kept_shares(graph: ChannelGraph, removed: set[int]) -> dict[str, dict[str, float]]:
    """Per member module, the share of its "in" and "out" channels left once `removed` are gone."""
    gone = torch.tensor(sorted(removed), dtype=torch.long)
    kept: dict[str, dict[str, float]] = defaultdict(dict)
    for member in graph.flow.members:
        roots = graph.roots(member)
        kept[member.path]["in" if member.role == "in" else "out"] = 1 - torch.isin(roots, gone).float().mean().item()
    return kept


def _pair_cost(pair, kept: dict[str, dict[str, float]], ranks: dict[str, int] | None) -> tuple[int, int]:
    """(m, r * (m + n) or m * n, whichever fold leaves) per group of a pair after removal, at the
    rank `ranks` gives its path (default: its own)."""
    m = round(pair.m * kept.get(pair.coef_node.target, {}).get("out", 1.0))
    n = round(pair.n * kept.get(pair.basis_node.target, {}).get("in", 1.0))
    rank = (ranks or {}).get(pair.path, pair.rank)
    return m, min(rank * (m + n), m * n)


def params_after(graph: ChannelGraph, removed: set[int], ranks: dict[str, int] | None = None) -> int:
    """Parameters of `graph.gm` once the classes in `removed` are gone (and each pair whose path is in
    `ranks` is cut to that rank), every decomposed pair counted as `fold` will leave it (merged back
    into one layer where it no longer pays; scales folded)."""
    kept = kept_shares(graph, removed)
    total, in_pairs = 0, set()
    for pair in find_pairs(graph.gm):
        in_pairs.update((pair.basis_node.target, pair.coef_node.target))
        m, weights = _pair_cost(pair, kept, ranks)
        total += pair.groups * (weights + (m if pair.coef.bias is not None else 0))
    for name, p in graph.gm.named_parameters():
        path, _, attr = name.rpartition(".")
        share = kept.get(path)
        if path in in_pairs:
            continue
        if share is None or attr not in ("weight", "bias"):
            total += p.numel()
        else:
            fraction = share.get("out", 1.0) * (share.get("in", 1.0) if attr == "weight" else 1.0)
            total += round(p.numel() * fraction)
    return total


def macs_after(graph: ChannelGraph, removed: set[int], macs: dict[str, int], ranks: dict[str, int] | None = None) -> int:
    """MACs of the conv/linear nodes (`macs`: analysis.node_macs of `graph.gm`) once the classes in
    `removed` are gone (and pairs cut to `ranks`, as in params_after), pairs counted as `fold` will leave them. Other MACs (attention matmuls)
    do not depend on prunable channels and are not included."""
    kept = kept_shares(graph, removed)
    total, in_pairs = 0, set()
    for pair in find_pairs(graph.gm):
        in_pairs.update((pair.basis_node.target, pair.coef_node.target))
        positions = macs[pair.coef_node.name] // (pair.m * pair.rank)  # output positions x groups
        total += positions * _pair_cost(pair, kept, ranks)[1]
    for node in graph.gm.graph.find_nodes(op="call_module"):
        if node.name in macs and node.target not in in_pairs:
            share = kept.get(node.target, {})
            total += round(macs[node.name] * share.get("out", 1.0) * share.get("in", 1.0))
    return total


def zero(graph: ChannelGraph, classes: set[int]) -> None:
    """Zero every weight slice of `classes` in place (out rows with their bias, in columns,
    depthwise filters): those channels then contribute nothing, so removing them must not change
    the outputs. The lossless check of prune-channels is built on this."""
    with torch.no_grad():
        for member in graph.flow.members:
            m = graph.gm.get_submodule(member.path)
            if member.role in PER_CHANNEL:
                continue
            hit = torch.tensor([r in classes for r in graph.roots(member).tolist()])
            if member.role == "in":
                m.weight[:, hit] = 0
            else:
                m.weight[hit] = 0
                if m.bias is not None:
                    m.bias[hit] = 0


def remove(graph: ChannelGraph, removed: set[int]) -> int:
    """Slice every member module of `graph.gm` so the classes in `removed` are gone; modules are
    replaced (never edited in place, so a module shared with the caller's model is untouched).
    Returns the number of modules changed."""
    keep_out: dict[str, torch.Tensor] = {}
    keep_in: dict[str, torch.Tensor] = {}
    for member in graph.flow.members:
        keep = torch.tensor([r not in removed for r in graph.roots(member).tolist()])
        (keep_in if member.role == "in" else keep_out)[member.path] = keep
    changed = 0
    for path in sorted(set(keep_out) | set(keep_in)):
        out, inp = keep_out.get(path), keep_in.get(path)
        if (out is None or out.all()) and (inp is None or inp.all()):
            continue
        set_module(graph.gm, path, _sliced(graph.gm.get_submodule(path), out, inp))
        changed += 1
    return changed


def _sliced(m: nn.Module, out: torch.Tensor | None, inp: torch.Tensor | None) -> nn.Module:
    new = copy.deepcopy(m)

    def cut(name: str, mask: torch.Tensor, dim: int = 0) -> None:
        t = getattr(new, name, None)
        if t is None:
            return
        data = same_format(t.detach().index_select(dim, mask.nonzero().flatten()), t)
        if isinstance(t, nn.Parameter):
            setattr(new, name, nn.Parameter(data, requires_grad=t.requires_grad))
        else:
            setattr(new, name, data)

    if out is not None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            cut(name, out)
        history = stored(new, CHANNELS)
        if history is not None and len(history) == len(out):  # the running importance follows its channels
            new.__dict__[CHANNELS] = history[out]
        n = int(out.sum())
        for attr in ("out_channels", "out_features", "num_features"):
            if hasattr(new, attr):
                setattr(new, attr, n)
        if getattr(new, "groups", 1) > 1:  # depthwise: channels in = out = groups
            new.groups = new.in_channels = n
    if inp is not None:
        cut("weight", inp, 1)
        n = int(inp.sum())
        for attr in ("in_channels", "in_features"):
            if hasattr(new, attr):
                setattr(new, attr, n)
    return new
