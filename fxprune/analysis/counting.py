"""Counting: parameters, MACs per conv/linear node (from ShapeProp) and whole-model MACs.

Convention: 1 MAC = one multiply-accumulate; torch's FlopCounterMode counts 2 FLOPs per MAC
for convolutions and matrix products and ignores normalisation and element-wise ops. Its registry
misses the CPU kernel of scaled_dot_product_attention (it counts 0 for every ViT attention on the
CPU), so we add that one formula: QK^T and AV, b*h*Lq*Lk*(d + dv) MACs.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils.flop_counter import FlopCounterMode

from fxprune.core.lowrank import CONVS
from fxprune.nn import BasisScalingConv


def total_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def unused_params(model: nn.Module, traced: fx.GraphModule) -> dict[str, int]:
    """Parameters of `model` that its traced eval graph never uses (googlenet's training-only aux
    heads, for one): numel by the outermost module path (or parameter name) holding only unused ones."""
    kept = {name for name, _ in traced.named_parameters(remove_duplicate=False)}
    params = dict(model.named_parameters())
    unused = {name for name in params if name not in kept}

    def all_unused(path: str) -> bool:
        return all(f"{path}.{n}" in unused for n, _ in model.get_submodule(path).named_parameters())

    out: dict[str, int] = {}
    for name in sorted(unused):
        path, parent = name, name.rpartition(".")[0]
        while parent and all_unused(parent):
            path, parent = parent, parent.rpartition(".")[0]
        out[path] = out.get(path, 0) + params[name].numel()
    return out


def tied_modules(gm: nn.Module) -> dict[str, str]:
    """Module path -> another module path holding one of the same Parameter objects (tied weights,
    or one module registered under two names). Such a layer cannot be rewritten alone: a new weight
    would untie it and the model would grow."""
    holders: dict[int, list[str]] = {}
    for name, p in gm.named_parameters(remove_duplicate=False):
        holders.setdefault(id(p), []).append(name.rpartition(".")[0])
    tied: dict[str, str] = {}
    for paths in holders.values():
        for path in paths:
            other = next((q for q in paths if q != path), None)
            if other is not None:
                tied.setdefault(path, other)
    return tied


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    *batch, lq, d = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * lq * lk * (d + dv)


_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}


def total_macs(module: nn.Module, example_inputs: tuple) -> int:
    """Whole-model MACs as FlopCounterMode counts them (FLOPs / 2), CPU attention included."""
    # Detached parameters instead of no_grad(): FlopCounterMode's module tracker asserts on a
    # parameter that requires grad but, under no_grad, has no grad_fn (timm's CaiT class token).
    detached = {k: v.detach() for k, v in module.named_parameters()}
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
        torch.func.functional_call(module, detached, example_inputs)
    return counter.get_total_flops() // 2


def is_counted(m: nn.Module) -> bool:
    """Conv and linear layers (subclasses included) and scaled coef layers: what the tables list."""
    return isinstance(m, (*CONVS, nn.Linear, BasisScalingConv))


class _ShapeProp(ShapeProp):
    """ShapeProp handing functions plain lists and dicts, as the generated forward does: the
    interpreter's immutable ones break a wrapped function that edits a list it is given
    (torchvision's video Swin, _get_window_and_shift_size)."""

    def fetch_args_kwargs_from_env(self, n: fx.Node):
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        return _plain(args), _plain(kwargs)


def _plain(value):
    if isinstance(value, list):  # fx's immutable_list among them
        return [_plain(v) for v in value]
    if type(value) is tuple:
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def propagate_shapes(gm: fx.GraphModule, example_inputs: tuple) -> None:
    """ShapeProp under no_grad: a leaf module that caches a tensor on its first call (timm's
    efficientvit attention biases) must not keep one with a grad_fn, which deepcopy refuses."""
    with torch.no_grad():
        _ShapeProp(gm).propagate(*example_inputs)


def node_macs(gm: fx.GraphModule, example_inputs: tuple) -> dict[str, int]:
    """MACs of every call_module conv/linear node, by node name (shapes from ShapeProp)."""
    propagate_shapes(gm, example_inputs)
    macs = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not is_counted(layer := gm.get_submodule(node.target)):
            continue
        meta = node.meta.get("tensor_meta")
        out = math.prod(meta.shape) if meta is not None and hasattr(meta, "shape") else 0
        macs[node.name] = out * math.prod(layer.weight.shape[1:])
    return macs
