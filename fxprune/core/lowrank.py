"""A decomposed layer: a *basis* layer (rows of V^T) followed by a 1x1 *coef* layer (U S).

Both live under a plain `nn.Module` container at the original module's path (`X.basis`,
`X.coef`); their graph nodes carry `fxprune.role` and `fxprune.source` in `node.meta`.
Weights are handled per group as matrices: basis (g, r, n), coef (g, m, r), dense (g, m, n) with
m = out_channels / g and n = in_channels / g * prod(kernel_size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from fxprune.core.meta import RANK, ROLE, SOURCE
from fxprune.core.smoothing import BASES, stored
from fxprune.nn import BasisScalingConv

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
ORIGINAL = "_fxprune_original"  # attribute of a pair container: the layer it was made from


def torch_base(m: nn.Module) -> type | None:
    """The torch conv/linear class `m` computes as: its own class, or a subclass that keeps that
    class's forward (torchvision's Conv3DSimple only adds a static method); None otherwise."""
    for base in (*CONVS, nn.Linear):
        if isinstance(m, base) and type(m).forward is base.forward and (
                base is nn.Linear or type(m)._conv_forward is base._conv_forward):
            return base
    return None


def type_name(m: nn.Module) -> str:
    """`m`'s class as module.qualname (e.g. timm.layers.conv2d_same.Conv2dSame): how classes of
    packages that may not be installed are matched without importing them."""
    return f"{type(m).__module__}.{type(m).__qualname__}"


def is_dense_layer(m: nn.Module) -> bool:
    """Torch conv or linear layers, or subclasses with their forward (others may compute anything,
    so they are left alone)."""
    return torch_base(m) is not None


def is_conv(m: nn.Module) -> bool:
    return torch_base(m) in CONVS


def groups_of(m: nn.Module) -> int:
    return getattr(m, "groups", 1)  # Linear has none


def matrix_shape(m: nn.Module) -> tuple[int, int, int]:
    """(g, m, n) of a dense layer's per-group weight matrix."""
    g = groups_of(m)
    w = m.weight
    return g, w.shape[0] // g, math.prod(w.shape[1:])


def as_groups(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """View a conv/linear weight as (groups, rows per group, columns)."""
    return weight.reshape(groups, weight.shape[0] // groups, -1)


def pays(rank: int, m: int, n: int) -> bool:
    """A pair of rank `rank` is smaller than the dense layer (params and MACs alike)."""
    return rank * (m + n) < m * n


@dataclass(frozen=True)
class Pair:
    """One decomposed layer found in a graph."""

    source: str
    basis_node: fx.Node
    coef_node: fx.Node
    basis: nn.Module
    coef: nn.Module

    @property
    def path(self) -> str:
        """Where the container of `basis` and `coef` sits in the GraphModule."""
        return self.coef_node.target.rpartition(".")[0]

    @property
    def groups(self) -> int:
        return groups_of(self.basis)

    @property
    def rank(self) -> int:
        """Bases kept per group."""
        return self.basis.weight.shape[0] // self.groups

    @property
    def m(self) -> int:
        return self.coef.weight.shape[0] // self.groups

    @property
    def n(self) -> int:
        return math.prod(self.basis.weight.shape[1:])

    def basis_matrix(self) -> torch.Tensor:
        return as_groups(self.basis.weight.detach(), self.groups)

    def coef_matrix(self) -> torch.Tensor:
        return as_groups(self.coef.weight.detach(), self.groups)

    @property
    def scale(self) -> torch.Tensor | None:
        """(g, r) scaling factors s, where insert-scaling added them."""
        s = getattr(self.coef, "scale", None)
        return None if s is None else s.detach().view(self.groups, self.rank)

    def importance(self) -> torch.Tensor:
        """(g, r): the effective singular value S_i*|s_i| of every basis (its coef column norm x |s_i|)."""
        norm = self.coef_matrix().norm(dim=1)
        return norm if self.scale is None else norm * self.scale.abs()


def find_pairs(gm: fx.GraphModule) -> list[Pair]:
    pairs = []
    for node in gm.graph.nodes:
        if node.meta.get(ROLE) != "coef":
            continue
        basis_node = node.args[0]
        pairs.append(Pair(node.meta[SOURCE], basis_node, node, gm.get_submodule(basis_node.target),
                          gm.get_submodule(node.target)))
    return pairs


def set_module(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


def same_format(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t`, contiguous in the memory format of `like` (channels_last for a 4-D or 5-D weight that is)."""
    for fmt, dim in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
        if t.dim() == like.dim() == dim and like.is_contiguous(memory_format=fmt) and not like.is_contiguous():
            return t.contiguous(memory_format=fmt)
    return t.contiguous()


def _parameter(t: torch.Tensor, like: nn.Parameter, layout: torch.Tensor | None = None) -> nn.Parameter:
    """A parameter with `like`'s dtype and requires_grad, in `layout`'s memory format (default `like`'s)."""
    return nn.Parameter(same_format(t.to(like.dtype), like if layout is None else layout),
                        requires_grad=like.requires_grad)


def _layer(like: nn.Module, out: int, groups: int, bias: bool, pointwise: bool = False) -> nn.Module:
    """An uninitialised layer of `like`'s type and input, or (`pointwise`) a 1x1 layer on its output."""
    kw = dict(device=like.weight.device, dtype=like.weight.dtype)
    in_features = like.weight.shape[0] if pointwise else like.weight.shape[1] * groups_of(like)
    if isinstance(like, nn.Linear):
        return nn.utils.skip_init(nn.Linear, in_features, out, bias=bias, **kw)
    if pointwise:
        return nn.utils.skip_init(torch_base(like), in_features, out, 1, groups=groups, bias=bias, **kw)
    return nn.utils.skip_init(torch_base(like), in_features, out, like.kernel_size, stride=like.stride,
                              padding=like.padding, dilation=like.dilation, groups=groups, bias=bias,
                              padding_mode=like.padding_mode, **kw)


def _set_weights(layer: nn.Module, weight: torch.Tensor, bias, like: nn.Parameter,
                 layout: torch.Tensor | None = None) -> nn.Module:
    layer.weight = _parameter(weight.reshape(layer.weight.shape), like, layout)
    if bias is not None:
        layer.bias = _parameter(bias.detach(), bias)
    return layer


def build_pair(like: nn.Module, basis_w: torch.Tensor, coef_w: torch.Tensor, bias) -> nn.Module:
    """Container of `basis` (g, r, n) and `coef` (g, m, r) layers; `like` gives type and input."""
    g, r, m = basis_w.shape[0], basis_w.shape[1], coef_w.shape[1]
    container = nn.Module()
    container.basis = _set_weights(_layer(like, g * r, g, False), basis_w, None, like.weight)
    coef = _layer(container.basis, g * m, g, bias is not None, pointwise=True)
    container.coef = _set_weights(coef, coef_w, bias, like.weight)
    return container


def rebuild_pair(pair: Pair, keep: torch.Tensor) -> nn.Module:
    """The pair restricted to bases `keep` (g, r') of every group."""
    idx = keep.sort(dim=1).values
    basis_w = torch.gather(pair.basis_matrix(), 1, idx[:, :, None].expand(-1, -1, pair.n))
    coef_w = torch.gather(pair.coef_matrix(), 2, idx[:, None, :].expand(-1, pair.m, -1))
    container = build_pair(pair.basis, basis_w, coef_w, pair.coef.bias)
    if pair.scale is not None:
        scaled = BasisScalingConv(container.coef)
        scaled.scale = nn.Parameter(torch.gather(pair.scale, 1, idx).reshape(-1).clone(),
                                    requires_grad=pair.coef.scale.requires_grad)
        history = stored(pair.coef, BASES)
        if history is not None:  # the running importance follows its bases
            scaled.__dict__[BASES] = torch.gather(history.view(pair.groups, pair.rank).to(idx.device), 1,
                                                     idx).reshape(-1)
        container.coef = scaled
    return container


def unscaled_coef(pair: Pair) -> nn.Module:
    """The pair's BasisScalingConv as a plain 1x1 layer with the scales folded in: U S diag(s)."""
    coef = _layer(pair.basis, pair.groups * pair.m, pair.groups, pair.coef.bias is not None, pointwise=True)
    return _set_weights(coef, pair.coef_matrix() * pair.scale[:, None, :], pair.coef.bias, pair.coef.weight)


def keep_original(container: nn.Module, layer: nn.Module) -> None:
    """Remember on a pair's container the layer it was made from, so that merging it back gives that
    layer bit for bit while the pair still equals it. A plain attribute, not a submodule: it is in
    no count, no state_dict and no graph."""
    container.__dict__[ORIGINAL] = layer


def forget_original(container: nn.Module) -> None:
    container.__dict__.pop(ORIGINAL, None)


def merge_pair(pair: Pair, original: nn.Module | None = None) -> nn.Module:
    """One dense layer equal to the pair, scales folded (coef @ basis per group, computed in float64).
    `original` (the layer decompose-conv started from) is returned instead where the pair still equals
    it (`_equals`) and the bias is the same: nothing was cut, so nothing may change."""
    coef, basis = pair.coef_matrix().double(), pair.basis_matrix()
    if pair.scale is not None:
        coef = coef * pair.scale.double()[:, None, :]
    bias = pair.coef.bias
    if original is not None:  # the stash is no submodule: it stayed where the pair was made
        original.to(device=pair.basis.weight.device, dtype=pair.basis.weight.dtype)
    if original is not None and _equals(original, coef, basis, bias, pair.groups):
        original.weight.requires_grad_(pair.coef.weight.requires_grad)
        if bias is not None:
            original.bias.requires_grad_(bias.requires_grad)
        return original
    dense = _layer(pair.basis, pair.groups * pair.m, pair.groups, bias is not None)
    return _set_weights(dense, torch.bmm(coef, basis.double()), bias, pair.coef.weight, layout=pair.basis.weight)


PROBES = 16  # random inputs the pair and its original layer are compared on


def _equals(original: nn.Module, coef: torch.Tensor, basis: torch.Tensor, bias, groups: int) -> bool:
    """Whether coef @ basis is `original`'s weight to 1e-5 (relative L2, per group), seen through
    PROBES Gaussian inputs rather than by forming the product (m r n multiply-adds, the cost of a
    second decomposition on a large layer). A change 10x over the limit goes unseen with probability
    about 1e-13 (a chi-square of 16 degrees below 0.16); the rounding of the float32 factors, ~1e-7."""
    o = original.weight.detach()
    g, m, n = groups, coef.shape[1], basis.shape[2]
    if o.numel() != g * m * n or groups_of(original) != groups or (original.bias is None) != (bias is None):
        return False
    o = as_groups(o, groups)
    if o.shape != (g, m, n):
        return False
    x = torch.randn(g, n, PROBES, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(o.device)
    want = _times(o, x)
    if (torch.linalg.vector_norm(coef @ _times(basis, x) - want, dim=(1, 2))
            > 1e-5 * torch.linalg.vector_norm(want, dim=(1, 2))).any():
        return False
    return bias is None or torch.equal(original.bias.detach(), bias.detach())


def _times(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """w @ x in float64 (w (g, m, n) of any dtype, x (g, n, p) float64), w widened a block of rows at a time."""
    rows = max(1, (1 << 20) // max(1, w.shape[0] * w.shape[2]))
    return torch.cat([w[:, i:i + rows].double() @ x for i in range(0, w.shape[1], rows)], 1)


def merge_back(gm: fx.GraphModule, pair: Pair) -> fx.Node:
    """Replace `pair` in `gm` (module and graph) by one dense layer at its path; returns its node."""
    original = gm.get_submodule(pair.path).__dict__.get(ORIGINAL)
    set_module(gm, pair.path, merge_pair(pair, original))
    with gm.graph.inserting_after(pair.coef_node):
        node = gm.graph.call_module(pair.path, pair.basis_node.args, pair.basis_node.kwargs)
    node.meta.update({SOURCE: pair.source, RANK: (pair.rank * pair.groups, min(pair.m, pair.n) * pair.groups)})
    pair.coef_node.replace_all_uses_with(node)
    gm.graph.erase_node(pair.coef_node)
    gm.graph.erase_node(pair.basis_node)
    return node
