"""Where channels flow in an FX graph: the analysis behind channel groups.

Every output channel of a conv/linear layer is an *element*. Propagating shapes node by node
(ShapeProp), each tensor that carries channels gets `(axis, ids)`: the element id behind every position
of its channel axis. Ops that keep positions keep the ids; `add`/`mul` unite them position by position
(residuals, SE gates), `cat` concatenates them, `chunk` unites position j of every part; conv/linear
layers read them (`in`) and start new ones (`out`). Elements united make one *class*: channels removed
together. Norms over the channel axis keep the ids and slice their affine; tensors read directly
(`get_attr`) are sliced with the channels they meet; literal sizes in the graph are rewritten (`Fixup`).

The rules live by concept: this file (layers, elementwise ops, residuals, concat, reshapes), flow_norms,
flow_attributes, flow_attention (heads); flow_types holds the data. Any op they do not understand is a
*barrier*: every element reaching it is blocked with the op's name as the reason. Never guess.
"""

from __future__ import annotations

import math
import operator
from collections import Counter

import torch
import torch.fx as fx
from torch import nn

from fxprune.analysis.counting import propagate_shapes, tied_modules
from fxprune.analysis.flow_attention import AttentionRules
from fxprune.analysis.flow_attributes import AttributeRules
from fxprune.analysis.flow_norms import NormRules
from fxprune.analysis.flow_spread import SpreadRules, along_channels, narrow, widen
from fxprune.analysis.flow_types import (NEUTRAL, NORMS, SHAPE_ONLY, TOKENS_FIRST, TOKENS_ONLY, ChannelFlow, Fixup,
                                         Member, node_arg, op_name, tensor_args, tensor_shape)
from fxprune.core.lowrank import is_conv, is_dense_layer, torch_base, type_name
from fxprune.core.meta import ROLE
from fxprune.nn import BasisScalingConv, ChannelScaling

STATELESS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Mish,
             nn.LeakyReLU, nn.ELU, nn.Identity, nn.Dropout, nn.Dropout2d, nn.AdaptiveAvgPool2d, nn.AvgPool2d,
             nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Dropout1d, nn.Dropout3d, nn.AdaptiveAvgPool1d, nn.AvgPool1d,
             nn.MaxPool1d, nn.AdaptiveMaxPool1d, nn.AdaptiveAvgPool3d, nn.AvgPool3d, nn.MaxPool3d, nn.AdaptiveMaxPool3d,
             nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
PADS = (nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
        nn.modules.padding._ReplicationPadNd, nn.modules.padding._CircularPadNd)  # pad their last len(padding)/2 dims
# convs with another forward that computes a conv of the same channels (timm's Conv2dSame: "same" padding
# computed from the input size, then F.conv2d with its own weight)
SAME_CHANNELS_CONVS = ("timm.layers.conv2d_same.Conv2dSame",)
ELEMENTWISE = {"relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "sigmoid_", "hardsigmoid", "hardswish",
               "hardtanh", "tanh", "mish", "leaky_relu", "elu", "softplus", "dropout", "dropout2d", "contiguous",
               "clone", "clamp", "clamp_", "clamp_min", "neg", "abs", "exp", "sqrt", "float", "detach",
               "drop_path", "stochastic_depth", "pow", "square", "rsqrt", "reciprocal",
               "to",  # with a dtype or device only (a tensor argument is not elementwise)
               "normalize"}  # F.normalize: a p-norm over the channel axis is the same without zeroed channels
# ops over the dims after axis 1 (N, C, *spatial), channel by channel where the channels are on axis 1; their
# sizes may be numbers read in the graph (interpolate to another map's size: GhostNet V3's short path)
SPATIAL = {"adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "max_pool2d", "interpolate", "upsample",
           "adaptive_avg_pool1d", "adaptive_max_pool1d", "avg_pool1d", "max_pool1d", "adaptive_avg_pool3d",
           "adaptive_max_pool3d", "avg_pool3d", "max_pool3d",
           "pool_up_to"}  # fxprune.core.plain_forwards (timm's VGG head)
SPATIAL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                   nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d,
                   nn.MaxPool2d, nn.MaxPool3d, nn.Upsample)
try:  # torchvision's Swin patch merging: the 2x2 neighbours' channels side by side (x0, x1, x2, x3 along C)
    from torchvision.models.swin_transformer import _patch_merging_pad as TV_PATCH_MERGING
except ImportError:  # a torchvision without it
    TV_PATCH_MERGING = None
BINARY = {"add", "iadd", "add_", "sub", "sub_", "mul", "imul", "mul_", "truediv", "div", "div_", "maximum", "minimum"}
TERNARY = {"addcmul", "addcdiv"}  # a + value * b * c (or b / c), elementwise


def is_batchnorm(m: nn.Module) -> bool:
    return type(m) in BATCHNORMS or type(m).__name__ == "BatchNormAct2d"


def _pointwise(m: nn.Module) -> bool:
    """A plain conv whose every output position reads the same position of its input (kernel 1, stride 1,
    no padding): along the spatial axes it acts position by position."""
    return (type(m) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and all(k == 1 for k in m.kernel_size)
            and all(s == 1 for s in m.stride) and m.padding_mode == "zeros"
            and (isinstance(m.padding, str) or not any(m.padding)))  # "same" with kernel 1 pads nothing


def _basis_reason(node: fx.Node) -> str | None:
    return "bases of a decomposed layer (prune-basis prunes them)" if node.meta.get(ROLE) == "basis" else None


class _Propagator(AttributeRules, NormRules, AttentionRules, SpreadRules):
    def __init__(self, gm: fx.GraphModule, heads: str = "whole"):
        self.gm = gm
        self.heads = heads  # "whole" or "dim": what a reshape into (heads, head_dim) makes a unit (flow_attention)
        self.flow = ChannelFlow()
        self.calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
        self.first_call: dict[str, dict[str, torch.Tensor]] = {}  # a module called more than once: ids by role
        self.read_directly = {n.target.rpartition(".")[0] for n in gm.graph.nodes  # (not just its dtype or device)
                              if n.op == "get_attr" and not all(_dtype_or_device(u) for u in n.users)}
        self.tied = tied_modules(gm)
        self.parts: dict[fx.Node, list[tuple[int, torch.Tensor]]] = {}  # the chunks of a chunk node
        self.origin: dict[fx.Node, tuple[str, list[int | None]]] = {}  # attribute read, its axis behind each dim
        self.used: set[tuple[fx.Node, fx.Node]] = set()  # (attribute-derived node, user) understood
        self.attr_shape: dict[str, tuple[int, ...]] = {}
        self.shape_of: dict[fx.Node, fx.Node] = {}  # x.shape / x.size() -> x
        self.size_of: dict[fx.Node, torch.Tensor] = {}  # a channel count read as a number -> its channels
        self.merged: set[tuple[fx.Node, int]] = set()  # (reshape, output dim) where channels merge with others
        self.attr_sizes: list[tuple[fx.Node, int, str, int]] = []  # (reshape of an attribute, dim, name, axis)
        self.composite: dict[fx.Node, tuple[int, list]] = {}  # a cat of attributes: (dim, [(part, start, stop)])

    def barrier(self, node: fx.Node, reason: str) -> None:
        for arg in tensor_args(node):
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
            elif node.op == "get_attr":
                t = operator.attrgetter(node.target)(self.gm)
                if isinstance(t, torch.Tensor) and t.dim() > 0:
                    self.origin[node] = (node.target, list(range(t.dim())))
                    self.attr_shape[node.target] = tuple(t.shape)
            elif node.op in ("call_module", "call_function", "call_method"):
                try:
                    if node.op == "call_module":
                        self.module(node, self.gm.get_submodule(node.target))
                    else:
                        self.function(node, op_name(node))
                except (IndexError, KeyError, TypeError, ValueError) as e:  # a form of the op the rules miss
                    self.flow.value.pop(node, None)
                    self.barrier(node, f"{op_name(node)} ({node.name}) in a form not understood ({type(e).__name__})")
        self.check_attributes()
        self.check_sizes()
        return self.flow

    def module(self, node: fx.Node, m: nn.Module) -> None:
        before = len(self.flow.members)
        self.one_call(node, m)
        if self.calls[node.target] > 1:
            self.repeated(node.target, before)

    def repeated(self, path: str, before: int) -> None:
        """A module called more than once (CoaT's shared MLP and position encoding): its weights are sliced
        once, so each call's channels are the first call's. Its members from this call are united with
        those of the first and dropped; a role that only some calls have (an input the flow does not
        follow) blocks the channels of the calls that have it."""
        mine = [m for m in self.flow.members[before:] if m.path == path]
        if not mine and path not in self.first_call:
            return
        self.flow.members[before:] = [m for m in self.flow.members[before:] if m.path != path]
        if path not in self.first_call:
            self.first_call[path] = {m.role: m.ids for m in mine}
            self.flow.members[before:before] = mine
            return
        first, reason = self.first_call[path], f"module {path} is called {self.calls[path]} times, not always " \
                                                "on channels the analysis follows"
        for m in mine:
            if m.role in first and len(first[m.role]) == len(m.ids):
                self.flow.union(first[m.role], m.ids)
            else:
                self.flow.block(m.ids, reason)
        for role in set(first) - {m.role for m in mine}:
            self.flow.block(first[role], reason)

    def one_call(self, node: fx.Node, m: nn.Module) -> None:
        path, src = node.target, node.args[0] if node.args else None
        tracked = self.flow.value.get(src)
        if isinstance(m, STATELESS):
            self.keep(node, src, axis=1 if isinstance(m, SPATIAL_MODULES) else None)
            return
        if isinstance(m, PADS) and tracked is not None:
            if tracked[0] < len(tensor_shape(src)) - len(m.padding) // 2:
                return self.keep(node, src)
            return self.barrier(node, f"module {path} ({type(m).__name__} pads the channel axis)")
        if type(m) in (nn.Softmax, nn.LogSoftmax) and tracked is not None:
            if m.dim is None or m.dim % len(tensor_shape(src)) == tracked[0]:
                return self.barrier(node, f"module {path} ({type(m).__name__} over the channel axis)")
            return self.keep(node, src)
        if type(m) is nn.Flatten and tracked is not None:
            self.merge(node, "flatten")
            return
        shared = (f"the graph reads the weights of {path} directly" if path in self.read_directly else
                  f"{path} shares its weights with {self.tied[path]}" if path in self.tied else None)
        if shared and any(True for _ in m.parameters(recurse=False)):
            self.barrier(node, shared)
            if is_dense_layer(m):
                self.start(node, 1 if is_conv(m) else len(tensor_shape(node)) - 1, m.weight.shape[0], path, shared)
            return
        if is_batchnorm(m):
            self.keep(node, src, member=(path, "bn"), axis=1)
        elif isinstance(m, nn.modules.instancenorm._InstanceNorm):  # each channel on its own (RAFT's encoders)
            self.keep(node, src, member=(path, "bn"), axis=1)  # sliced (affine, statistics) or resized
        elif type(m) in NORMS and tracked is not None:
            self.norm_module(node, m, path, tracked)
        elif isinstance(m, ChannelScaling):
            self.keep(node, src, member=(path, "scale"), axis=m.dim % len(tensor_shape(node)))
        elif (is_conv(m) or isinstance(m, BasisScalingConv) and m.pointwise_dims >= 1  # 1-D, 2-D, 3-D
              or type_name(m) in SAME_CHANNELS_CONVS):
            self.conv(node, m, path, tracked)
        elif type(m) in TRANSPOSED:
            self.transposed(node, m, path, tracked)
        elif torch_base(m) is nn.Linear or isinstance(m, BasisScalingConv) and m.pointwise_dims == 0:
            last = len(tensor_shape(node)) - 1
            if tracked is not None and tracked[0] != last:  # MLP-Mixer's token MLP: channel by channel
                self.flow.value[node] = tracked  # (its own features, tokens, are left whole)
                return
            self.read(node, path, tracked, last)
            self.start(node, last, m.weight.shape[0], path, _basis_reason(node))
        else:
            self.barrier(node, f"module {path} ({type(m).__name__})")

    def conv(self, node: fx.Node, m: nn.Module, path: str, tracked) -> None:
        groups, cout = m.groups, m.weight.shape[0]
        cin = m.weight.shape[1] * groups
        if along_channels(node, m, tracked) and node.meta.get(ROLE) is None:  # ECA's gate
            return self.spread_conv(node, tracked)
        if tracked is not None and tracked[0] >= 2 and _pointwise(m):  # CoaT's aggregate over stacked scales
            self.flow.value[node] = tracked  # mixes along axis 1, position by position of the tracked axis
            return
        if groups == cin > 1 and cout % cin == 0 and tracked is not None and tracked[0] == 1 and (
                cout == cin or node.meta.get(ROLE) is None):  # depthwise, also with k outputs per input (FastViT)
            ids = tracked[1].repeat_interleave(cout // cin)  # an input and its k outputs go together
            self.flow.members.append(Member(path, "dw", ids))
            self.flow.value[node] = (1, ids)
            return
        if groups == cin == cout and groups > 1:
            if tracked is not None and tracked[0] == 1:
                self.flow.members.append(Member(path, "dw", tracked[1]))
                self.flow.value[node] = tracked
            else:
                self.start(node, 1, cout, path, "depthwise conv on untracked channels")
                self.flow.members[-1].role = "dw"
            return
        if groups > 1 and node.meta.get(ROLE) is None:
            return self.grouped(node, path, groups, cout, tracked)
        if groups > 1:
            self.barrier(node, f"grouped conv {path} (groups={groups})")
            self.start(node, 1, cout, path, f"grouped conv {path} (groups={groups})")
            return
        self.read(node, path, tracked, 1)
        self.start(node, 1, cout, path, _basis_reason(node))

    def transposed(self, node: fx.Node, m: nn.Module, path: str, tracked) -> None:
        """A transposed conv (LowFormer's upsampling): its weight is (in, out / groups, *kernel); dense, it reads
        its input channels and starts its own; depthwise, it keeps them."""
        if m.groups == m.in_channels == m.out_channels > 1 and tracked is not None and tracked[0] == 1:
            self.flow.members.append(Member(path, "dw", tracked[1]))
            self.flow.value[node] = tracked
        elif m.groups == 1:
            self.read(node, path, tracked, 1)
            self.start(node, 1, m.out_channels, path)
        else:
            self.barrier(node, f"grouped transposed conv {path} (groups={m.groups})")
            self.start(node, 1, m.out_channels, path, f"grouped transposed conv {path} (groups={m.groups})")

    def grouped(self, node: fx.Node, path: str, groups: int, cout: int, tracked) -> None:
        """A grouped conv keeps its groups equal: position j of every input group goes together (the
        member lists one group's positions: the weight's columns), and so does position j of every
        output group."""
        if tracked is not None and tracked[0] != 1:
            self.flow.block(tracked[1], f"{path} reads channels along another axis")
        elif tracked is not None:
            self.flow.members.append(Member(path, "in", self.flow.align(tracked[1].view(groups, -1))[0].clone()))
        self.start(node, 1, cout, path)
        self.flow.align(self.flow.value[node][1].view(groups, -1))

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

    def function(self, node: fx.Node, name: str) -> None:
        if name in NEUTRAL or name == "getitem":
            self.sizes(node, name)
        if name in ("linear", "conv1d", "conv2d", "conv3d") and tensor_shape(node) is not None:
            return self.layer_function(node, name)  # starts channels even on untracked inputs
        if (name in NEUTRAL or name in SHAPE_ONLY or self.derive(node, name)
                or not any(a in self.flow.value for a in tensor_args(node))):
            return
        src = node.args[0]
        if name == "type_as":  # the other tensor gives only its dtype
            if src in self.flow.value:
                self.keep(node, src)
        elif name in ELEMENTWISE and all(a is src or _dtype_or_device(a) for a in tensor_args(node)):
            self.keep(node, src)
        elif node.target in (widen, narrow) and src in self.flow.value:  # written by an earlier removal
            self.spread_function(node, name)
        elif name in SPATIAL and all(a is src or tensor_shape(a) is None for a in tensor_args(node)):
            self.keep(node, src, axis=1)
        elif name in BINARY or name in TERNARY or node.target in (operator.add, operator.mul):
            self.binary(node, name)
        elif name == "cat":
            self.cat(node)
        elif name == "stack":
            self.stack(node)
        elif name in ("view", "reshape", "expand"):
            self.reshape(node, name)
        elif name in ("view_as", "reshape_as"):
            self.reshape_as(node, name)
        elif name == "expand_as":
            self.expand_as(node)
        elif name == "flatten":
            self.merge(node, name)
        elif name in ("layer_norm", "rms_norm"):
            self.norm_function(node, name)
        elif name == "group_norm":
            self.group_norm_function(node)
        elif name in ("permute", "transpose", "swapaxes", "swapdims"):
            self.permute(node, name)
        elif name == "einsum":
            self.einsum(node)
        elif name in ("mean", "sum", "amax", "amin", "norm", "var", "std"):
            self.reduce(node, name)
        elif name == "chunk":
            self.chunk(node)
        elif name == "unsqueeze":
            self.unsqueeze(node)
        elif name == "squeeze":
            self.squeeze(node)
        elif name == "repeat":
            self.repeat(node)
        elif name == "repeat_interleave" and self.along_other_axis(node):  # GCViT's global query, per image
            self.keep(node, src)
        elif name == "unbind":
            self.unbind(node)
        elif name == "split":
            self.split_sizes(node)
        elif name in ("softmax", "log_softmax"):
            self.softmax(node, name)
        elif name == "matmul" or node.target is operator.matmul:
            self.matmul(node)
        elif name == "scaled_dot_product_attention":
            self.attention(node)
        elif name == "getitem" and src in self.parts:
            self.flow.value[node] = self.parts[src][node.args[1]]
        elif name == "getitem":
            self.getitem(node)
        elif (name in TOKENS_ONLY and self.flow.value[src][0] == len(tensor_shape(src)) - 1
              and tensor_shape(node)[-1] == tensor_shape(src)[-1]):  # tokens regrouped, the last axis whole
            self.flow.value[node] = (len(tensor_shape(node)) - 1, self.flow.value[src][1])
        elif name in TOKENS_FIRST and self.flow.value[src][0] == 1 and tensor_shape(node)[1] == tensor_shape(src)[1]:
            self.keep(node, src)
        elif node.target is TV_PATCH_MERGING and self.flow.value[src][0] == len(tensor_shape(src)) - 1:
            self.flow.value[node] = (self.flow.value[src][0], self.flow.value[src][1].repeat(4))
        elif name in ("roll", "flip") and self.on_other_axes(node):
            self.keep(node, src)
        elif name == "pad" and self.pads_other_axes(node):
            self.keep(node, src)
        else:
            self.barrier(node, f"{name} ({node.name})")

    def binary(self, node: fx.Node, name: str) -> None:
        out = tensor_shape(node)
        if out is None:
            return self.barrier(node, f"{name} ({node.name}) without a tensor result")
        result, operands = None, node.args[:3] if name in TERNARY else node.args[:2]
        for arg in operands:
            shape = tensor_shape(arg)
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
        for arg in operands:  # an untracked operand must broadcast along the channel axis
            shape = tensor_shape(arg)
            if shape is not None and arg not in self.flow.value:
                pos = result[0] - len(out) + len(shape)
                if pos >= 0 and shape[pos] != 1 and not self.adopt(arg, node, pos, result[1]):
                    return self.barrier(node, f"{name} ({node.name}) with a per-channel tensor "
                                              f"({arg.name}) that is not a layer output")
        self.flow.value[node] = result

    def cat(self, node: fx.Node) -> None:
        tensors = node.args[0]
        dim = node_arg(node, 1, "dim", 0)
        out = tensor_shape(node)
        tracked = [self.flow.value.get(t) for t in tensors]
        dim = dim % len(out)
        known = [t for t in tracked if t is not None]
        if len({t[0] for t in known}) != 1:
            return self.barrier(node, f"cat ({node.name}) of tensors with channels on different axes")
        axis, ids = known[0]
        if dim != axis:  # a class token or another attribute joins the channels along another axis
            tracked = [(axis, ids) if t is None and self.adopt(tensor, node, axis, ids) else t
                       for t, tensor in zip(tracked, tensors)]
        if any(t is None for t in tracked):
            return self.barrier(node, f"cat ({node.name}) of untracked tensors")
        if dim == axis:
            self.flow.value[node] = (axis, torch.cat([t[1] for t in tracked]))
        elif len({len(t[1]) for t in tracked}) != 1:
            self.barrier(node, f"cat ({node.name}) of tensors with different channel counts")
        else:
            for t in tracked[1:]:
                self.flow.union(tracked[0][1], t[1])
            self.flow.value[node] = tracked[0]

    def stack(self, node: fx.Node) -> None:
        """torch.stack(parts, dim): a new axis; every part's channels on the same axis, which the new one may
        shift, position j of every part together (rotary embeddings stack q's halves: heads stay heads)."""
        tensors, out = node.args[0], tensor_shape(node)
        dim = node_arg(node, 1, "dim", 0) % len(out)
        tracked = [self.flow.value.get(t) for t in tensors]
        if any(t is None for t in tracked) or len({(t[0], len(t[1])) for t in tracked}) != 1:
            return self.barrier(node, f"stack ({node.name}) of parts without the same channels")
        axis, ids = tracked[0]
        for _, other in tracked[1:]:
            self.flow.union(ids, other)
        self.flow.value[node] = (axis + 1 if dim <= axis else axis, ids)

    def chunk(self, node: fx.Node) -> None:
        """x.chunk(k, dim) along the channel axis into k equal parts (sizes that do not divide
        evenly would shift when channels go: a barrier). The node itself keeps every id, so any
        user but getitem blocks them all."""
        src = node.args[0]
        axis, ids = self.flow.value[src]
        k = node_arg(node, 1, "chunks")
        dim = node_arg(node, 2, "dim", 0)
        if dim % len(tensor_shape(src)) != axis:
            self.parts[node] = [(axis, ids)] * k
        elif len(ids) % k:
            return self.barrier(node, f"chunk ({node.name}) into unequal parts")
        else:
            self.parts[node] = [(axis, part) for part in self.flow.align(ids.view(k, -1))]
        self.flow.value[node] = (axis, ids)

    def reshape(self, node: fx.Node, name: str) -> None:
        """view / reshape / expand: where the channel axis stays one whole dim with the same elements
        before it, only the other dims changed (windows, tokens, broadcasting); otherwise a merge."""
        src = node.args[0]
        axis, ids = self.flow.value[src]
        old, new = tensor_shape(src), tensor_shape(node)
        before = math.prod(old[:axis])
        if name == "expand":
            before, fits = 0, [axis + len(new) - len(old)] if new[axis + len(new) - len(old)] == old[axis] else []
        else:
            fits = [j for j in range(len(new)) if new[j] == old[axis] and math.prod(new[:j]) == before]
        if fits:
            self.flow.value[node] = (fits[0], ids)
            return self.literal_size(node, fits[0], ids)
        split = [j for j in range(len(new)) if math.prod(new[:j]) == before and new[j] != old[axis]]
        for j in split if name != "expand" else []:
            k = next((k for k in range(2, len(new) - j + 1) if math.prod(new[j:j + k]) == old[axis]), None)
            if k is not None:
                return self.split(node, j, new[j:j + k], ids)
        self.merge(node, name)

    def reshape_as(self, node: fx.Node, name: str) -> None:
        """x.reshape_as(y) / view_as: takes y's shape, which pruning changes with y's channels; understood where
        x's channel axis lands whole on y's and y carries the same channels there (LeViT's BatchNorm over
        flattened tokens, then back), so no size in the graph needs rewriting."""
        src, other = node.args[0], node.args[1]
        axis, ids = self.flow.value[src]
        old, new = tensor_shape(src), tensor_shape(node)
        fits = [j for j in range(len(new)) if new[j] == old[axis] and math.prod(new[:j]) == math.prod(old[:axis])]
        target = self.flow.value.get(other)
        if not fits or target is None or target[0] != fits[0] or not torch.equal(target[1], ids):
            return self.barrier(node, f"{name} ({node.name}) onto a tensor without the same channels")
        self.flow.value[node] = (fits[0], ids)

    def expand_as(self, node: fx.Node) -> None:
        """x.expand_as(y): y's shape, which pruning changes with y's channels; understood where y carries as
        many channels on x's channel axis (aligned from the right), which then go together (ECA's gate)."""
        src, other = node.args[0], node.args[1]
        tracked, target = self.flow.value.get(src), self.flow.value.get(other)
        axis, ids = tracked or (None, None)
        if tracked is not None:
            axis += len(tensor_shape(node)) - len(tensor_shape(src))
        if tracked is None or target is None or target[0] != axis or len(target[1]) != len(ids):
            return self.barrier(node, f"expand_as ({node.name}) onto a tensor without the same channels")
        self.flow.union(ids, target[1])
        self.flow.value[node] = (axis, ids)

    def literal_size(self, node: fx.Node, dim: int, ids: torch.Tensor, merged: bool = False) -> None:
        """Record the size argument of `dim` (view/reshape/expand) for rewriting: to the kept count
        (a literal, or a number computed in the graph: the channel dim's size is fixed), or, where the
        channels merge with other dims and the size is computed, to -1 if no other size is."""
        sizes, index = node.args[1:], None
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes, index = sizes[0], 1
        size = sizes[dim] if dim < len(sizes) else -1
        if size == -1 or not isinstance(size, (int, fx.Node)):
            return
        where = (node.name, 1 + dim if index is None else index, None if index is None else dim)
        if isinstance(size, fx.Node) and merged:
            if any(s == -1 for i, s in enumerate(sizes) if i != dim):
                return  # two sizes to infer: check_sizes keeps the channels whose count this is
            self.flow.fixups.append(Fixup(*where, None, -1))
        else:
            self.flow.fixups.append(Fixup(*where, ids))
        if isinstance(size, fx.Node):
            self.used.add((size, node))

    def on_other_axes(self, node: fx.Node) -> bool:
        """torch.roll(x, shifts, dims) / torch.flip(x, dims) with dims given, the channel axis not among them."""
        src = node.args[0]
        dims = node.kwargs.get("dims", node.args[-1] if len(node.args) > (2 if op_name(node) == "roll" else 1) else None)
        dims = [dims] if isinstance(dims, int) else dims
        n, axis = len(tensor_shape(src)), self.flow.value[src][0]
        return dims is not None and axis not in {d % n for d in dims}

    def pads_other_axes(self, node: fx.Node) -> bool:
        """F.pad leaves the channel axis alone: its pair of pads is absent or (0, 0)."""
        src, pads = node.args[0], node.args[1]
        n, axis = len(tensor_shape(src)), self.flow.value[src][0]
        i = n - 1 - axis  # pads[2i], pads[2i + 1] pad this axis
        return 2 * i >= len(pads) or pads[2 * i] == 0 and pads[2 * i + 1] == 0

    def split_sizes(self, node: fx.Node) -> None:
        """torch.split(x, sizes, dim): along the channel axis with a list of sizes, each part takes its
        channels and its size is rewritten; with one size, parts are equal and position j of every part
        goes together (as chunk); along another axis every part keeps the channels."""
        src = node.args[0]
        axis, ids = self.flow.value[src]
        n = len(tensor_shape(src))
        dim = node_arg(node, 2, "dim", 0) % n
        sizes = node.args[1] if len(node.args) > 1 else None
        if dim != axis:
            count = len(sizes) if isinstance(sizes, (list, tuple)) else -(-tensor_shape(src)[dim] // sizes)
            self.parts[node] = [(axis, ids)] * count
        elif isinstance(sizes, int) and len(ids) % sizes == 0:
            parts = self.flow.align(ids.view(-1, sizes))
            self.parts[node] = [(axis, part) for part in parts]
            self.flow.fixups.append(Fixup(node.name, 1, None, parts[0].clone()))
        elif isinstance(sizes, (list, tuple)) and all(isinstance(k, int) for k in sizes):
            parts = ids.split(list(sizes))
            self.parts[node] = [(axis, part) for part in parts]
            self.flow.fixups += [Fixup(node.name, 1, i, part) for i, part in enumerate(parts)]
        else:
            return self.barrier(node, f"split ({node.name}) into sizes not known")
        self.flow.value[node] = (axis, ids)

    def merge(self, node: fx.Node, name: str) -> None:
        """flatten / view / reshape that only merge consecutive dims."""
        src = node.args[0]
        axis, ids = self.flow.value[src]
        old, new = tensor_shape(src), tensor_shape(node)
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
            self.merged.add((node, s))
            if name != "flatten":
                self.literal_size(node, s, self.flow.value[node][1], merged=True)

    def permute(self, node: fx.Node, name: str) -> None:
        src = node.args[0]
        axis, ids = self.flow.value[src]
        n = len(tensor_shape(src))
        dims = list(range(n))
        if name in ("transpose", "swapaxes", "swapdims"):
            a, b = (d % n for d in node.args[1:3])
            dims[a], dims[b] = dims[b], dims[a]
        else:
            given = node.args[1:] if not isinstance(node.args[1], (tuple, list)) else node.args[1]
            dims = [d % n for d in given]
        self.flow.value[node] = (dims.index(axis), ids)

    def reduce(self, node: fx.Node, name: str) -> None:
        src = node.args[0]
        axis, ids = self.flow.value[src]
        n = len(tensor_shape(src))
        first = 2 if name == "norm" else 1  # x.norm(p, dim, keepdim)
        dims = node_arg(node, first, "dim", None)
        keepdim = node_arg(node, 3 if name in ("var", "std") else first + 1, "keepdim", False)  # var(x, dim, unbiased, keepdim)
        dims = [dims] if isinstance(dims, int) else dims
        if dims is not None and axis in {d % n for d in dims} and name in ("sum", "mean", "norm"):
            if name == "mean":  # zeroed channels add nothing to a sum: the mean is rescaled to stay that sum / n
                self.flow.means.append((node.name, ids))
            return  # a statistic per position, no channels (zeroed ones add nothing to a sum or a p-norm)
        if dims is not None and axis in {d % n for d in dims}:  # var, std, amax, amin: over the kept channels
            self.flow.reduced.append((node.name, ids, axis))  # once removed (the check's reference selects them)
            return
        if dims is None or axis in {d % n for d in dims}:
            return self.barrier(node, f"{name} over the channel axis ({node.name})")
        self.flow.value[node] = (axis if keepdim else axis - sum(1 for d in dims if d % n < axis), ids)

    def unsqueeze(self, node: fx.Node) -> None:
        src = node.args[0]
        axis, ids = self.flow.value[src]
        dim = node_arg(node, 1, "dim") % len(tensor_shape(node))
        self.flow.value[node] = (axis + (dim <= axis), ids)

    def squeeze(self, node: fx.Node) -> None:
        """x.squeeze(dims): the size-1 dims among `dims` (all where none are given) go; the channel axis
        must not be one of them (CoaT's head squeezes the dim its aggregate conv made 1)."""
        src = node.args[0]
        axis, ids = self.flow.value[src]
        shape = tensor_shape(src)
        dims = node_arg(node, 1, "dim", None)
        dims = range(len(shape)) if dims is None else [dims] if isinstance(dims, int) else dims
        gone = {d % len(shape) for d in dims if shape[d % len(shape)] == 1}
        if axis in gone:
            return self.barrier(node, f"squeeze of the channel axis ({node.name})")
        self.flow.value[node] = (axis - sum(1 for d in gone if d < axis), ids)

    def repeat(self, node: fx.Node) -> None:
        """x.repeat(*reps): tiled along the dims whose count is not 1 (XCiT's positions, along the batch);
        the channel axis must be tiled once."""
        src = node.args[0]
        axis, ids = self.flow.value[src]
        reps = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) else node.args[1:]
        axis += len(reps) - len(tensor_shape(src))
        if reps[axis] != 1:
            return self.barrier(node, f"repeat of the channel axis ({node.name})")
        self.flow.value[node] = (axis, ids)

    def along_other_axis(self, node: fx.Node) -> bool:
        """x.repeat_interleave(repeats, dim) with dim given, not the channel axis."""
        dim = node_arg(node, 2, "dim", None)
        src = node.args[0]
        return isinstance(dim, int) and dim % len(tensor_shape(src)) != self.flow.value[src][0]

    def getitem(self, node: fx.Node) -> None:
        """x[..] with ints and slices, or x[rows] with an integer tensor gathering along axis 0 (not the
        channel axis: Swin V2's position-bias table); a slice of the channel axis (step 1, literal bounds: GhostNet's
        `cat(...)[:, :out_chs]`) keeps the channels in its range, its bounds rewritten to the count kept
        before them (the channels outside it are read by nothing after it)."""
        src, index = node.args
        axis, ids = self.flow.value[src]
        meta = index.meta.get("tensor_meta") if isinstance(index, fx.Node) else None
        if meta is not None and axis > 0 and index not in self.flow.value and meta.dtype in (torch.int64, torch.int32):
            self.flow.value[node] = (axis + len(meta.shape) - 1, ids)  # x[rows]: axis 0 gathered, channels kept
            return
        item = None if not isinstance(index, tuple) else axis
        index = index if isinstance(index, tuple) else (index,)
        if index.count(Ellipsis) == 1 and None not in index:  # x[..., 0::2, :]: the dims it stands for, whole
            at, n = index.index(Ellipsis), len(tensor_shape(src)) - len(index) + 1
            index = index[:at] + (slice(None),) * n + index[at + 1:]
            item = axis if axis < at else axis - n + 1  # where the channel axis's slice is written
        if not all(isinstance(i, (int, slice)) for i in index):
            return self.barrier(node, f"indexing ({node.name})")
        if axis < len(index) and index[axis] != slice(None):
            sl = index[axis]
            if not isinstance(sl, slice) or sl.step not in (None, 1):
                return self.barrier(node, f"indexing the channel axis ({node.name})")
            start, stop, _ = sl.indices(len(ids))  # a bound computed in the graph: TypeError, a barrier
            self.flow.fixups += [Fixup(node.name, 1, item, ids[:end], bound=bound)
                                 for bound, end in (("start", start), ("stop", stop)) if getattr(sl, bound) is not None]
            ids = ids[start:stop]
        self.flow.value[node] = (axis - sum(1 for i in index[:axis] if isinstance(i, int)), ids)


def propagate(gm: fx.GraphModule, inputs: tuple, heads: str = "whole") -> ChannelFlow:
    """Trace channel elements through `gm` with `inputs` (run once for shapes)."""
    return _Propagator(gm, heads).run(inputs)


def _dtype_or_device(node: fx.Node) -> bool:
    """`x.dtype` / `x.device` read in the graph (an argument of `.to`), not a tensor."""
    return node.op == "call_function" and node.target is getattr and node.args[1:] in (("dtype",), ("device",))
