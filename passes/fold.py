"""fold: fold scales and eval-mode BatchNorm into the layer before them; merge pairs that no longer pay."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.fx as fx
from torch import nn

from fxprune.analysis.counting import propagate_shapes, tied_modules
from fxprune.analysis.latency import table_for
from fxprune.analysis.layer_shapes import pair_forms
from fxprune.core.lowrank import CONVS, find_pairs, is_conv, forget_original, merge_back, pays, set_module, unscaled_coef
from fxprune.nn import BasisScalingConv, ChannelScaling
from fxprune.core.smoothing import forget
from fxprune.core.pass_base import FxPass, PassContext, PassResult, option, register

try:
    from timm.layers import BatchNormAct2d
except ImportError:  # timm is optional here
    BatchNormAct2d = None

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@register
@dataclass(frozen=True)
class Fold(FxPass):
    """First every pair: merged back into one dense layer unless r*(m + n) < m*n per group, its
    basis scales folded in (U S diag(s)); a pair that still equals the layer decompose-conv made it
    from gives that layer back bit for bit. Then channel scales into the rows of the layer before
    them (conv, linear or coef; left in place, with a warning, where that layer has other users,
    is called twice or shares its weights). Then BatchNorm (torch's, and timm's BatchNormAct2d,
    whose activation stays) into a preceding conv/linear/coef layer when it is in eval mode, has
    running statistics and is that layer's only user.
    The result uses only torch.nn modules and is never bigger than its input (params and MACs).
    With `merge=latency` a pair that pays in params is merged all the same where a latency table
    (`latency=` a fxprune.LatencyTable; by default the one cached for this device) times its two
    layers slower than the merged layer on the example inputs.
    """

    name = "fold"
    summary = "fold scales and eval-mode BatchNorm into weights; merge pairs back where they do not pay"
    lossless = True
    merge: Literal["size", "latency"] = option(
        "size", "merge a pair back where it does not pay in params (size), or also where it is slower (latency)")

    @property
    def context_keys(self) -> tuple[str, ...]:  # latency= is read only for merge=latency
        return ("latency",) if self.merge == "latency" else ()

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        scales = merged = kept = 0
        slower = self._slower_pairs(gm, ctx) if self.merge == "latency" else set()
        for pair in find_pairs(gm):
            if pays(pair.rank, pair.m, pair.n) and pair.path not in slower:
                if pair.scale is not None:
                    set_module(gm, pair.coef_node.target, unscaled_coef(pair))
                    scales += 1
                forget_original(gm.get_submodule(pair.path))
                kept += 1
            else:  # merged first, so a pair nothing was cut from gives back its original layer exactly
                scales += pair.scale is not None
                merge_back(gm, pair)
                merged += 1
        tied = tied_modules(gm)  # folding rewrites only untied layers, so this holds for the whole pass
        scales += sum(_fold_channel_scale(gm, node, tied) for node in list(gm.graph.nodes))
        if any(type(m) is nn.BatchNorm1d for m in gm.modules()):  # Linear+BN1d needs output ranks
            gm.recompile()
            propagate_shapes(gm, ctx.example_inputs)
        folded = sum(_fold_bn(gm, node, tied) for node in list(gm.graph.nodes))
        gm.delete_all_unused_submodules()
        forget(gm)  # the pruned model carries no running importance
        stats = {"scales-folded": scales, "bn-folded": folded, "pairs-merged": merged, "pairs-kept": kept}
        if self.merge == "latency":
            stats["pairs-merged-slower"] = len(slower)
        return PassResult(gm, scales + folded + merged > 0, stats)

    def _slower_pairs(self, gm: fx.GraphModule, ctx: PassContext) -> set[str]:
        """Paths of the pairs that pay in params but whose two layers the table times slower than one."""
        table = table_for(ctx.extra.get("latency"), gm)
        propagate_shapes(gm, ctx.example_inputs)
        slower = set()
        for pair in find_pairs(gm):
            split, merged = pair_forms(pair)
            if pays(pair.rank, pair.m, pair.n) and table.layers(split) > table.layer(merged):
                slower.add(pair.path)
        table.save()
        return slower


def _is_foldable_bn(bn: nn.Module) -> bool:
    kinds = _BATCHNORMS + ((BatchNormAct2d,) if BatchNormAct2d else ())
    return (type(bn) in kinds and not bn.training and bn.track_running_stats
            and bn.running_mean is not None)


def _fold_bn(gm: fx.GraphModule, node: fx.Node, tied: dict[str, str]) -> bool:
    if node.op != "call_module" or not _is_foldable_bn(bn := gm.get_submodule(node.target)):
        return False
    prev = node.args[0] if node.args else None
    if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1 or node.kwargs:
        return False
    layer = gm.get_submodule(prev.target)
    if not (is_conv(layer) or type(layer) is nn.Linear and _output_rank(prev) == 2 and type(bn) is nn.BatchNorm1d):
        return False
    if len(gm.graph.find_nodes(op="call_module", target=prev.target)) != 1 or prev.target in tied:
        return False  # a layer called twice, or sharing its weight, cannot take one call's BatchNorm
    w, b = _fused(layer, bn)
    w.requires_grad_(layer.weight.requires_grad)
    b.requires_grad_(layer.weight.requires_grad)
    layer.weight, layer.bias = w, b
    rest = _after_bn(bn)
    if rest is None:
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    else:
        set_module(gm, node.target, rest)
    return True


def _fused(layer: nn.Module, bn: nn.Module) -> tuple[nn.Parameter, nn.Parameter]:
    """BatchNorm's per-channel scale and shift computed in float64, then each weight multiplied by its
    channel's scale once: the float32 fold rounds at every step (var + eps, rsqrt, the products, the
    shifted bias). Only vectors of the channel count are widened, never the weight."""
    dtype = layer.weight.dtype
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    bias = -bn.running_mean.double() if layer.bias is None else layer.bias.detach().double() - bn.running_mean
    shift = bias * scale + (0 if bn.bias is None else bn.bias.detach().double())
    weight = layer.weight.detach() * scale.to(dtype).view(-1, *[1] * (layer.weight.dim() - 1))
    return nn.Parameter(weight), nn.Parameter(shift.to(dtype))


def _fold_channel_scale(gm: fx.GraphModule, node: fx.Node, tied: dict[str, str]) -> bool:
    if node.op != "call_module" or not isinstance(scale := gm.get_submodule(node.target), ChannelScaling):
        return False
    prev = node.args[0]
    layer = gm.get_submodule(prev.target) if isinstance(prev, fx.Node) and prev.op == "call_module" else None
    if (not isinstance(layer, (*CONVS, nn.Linear, BasisScalingConv)) or len(prev.users) != 1
            or len(gm.graph.find_nodes(op="call_module", target=prev.target)) != 1 or prev.target in tied):
        warnings.warn(f"fold: channel scale {node.target} stays: the module before it is not a conv/linear "
                      "layer used only there, with weights of its own", stacklevel=2)
        return False
    new = copy.deepcopy(layer)
    s = scale.weight.detach()
    new.weight = nn.Parameter(layer.weight.detach() * s.view(-1, *[1] * (layer.weight.dim() - 1)),
                              requires_grad=layer.weight.requires_grad)
    if layer.bias is not None:
        new.bias = nn.Parameter(layer.bias.detach() * s, requires_grad=layer.bias.requires_grad)
    set_module(gm, prev.target, new)
    node.replace_all_uses_with(prev)
    gm.graph.erase_node(node)
    return True


def _after_bn(bn: nn.Module) -> nn.Module | None:
    """What is left of a BatchNorm module once its affine part is folded (timm's drop + act)."""
    parts = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None))
             if m is not None and not isinstance(m, (nn.Identity, nn.Dropout))]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


def _output_rank(node: fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    return len(meta.shape) if meta is not None and hasattr(meta, "shape") else None
