"""Channel groups: which channels must be removed together, how important they are, and removing them.

A *group* is the set of channel classes (see channel_flow) that touch the same layers in the same
roles: the output channels of a residual stream and every layer reading it, or one conv's output
channels with its BatchNorm and the layers reading them. A group with a blocked class is kept whole,
with the reason.
"""

from __future__ import annotations

import copy
import math
import operator
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxprune.analysis.channel_flow import propagate
from fxprune.analysis.flow_spread import REMOVED, respread
from fxprune.analysis.flow_types import ChannelFlow, Member, op_name
from fxprune.analysis.importance import split_batch
from fxprune.core import distributed
from fxprune.core.lowrank import find_pairs, same_format, set_module
from fxprune.core.smoothing import CHANNELS, stored


PER_CHANNEL = ("bn", "scale", "norm", "param")  # roles that are not a layer's weight slices


@dataclass(frozen=True)
class ChannelGroup:
    members: tuple[tuple[str, str], ...]  # (module path, role), sorted
    classes: tuple[int, ...]  # one root element per channel that is removed as one
    blocked: str | None  # why the group is kept whole; None when it can be pruned
    # "heads": attention heads (slabs of a split); "head_dim": position j of every head (heads="dim");
    # "embedding": the width norms run over
    kind: str = "channels"
    #                         or attributes read directly span; "channels": any other

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


def analyse(gm: fx.GraphModule, inputs: tuple, heads: str = "whole") -> ChannelGraph:
    """The channel groups of `gm` (see channel_flow; `heads`: "whole" prunes attention heads as units,
    "dim" their head_dim, position j of every head together)."""
    flow = propagate(gm, inputs, heads)
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
    slabs, head_dims = {flow.find(e) for e in flow.slabs}, {flow.find(e) for e in flow.head_dims}

    def kind(members, roots) -> str:
        if slabs.intersection(roots):
            return "heads"
        if head_dims.intersection(roots):
            return "head_dim"
        return "embedding" if any(role in ("norm", "param") for _, role in members) else "channels"
    groups = [ChannelGroup(key[0], tuple(sorted(roots)), key[1], kind(key[0], roots)) for key, roots in by_key.items()]
    groups.sort(key=lambda g: min(g.classes))
    return ChannelGraph(gm, flow, groups)


def magnitude(graph: ChannelGraph, p: int) -> dict[int, float]:
    """Per class: the sum over its members of the Lp norm of its weight slice, each member's
    norms divided by their mean so that layers of any scale count alike. Members holding one value
    per channel (BatchNorm, norms, scales; layer scales and class tokens read directly) do not count."""
    score: dict[int, float] = defaultdict(float)
    for member in graph.flow.members:
        if member.role in ("bn", "scale", "norm"):
            continue
        _, t, axis = _tensors(graph.gm, member)[0]
        slices = t.detach().double().movedim(axis, 0).reshape(t.shape[axis], -1)
        if member.role == "param" and slices.shape[1] == 1:  # one value per channel: not a weight slice
            continue
        norms = slices.norm(p=p, dim=1)
        norms = norms / norms.mean().clamp_min(1e-30)
        for root, v in zip(graph.roots(member).tolist(), norms.tolist()):
            score[root] += v
    return score


def bn_scale(graph: ChannelGraph) -> dict[int, float]:
    """Per class: |gamma| of its BatchNorms (classes without one get no score)."""
    score: dict[int, float] = defaultdict(float)
    for member in graph.flow.members:
        bn = graph.gm.get_submodule(member.path) if member.role == "bn" else None
        if bn is not None and bn.weight is not None:
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


def _tensors(gm: fx.GraphModule, member: Member) -> list[tuple[str, torch.Tensor, int]]:
    """(qualified name, tensor, axis of the member's positions) of every tensor the member slices."""
    if member.role == "param":
        return [(member.path, operator.attrgetter(member.path)(gm), member.axis)]
    m = gm.get_submodule(member.path)
    names = ("weight",) if member.role == "in" else ("weight", "bias")
    return [(f"{member.path}.{n}", getattr(m, n), weight_axis(m, member.role) if n == "weight" else 0) for n in names
            if isinstance(getattr(m, n, None), torch.Tensor)]


def weight_axis(m: nn.Module, role: str) -> int:
    """The axis of `m`'s weight that holds a member's channels: 1 for its inputs, 0 for its outputs and a
    depthwise layer's channels; the other way round for a dense transposed conv ((in, out, *kernel))."""
    flipped = isinstance(m, nn.modules.conv._ConvTransposeNd) and m.groups == 1
    return int((role == "in") != flipped)


def taylor(graph: ChannelGraph, data: Iterable, loss_fn: Callable | None = None,
           momentum: float | None = None) -> dict[int, float]:
    """Per class: (sum over its weights of w * dL/dw)^2, averaged over the batches of `data` (under
    torchrun the gradients of each global batch averaged across ranks first); with
    `momentum`, blended with the estimate an earlier run left on the class's members (core.smoothing)."""
    loss_fn = loss_fn or F.cross_entropy
    gm = graph.gm
    entries = [(graph.roots(m), _tensors(gm, m)) for m in graph.flow.members]
    tensors = {key: t for _, ts in entries for key, t, _ in ts}
    keys = list(tensors)
    flags = {k: t.requires_grad for k, t in tensors.items()}
    for t in tensors.values():
        t.requires_grad_(True)
    total: dict[int, float] = defaultdict(float)
    batches = 0
    try:
        with torch.enable_grad():
            for batch in data:
                x, y = split_batch(batch)
                grads = dict(zip(keys, distributed.mean(list(torch.autograd.grad(
                    loss_fn(gm(x), y), [tensors[k] for k in keys], allow_unused=True)))))
                per_class: dict[int, float] = defaultdict(float)
                for roots, ts in entries:
                    for key, t, axis in ts:
                        if grads[key] is None:
                            continue
                        prod = (t.detach() * grads[key]).double().movedim(axis, 0)
                        for root, v in zip(roots.tolist(), prod.reshape(len(roots), -1).sum(1).tolist()):
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
    owners = [m for m in graph.flow.members if m.role not in ("in", "param")]
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
        key = f"axis{member.axis}" if member.role == "param" else "in" if member.role == "in" else "out"
        kept[member.path][key] = 1 - torch.isin(roots, gone).float().mean().item()
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
        if name in kept:  # a parameter sliced along its channels (position embedding, layer scale)
            total += round(p.numel() * math.prod(kept[name].values()))
            continue
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
            hit = torch.tensor([r in classes for r in graph.roots(member).tolist()])
            if member.role == "param":
                operator.attrgetter(member.path)(graph.gm).index_fill_(member.axis, hit.nonzero().flatten(), 0)
            if member.role in PER_CHANNEL:
                continue
            m = graph.gm.get_submodule(member.path)
            m.weight.index_fill_(weight_axis(m, member.role), hit.nonzero().flatten().to(m.weight.device), 0)
            if member.role != "in" and m.bias is not None:
                m.bias[hit] = 0


def _kept(graph: ChannelGraph, ids: torch.Tensor, removed: set[int]) -> torch.Tensor:
    return torch.tensor([graph.flow.find(e) not in removed for e in ids.tolist()], dtype=torch.bool)


def _alive(graph: ChannelGraph, ids: torch.Tensor) -> torch.Tensor:
    """Which positions are not zeros an earlier removal left (flow_spread)."""
    return torch.tensor([graph.flow.blocked.get(e) != REMOVED for e in ids.tolist()], dtype=torch.bool)


def remove(graph: ChannelGraph, removed: set[int]) -> int:
    """Slice every member of `graph.gm` so the classes in `removed` are gone and rewrite the literal
    channel counts in its graph; modules are replaced (never edited in place, so a module shared with
    the caller's model is untouched). Returns the number of modules and attributes changed."""
    keep_out: dict[str, torch.Tensor] = {}
    keep_in: dict[str, torch.Tensor] = {}
    changed = 0
    for member in graph.flow.members:
        keep = torch.tensor([r not in removed for r in graph.roots(member).tolist()])
        if member.role == "param":
            if not keep.all():
                _slice_attribute(graph.gm, member.path, keep, member.axis)
                changed += 1
        else:
            (keep_in if member.role == "in" else keep_out)[member.path] = keep
    for path in sorted(set(keep_out) | set(keep_in)):
        out, inp = keep_out.get(path), keep_in.get(path)
        if (out is None or out.all()) and (inp is None or inp.all()):
            continue
        set_module(graph.gm, path, _sliced(graph.gm.get_submodule(path), out, inp))
        changed += 1
    nodes = {n.name: n for n in graph.gm.graph.nodes}
    for fix in graph.flow.fixups:
        node = nodes[fix.node]
        size = fix.value if fix.ids is None else int(_kept(graph, fix.ids, removed).sum())
        args = list(node.args)
        old = args[fix.index] if fix.item is None else args[fix.index][fix.item]
        if fix.bound is not None:  # a slice of the channel axis: one of its bounds
            size = slice(size, old.stop, old.step) if fix.bound == "start" else slice(old.start, size, old.step)
        if fix.item is None:
            args[fix.index] = size
        else:
            seq = list(args[fix.index])
            seq[fix.item] = size
            args[fix.index] = type(args[fix.index])(seq)
        node.args = tuple(args)
    for name, ids in graph.flow.means:  # mean over fewer channels * kept / all = their sum / all
        kept = int(_kept(graph, ids, removed).sum())
        if kept < len(ids):
            node = nodes[name]
            with graph.gm.graph.inserting_after(node):
                scaled = graph.gm.graph.call_function(operator.mul, (node, kept / len(ids)))
            node.replace_all_uses_with(scaled, delete_user_cb=lambda user: user is not scaled)
    for name, scale in graph.flow.scales:  # sdpa's implicit 1 / sqrt(head_dim), of the head_dim it had
        nodes[name].kwargs = {**nodes[name].kwargs, "scale": scale}
    for name, ids in graph.flow.spreads:  # a conv along the channel axis keeps its width, zeros where they went
        kept = _kept(graph, ids, removed)
        if not kept.all():
            respread(graph.gm, name, kept & _alive(graph, ids))
    if graph.flow.fixups or graph.flow.means or graph.flow.scales or graph.flow.spreads:
        graph.gm.recompile()
    return changed


def _slice_attribute(gm: fx.GraphModule, name: str, keep: torch.Tensor, axis: int) -> None:
    """Replace the tensor attribute `name` by its slice; its owner module is replaced by a shallow copy
    first, so a module shared with the caller's model keeps its tensor."""
    path, _, attr = name.rpartition(".")
    owner = gm.get_submodule(path)
    if owner is not gm:
        fresh = copy.copy(owner)
        for d in ("_parameters", "_buffers", "_modules"):
            fresh.__dict__[d] = dict(owner.__dict__[d])
        set_module(gm, path, fresh)
        owner = fresh
    t = getattr(owner, attr)
    data = t.detach().index_select(axis, keep.nonzero().flatten().to(t.device)).contiguous()
    if isinstance(t, nn.Parameter):
        setattr(owner, attr, nn.Parameter(data, requires_grad=t.requires_grad))
    elif attr in owner._buffers:
        owner._buffers[attr] = data
    else:
        setattr(owner, attr, data)


def as_removed(graph: ChannelGraph, classes: set[int]) -> fx.GraphModule:
    """`graph.gm` computing what removing `classes` gives, with those channels still in place: its norms over
    channels take their statistics without them (so do var, std, amax and amin over channels), and a conv
    along the channel axis reads them as 0 (a new graph over the same weights; `graph.gm` itself where there
    is none of these). Zeroed channels (`zero`) are removed losslessly against this reference."""
    if not graph.flow.norms and not graph.flow.spreads and not graph.flow.reduced:
        return graph.gm
    gm = fx.GraphModule(graph.gm, copy.deepcopy(graph.gm.graph))  # a new graph over the same weights
    nodes = {n.name: n for n in gm.graph.nodes}
    for i, norm in enumerate(graph.flow.norms):
        node = nodes[norm.node]
        gm.register_buffer(f"_fxprune_mask{i}", _kept(graph, norm.ids, classes))
        with gm.graph.inserting_before(node):
            mask = gm.graph.get_attr(f"_fxprune_mask{i}")
            if node.op == "call_module":
                m = gm.get_submodule(node.target)
                affine = [gm.graph.get_attr(f"{node.target}.{k}") if getattr(m, k, None) is not None else None
                          for k in ("weight", "bias")]
                eps = m.eps
            else:
                names = {"layer_norm": ("shape", "weight", "bias", "eps"), "rms_norm": ("shape", "weight", "eps"),
                         "group_norm": ("groups", "weight", "bias", "eps")}[op_name(node)]
                given = dict(zip(names, node.args[1:]), **node.kwargs)
                affine, eps = [given.get("weight"), given.get("bias")], given.get("eps", 1e-5)
            masked = gm.graph.call_function(_masked_norm, (node.args[0], mask, *affine, eps, norm.axis,
                                                           norm.dims, norm.rms, norm.groups))
        node.replace_all_uses_with(masked)
        gm.graph.erase_node(node)
    for i, (name, ids, axis) in enumerate(graph.flow.reduced):
        node = nodes[name]
        gm.register_buffer(f"_fxprune_kept{i}", _kept(graph, ids, classes).nonzero().flatten())
        with gm.graph.inserting_before(node):
            index = gm.graph.get_attr(f"_fxprune_kept{i}")
            kept = gm.graph.call_method("index_select", (node.args[0], axis, index))
        node.args = (kept, *node.args[1:])
    for i, (name, ids) in enumerate(graph.flow.spreads):
        conv = nodes[name]
        gm.register_buffer(f"_fxprune_read{i}", _kept(graph, ids, classes))
        with gm.graph.inserting_before(conv):
            read = gm.graph.call_function(operator.mul, (conv.args[0], gm.graph.get_attr(f"_fxprune_read{i}")))
        conv.args = (read, *conv.args[1:])
    gm.recompile()
    return gm


def _masked_norm(x, mask, weight, bias, eps, axis: int, dims: tuple[int, ...], rms: bool, groups: int):
    shape = [1] * x.dim()
    shape[axis] = -1
    m = mask.view(shape).to(device=x.device, dtype=x.dtype).expand_as(x)
    xs, ms = x.unflatten(axis, (groups, -1)), m.unflatten(axis, (groups, -1))  # statistics per group
    dims = tuple(d + (d > axis) for d in dims if d != axis) + (axis + 1,)
    count = ms.sum(dims, keepdim=True)
    mean = 0 if rms else (xs * ms).sum(dims, keepdim=True) / count
    var = ((xs - mean) ** 2 * ms).sum(dims, keepdim=True) / count
    y = ((xs - mean) / torch.sqrt(var + (torch.finfo(x.dtype).eps if eps is None else eps))).flatten(axis, axis + 1)
    y = y * weight.view(shape) if weight is not None else y
    return y + bias.view(shape) if bias is not None else y


def _sliced(m: nn.Module, out: torch.Tensor | None, inp: torch.Tensor | None) -> nn.Module:
    new = copy.deepcopy(m)

    def cut(name: str, mask: torch.Tensor, dim: int = 0) -> None:
        t = getattr(new, name, None)
        if t is None:
            return
        data = same_format(t.detach().index_select(dim, mask.nonzero().flatten().to(t.device)), t)
        if isinstance(t, nn.Parameter):
            setattr(new, name, nn.Parameter(data, requires_grad=t.requires_grad))
        else:
            setattr(new, name, data)

    if out is not None:
        cut("weight", out, weight_axis(m, "out"))
        for name in ("bias", "running_mean", "running_var"):
            cut(name, out)
        history = stored(new, CHANNELS)
        if history is not None and len(history) == len(out):  # the running importance follows its channels
            new.__dict__[CHANNELS] = history[out]
        n = int(out.sum())
        for attr in ("out_channels", "out_features", "num_features", "num_channels"):
            if hasattr(new, attr):
                setattr(new, attr, n)
        if hasattr(new, "normalized_shape"):
            new.normalized_shape = (n,)
        if getattr(new, "groups", 1) > 1 and m.groups == m.in_channels and m.out_channels % m.in_channels == 0:
            new.groups = new.in_channels = n // (m.out_channels // m.in_channels)  # depthwise, k outputs per input
    if inp is not None:
        cut("weight", inp, weight_axis(m, "in"))
        n = int(inp.sum()) * getattr(new, "groups", 1)  # a grouped conv's member lists one group's inputs
        for attr in ("in_channels", "in_features"):
            if hasattr(new, attr):
                setattr(new, attr, n)
    return new
