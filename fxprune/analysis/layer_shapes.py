"""The conv and linear layers of a graph as `fold` will leave them, after channels are removed and
pairs cut: what a latency table times (fxprune.analysis.latency).

A decomposed pair that still pays (r*(m + n) < m*n per group) is two layers, the basis layer and a
1x1 coef layer with r*g inputs; one that does not is merged back into one layer of the original's
shape. Scales and BatchNorm fold into these weights and cost nothing of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from fxprune.analysis.counting import is_counted
from fxprune.core.lowrank import find_pairs, pays, torch_base


@dataclass(frozen=True)
class Layer:
    """One plain torch layer: its class name (Conv1d-3d, Linear), input shape and hyperparameters."""

    kind: str
    inp: tuple[int, ...]
    out: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    bias: bool = True

    @property
    def channel_dim(self) -> int:
        return len(self.inp) - 1 if self.kind == "Linear" else 1

    @property
    def channels(self) -> int:
        return self.inp[self.channel_dim]

    def key(self) -> str:
        """A stable text key: the same layer gives the same key in every process."""
        return (f"{self.kind} in={'x'.join(map(str, self.inp))} out={self.out} k={self.kernel} s={self.stride} "
                f"p={self.padding} d={self.dilation} g={self.groups} bias={int(self.bias)}")

    def resized(self, channels: int, out: int) -> Layer:
        """The same layer reading `channels` and writing `out` channels; a depthwise layer's groups
        follow its channels, other groups are kept (widths rounded up to a multiple of them)."""
        channels, out = max(1, channels), max(1, out)
        groups = self.groups
        if groups > 1 and groups == self.channels:
            groups, out = channels, channels * (self.out // self.groups)
        elif groups > 1:
            channels, out = -(-channels // groups) * groups, -(-out // groups) * groups
        inp = list(self.inp)
        inp[self.channel_dim] = channels
        return replace(self, inp=tuple(inp), out=out, groups=groups)

    def pointwise(self, channels: int, out: int, groups: int, bias: bool) -> Layer:
        """A 1x1 layer of the same kind on this layer's output (the coef half of a pair)."""
        inp = list(self.output_shape())
        inp[self.channel_dim] = channels
        ones = (1,) * len(self.kernel)
        return Layer(self.kind, tuple(inp), out, ones, ones, (0,) * len(self.kernel) if self.kernel else (), ones,
                     groups, bias)

    def output_shape(self) -> tuple[int, ...]:
        shape = list(self.inp)
        shape[self.channel_dim] = self.out
        if self.kind != "Linear":
            pad = self.padding
            for i, size in enumerate(self.inp[2:]):
                if pad == "same":
                    continue
                k, s, d, p = self.kernel[i], self.stride[i], self.dilation[i], 0 if pad == "valid" else pad[i]
                shape[2 + i] = (size + 2 * p - d * (k - 1) - 1) // s + 1
        return tuple(shape)

    def build(self, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> tuple[nn.Module, torch.Tensor]:
        """This layer with random weights and a random input, ready to time."""
        if self.kind == "Linear":
            layer = nn.Linear(self.channels, self.out, bias=self.bias)
        else:
            layer = getattr(nn, self.kind)(self.channels, self.out, self.kernel, self.stride, self.padding,
                                           self.dilation, self.groups, self.bias)
        return layer.to(device=device, dtype=dtype).eval(), torch.randn(self.inp, dtype=dtype, device=device)


def layer_of(module: nn.Module, inp: tuple[int, ...]) -> Layer:
    base = torch_base(module)
    if base is None:  # a coef layer with its scales: after fold, a plain 1x1 layer of the same kind
        kind = "Linear" if module.pointwise_dims == 0 else f"Conv{module.pointwise_dims}d"
        ones = (1,) * module.pointwise_dims
        return Layer(kind, inp, module.weight.shape[0], ones, ones, (0,) * module.pointwise_dims, ones,
                     module.groups, module.bias is not None)
    if base is nn.Linear:
        return Layer("Linear", inp, module.out_features, bias=module.bias is not None)
    return Layer(base.__name__, inp, module.out_channels, tuple(module.kernel_size), tuple(module.stride),
                 module.padding if isinstance(module.padding, str) else tuple(module.padding),
                 tuple(module.dilation), module.groups, module.bias is not None)


def layer_at(node, module: nn.Module) -> Layer:
    """The Layer of `module` called at `node`, its input shape from a ShapeProp run."""
    return layer_of(module, tuple(node.args[0].meta["tensor_meta"].shape))


def folded_layers(gm, kept: dict[str, dict[str, float]] | None = None,
                  ranks: dict[str, int] | None = None) -> list[Layer]:
    """The conv/linear layers of `gm` (shapes from a ShapeProp run: analysis.counting.propagate_shapes)
    as fold will leave them, each module path's "in"/"out" channels scaled by `kept` (as
    analysis.channels computes it for removed channels) and each pair at path cut to `ranks[path]`."""
    kept, ranks = kept or {}, ranks or {}
    pairs = {pair.basis_node.target: pair for pair in find_pairs(gm)}
    coefs = {pair.coef_node.target for pair in pairs.values()}

    def scaled(node, module) -> Layer:
        layer = layer_at(node, module)
        share = kept.get(node.target, {})
        out = share.get("out", 1.0)
        depthwise = layer.groups > 1 and layer.groups == layer.channels  # a "dw" member: its inputs follow its outputs
        return layer.resized(round(layer.channels * share.get("in", out if depthwise else 1.0)), round(layer.out * out))

    layers = []  # in graph order
    for node in gm.graph.find_nodes(op="call_module"):
        if node.target in pairs:
            layers += _pair_layers(pairs[node.target], scaled(node, pairs[node.target].basis), kept, ranks)
        elif node.target not in coefs and is_counted(module := gm.get_submodule(node.target)):
            layers.append(scaled(node, module))
    return layers


def pair_at(pair, rank: int) -> list[Layer]:
    """The layers a pair leaves at `rank` (shapes from a ShapeProp run): two where it pays, else one."""
    return _pair_layers(pair, layer_at(pair.basis_node, pair.basis), {}, {pair.path: rank})


def current_layers(gm) -> list[Layer]:
    """The conv/linear layers of `gm` as they are now (pairs as two layers, at any rank)."""
    return [layer_at(node, module) for node in gm.graph.find_nodes(op="call_module")
            if is_counted(module := gm.get_submodule(node.target))]


def _pair_layers(pair, basis: Layer, kept: dict, ranks: dict) -> list[Layer]:
    """A pair as fold leaves it: basis then 1x1 coef where it pays, else one merged layer."""
    rank = ranks.get(pair.path, pair.rank)
    out = round(pair.coef.weight.shape[0] * kept.get(pair.coef_node.target, {}).get("out", 1.0))
    split, merged = pair_forms(pair, basis, rank, out)
    g = basis.groups  # a depthwise basis's groups follow its channels
    return split if pays(rank, out // g, basis.channels // g * math.prod(basis.kernel or (1,))) else [merged]


def pair_forms(pair, basis: Layer | None = None, rank: int | None = None, out: int | None = None) -> tuple[list[Layer], Layer]:
    """([basis layer, 1x1 coef layer], merged layer) of a pair (shapes from a ShapeProp run), at its
    own widths and rank unless given."""
    basis = basis or layer_at(pair.basis_node, pair.basis)
    rank = pair.rank if rank is None else rank
    out = pair.coef.weight.shape[0] if out is None else out
    g, bias = basis.groups, pair.coef.bias is not None
    thin = replace(basis, out=rank * g)
    return [thin, thin.pointwise(rank * g, out, g, bias)], replace(basis, out=out, bias=bias)
