"""Where channels flow in an FX graph: the analysis behind channel groups.

Every output channel of a conv/linear layer is an *element*. Propagating shapes node by node
(ShapeProp), each tensor that carries channels gets `(axis, ids)`: the element id behind every
position of its channel axis. Elementwise ops, BatchNorm, pooling and depthwise convs keep the ids;
`add`/`mul` of two channel tensors unite the ids position by position (residuals, SE gates);
`cat` along channels concatenates them (a self-concat repeats them); `chunk` along channels cuts
them into equal parts and unites position j of every part (so every part loses the same positions
and the chunks stay aligned: gated MLPs); flatten and permutes move or repeat them. Conv/linear layers read them (`in`) and start new ones (`out`). Elements united by
this make one *class*: channels that must be removed together.

Any op this file does not understand is a *barrier*: every element reaching it is blocked with the
op's name as the reason, so its class is kept whole. Never guess.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from fxprune.analysis.counting import propagate_shapes, tied_modules
from fxprune.core.lowrank import is_conv, is_dense_layer, torch_base
from fxprune.core.meta import ROLE
from fxprune.nn import BasisScalingConv, ChannelScaling

STATELESS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Mish,
             nn.LeakyReLU, nn.ELU, nn.Identity, nn.Dropout, nn.Dropout2d, nn.AdaptiveAvgPool2d, nn.AvgPool2d,
             nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Dropout1d, nn.Dropout3d, nn.AdaptiveAvgPool1d, nn.AvgPool1d,
             nn.MaxPool1d, nn.AdaptiveMaxPool1d, nn.AdaptiveAvgPool3d, nn.AvgPool3d, nn.MaxPool3d, nn.AdaptiveMaxPool3d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ELEMENTWISE = {"relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "sigmoid_", "hardsigmoid", "hardswish",
               "hardtanh", "tanh", "mish", "leaky_relu", "elu", "softplus", "dropout", "dropout2d", "contiguous",
               "clone", "clamp", "clamp_", "clamp_min", "neg", "abs", "exp", "sqrt", "float", "detach",
               "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "max_pool2d", "interpolate",
               "adaptive_avg_pool1d", "adaptive_max_pool1d", "avg_pool1d", "max_pool1d", "adaptive_avg_pool3d",
               "adaptive_max_pool3d", "avg_pool3d", "max_pool3d",
               "upsample", "drop_path"}
BINARY = {"add", "iadd", "add_", "sub", "sub_", "mul", "imul", "mul_", "truediv", "div", "div_"}
NEUTRAL = {"size", "dim", "getattr", "numel"}  # read metadata only


def op_name(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def is_batchnorm(m: nn.Module) -> bool:
    return type(m) in BATCHNORMS or type(m).__name__ == "BatchNormAct2d"


@dataclass
class Member:
    """A parameterised module that slices along a channel axis: role `out` (weight rows), `in`
    (weight columns), `dw` (depthwise conv: both), `bn` (per-channel affine and statistics) or
    `scale` (fxprune.nn.ChannelScaling)."""

    path: str
    role: str
    ids: torch.Tensor  # element id of each position (of its output channels for out/dw/bn, inputs for in)


@dataclass
class ChannelFlow:
    parent: list[int] = field(default_factory=list)
    blocked: dict[int, str] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)
    value: dict[fx.Node, tuple[int, torch.Tensor]] = field(default_factory=dict)

    def fresh(self, n: int) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return torch.arange(start, start + n)

    def find(self, e: int) -> int:
        root = e
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[e] != root:
            self.parent[e], e = root, self.parent[e]
        return root

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def block(self, ids: torch.Tensor, reason: str) -> None:
        for e in ids.unique().tolist():
            self.blocked.setdefault(e, reason)


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _basis_reason(node: fx.Node) -> str | None:
    return "bases of a decomposed layer (prune-basis prunes them)" if node.meta.get(ROLE) == "basis" else None


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
    return found


class _Propagator:
    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.flow = ChannelFlow()
        self.calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
        self.read_directly = {n.target.rpartition(".")[0] for n in gm.graph.nodes if n.op == "get_attr"}
        self.tied = tied_modules(gm)
        self.parts: dict[fx.Node, list[tuple[int, torch.Tensor]]] = {}  # the chunks of a chunk node

    def barrier(self, node: fx.Node, reason: str) -> None:
        for arg in _tensor_args(node):
            if arg in self.flow.value:
                self.flow.block(self.flow.value[arg][1], reason)

    def start(self, node: fx.Node, axis: int, n: int, path: str, blocked: str | None = None) -> None:
        ids = self.flow.fresh(n)
        self.flow.members.append(Member(path, "out", ids))
        if blocked:
            self.flow.block(ids, blocked)
        self.flow.value[node] = (axis, ids)

    def run(self, inputs: tuple) -> ChannelFlow:
        propagate_shapes(self.gm, inputs)
        for node in self.gm.graph.nodes:
            if node.op == "output":
                self.barrier(node, "reaches the model output")
            elif node.op in ("call_module", "call_function", "call_method"):
                try:
                    if node.op == "call_module":
                        self.module(node, self.gm.get_submodule(node.target))
                    else:
                        self.function(node, op_name(node))
                except (IndexError, KeyError, TypeError, ValueError) as e:  # a form of the op the rules miss
                    self.flow.value.pop(node, None)
                    self.barrier(node, f"{op_name(node)} ({node.name}) in a form not understood ({type(e).__name__})")
        return self.flow

    # modules ---------------------------------------------------------------------------------
    def module(self, node: fx.Node, m: nn.Module) -> None:
        path, src = node.target, node.args[0] if node.args else None
        tracked = self.flow.value.get(src)
        if isinstance(m, STATELESS):
            self.keep(node, src)
            return
        if type(m) is nn.Flatten and tracked is not None:
            self.merge(node, "flatten")
            return
        shared = (f"module {path} is called {self.calls[path]} times" if self.calls[path] > 1 else
                  f"the graph reads the weights of {path} directly" if path in self.read_directly else
                  f"{path} shares its weights with {self.tied[path]}" if path in self.tied else None)
        if shared and any(True for _ in m.parameters(recurse=False)):
            self.barrier(node, shared)
            if is_dense_layer(m):
                self.start(node, 1 if is_conv(m) else len(_shape(node)) - 1, m.weight.shape[0], path, shared)
            return
        if is_batchnorm(m):
            self.keep(node, src, member=(path, "bn"), axis=1)
        elif isinstance(m, ChannelScaling):
            self.keep(node, src, member=(path, "scale"), axis=m.dim % len(_shape(node)))
        elif is_conv(m) or isinstance(m, BasisScalingConv) and m.pointwise_dims >= 1:  # 1-D, 2-D, 3-D
            self.conv(node, m, path, tracked)
        elif torch_base(m) is nn.Linear or isinstance(m, BasisScalingConv) and m.pointwise_dims == 0:
            last = len(_shape(node)) - 1
            self.read(node, path, tracked, last)
            self.start(node, last, m.weight.shape[0], path, _basis_reason(node))
        else:
            self.barrier(node, f"module {path} ({type(m).__name__})")

    def conv(self, node: fx.Node, m: nn.Module, path: str, tracked) -> None:
        groups, cout = m.groups, m.weight.shape[0]
        cin = m.weight.shape[1] * groups
        if groups == cin == cout and groups > 1:
            if tracked is not None and tracked[0] == 1:
                self.flow.members.append(Member(path, "dw", tracked[1]))
                self.flow.value[node] = tracked
            else:
                self.start(node, 1, cout, path, "depthwise conv on untracked channels")
                self.flow.members[-1].role = "dw"
            return
        if groups > 1:
            self.barrier(node, f"grouped conv {path} (groups={groups})")
            self.start(node, 1, cout, path, f"grouped conv {path} (groups={groups})")
            return
        self.read(node, path, tracked, 1)
        self.start(node, 1, cout, path, _basis_reason(node))

    def read(self, node: fx.Node, path: str, tracked, axis: int) -> None:
        if tracked is None:
            return
        if tracked[0] != axis:
            self.flow.block(tracked[1], f"{path} reads channels along another axis")
        else:
            self.flow.members.append(Member(path, "in", tracked[1]))

    def keep(self, node: fx.Node, src, member: tuple[str, str] | None = None, axis: int | None = None) -> None:
        tracked = self.flow.value.get(src)
        if tracked is None:
            return
        if axis is not None and tracked[0] != axis:
            self.flow.block(tracked[1], f"{op_name(node)} acts on another axis")
            return
        if member:
            self.flow.members.append(Member(*member, tracked[1]))
        self.flow.value[node] = tracked

    # functions and methods -------------------------------------------------------------------
    def function(self, node: fx.Node, name: str) -> None:
        if name in NEUTRAL or not any(a in self.flow.value for a in _tensor_args(node)):
            return
        src = node.args[0]
        if name in ELEMENTWISE and all(a is src for a in _tensor_args(node)):
            self.keep(node, src)
        elif name in BINARY or node.target in (operator.add, operator.mul):
            self.binary(node, name)
        elif name == "cat":
            self.cat(node)
        elif name in ("flatten", "view", "reshape"):
            self.merge(node, name)
        elif name in ("permute", "transpose"):
            self.permute(node, name)
        elif name in ("mean", "sum", "amax"):
            self.reduce(node, name)
        elif name == "chunk":
            self.chunk(node)
        elif name == "getitem" and src in self.parts:
            self.flow.value[node] = self.parts[src][node.args[1]]
        elif name == "getitem":
            self.getitem(node)
        elif name == "pad" and len(_shape(src) or ()) - len(node.args[1]) // 2 > self.flow.value[src][0]:
            self.keep(node, src)
        else:
            self.barrier(node, f"{name} ({node.name})")

    def binary(self, node: fx.Node, name: str) -> None:
        out = _shape(node)
        if out is None:
            return self.barrier(node, f"{name} ({node.name}) without a tensor result")
        result = None
        for arg in node.args[:2]:
            shape = _shape(arg)
            if shape is None:
                if isinstance(arg, fx.Node):  # a tensor we know nothing about
                    return self.barrier(node, f"{name} ({node.name}) with an operand of unknown shape")
                continue
            tracked = self.flow.value.get(arg)
            if tracked is None:
                continue
            axis = tracked[0] - len(shape) + len(out)  # broadcasting aligns from the right
            if result is None:
                result = (axis, tracked[1])
            elif result[0] != axis:
                return self.barrier(node, f"{name} ({node.name}) mixes channel axes")
            elif 1 in (len(result[1]), len(tracked[1])) and len(result[1]) != len(tracked[1]):
                single, result = (result, tracked) if len(result[1]) == 1 else (tracked, result)
                self.flow.block(single[1], f"{name} ({node.name}) broadcasts this one channel over many")
                result = (axis, result[1])
            else:
                self.flow.union(result[1], tracked[1])
        if result is None:
            return
        for arg in node.args[:2]:  # an untracked operand must broadcast along the channel axis
            shape = _shape(arg)
            if shape is not None and arg not in self.flow.value:
                pos = result[0] - len(out) + len(shape)
                if pos >= 0 and shape[pos] != 1:
                    return self.barrier(node, f"{name} ({node.name}) with a per-channel tensor "
                                              f"({arg.name}) that is not a layer output")
        self.flow.value[node] = result

    def cat(self, node: fx.Node) -> None:
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out = _shape(node)
        tracked = [self.flow.value.get(t) for t in tensors]
        dim = dim % len(out)
        if any(t is None for t in tracked) or len({t[0] for t in tracked}) != 1:
            return self.barrier(node, f"cat ({node.name}) of untracked tensors")
        axis = tracked[0][0]
        if dim == axis:
            self.flow.value[node] = (axis, torch.cat([t[1] for t in tracked]))
        elif len({len(t[1]) for t in tracked}) != 1:
            self.barrier(node, f"cat ({node.name}) of tensors with different channel counts")
        else:
            for t in tracked[1:]:
                self.flow.union(tracked[0][1], t[1])
            self.flow.value[node] = tracked[0]

    def chunk(self, node: fx.Node) -> None:
        """x.chunk(k, dim) along the channel axis into k equal parts (sizes that do not divide
        evenly would shift when channels go: a barrier). The node itself keeps every id, so any
        user but getitem blocks them all."""
        src = node.args[0]
        axis, ids = self.flow.value[src]
        k = node.args[1] if len(node.args) > 1 else node.kwargs["chunks"]
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        if dim % len(_shape(src)) != axis:
            self.parts[node] = [(axis, ids)] * k
        elif len(ids) % k:
            return self.barrier(node, f"chunk ({node.name}) into unequal parts")
        else:
            parts = ids.view(k, -1)
            for part in parts[1:]:
                self.flow.union(parts[0], part)
            self.parts[node] = [(axis, part) for part in parts]
        self.flow.value[node] = (axis, ids)

    def merge(self, node: fx.Node, name: str) -> None:
        """flatten / view / reshape that only merge consecutive dims."""
        src = node.args[0]
        axis, ids = self.flow.value[src]
        old, new = _shape(src), _shape(node)
        k = len(old) - len(new) + 1  # old dims s..s+k-1 become new dim s
        fits = [s for s in range(len(new)) if k >= 1 and old[:s] == new[:s] and old[s + k:] == new[s + 1:]
                and math.prod(old[s:s + k]) == new[s]]
        if not fits:
            return self.barrier(node, f"{name} ({node.name}) that splits or reorders the channel axis")
        s = fits[0]
        if axis < s:
            self.flow.value[node] = (axis, ids)
        elif axis >= s + k:
            self.flow.value[node] = (axis - k + 1, ids)
        else:
            view = [1] * k
            view[axis - s] = len(ids)
            self.flow.value[node] = (s, ids.view(view).expand(old[s:s + k]).reshape(-1))

    def permute(self, node: fx.Node, name: str) -> None:
        src = node.args[0]
        axis, ids = self.flow.value[src]
        n = len(_shape(src))
        dims = list(range(n))
        if name == "transpose":
            a, b = (d % n for d in node.args[1:3])
            dims[a], dims[b] = dims[b], dims[a]
        else:
            given = node.args[1:] if not isinstance(node.args[1], (tuple, list)) else node.args[1]
            dims = [d % n for d in given]
        self.flow.value[node] = (dims.index(axis), ids)

    def reduce(self, node: fx.Node, name: str) -> None:
        src = node.args[0]
        axis, ids = self.flow.value[src]
        n = len(_shape(src))
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        dims = [dims] if isinstance(dims, int) else dims
        if dims is None or axis in {d % n for d in dims}:
            return self.barrier(node, f"{name} over the channel axis ({node.name})")
        self.flow.value[node] = (axis if keepdim else axis - sum(1 for d in dims if d % n < axis), ids)

    def getitem(self, node: fx.Node) -> None:
        src, index = node.args
        axis, ids = self.flow.value[src]
        index = index if isinstance(index, tuple) else (index,)
        if not all(isinstance(i, (int, slice)) for i in index):
            return self.barrier(node, f"indexing ({node.name})")
        if axis < len(index) and index[axis] != slice(None):
            return self.barrier(node, f"indexing the channel axis ({node.name})")
        self.flow.value[node] = (axis - sum(1 for i in index[:axis] if isinstance(i, int)), ids)


def propagate(gm: fx.GraphModule, inputs: tuple) -> ChannelFlow:
    """Trace channel elements through `gm` with `inputs` (run once for shapes)."""
    return _Propagator(gm).run(inputs)
