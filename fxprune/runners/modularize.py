"""Turn a Dynamo-captured graph back into one with conv/linear/BatchNorm modules, weights frozen.

Since torch 2.5 Dynamo inlines nn.Modules and lifts parameters and buffers to graph inputs, so a
captured graph has no call_module nodes. Like inductor's freezing, we take the example values of
those inputs as constants (inference only), store them on the GraphModule, and rewrite
`conv{1,2,3}d` / `linear` / `batch_norm` calls whose weights are such constants into modules, so
the ordinary fxprune passes apply. The placeholders stay, unused, so the calling convention holds.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxprune.core.freeze import CONV_CALLS, LINEAR_CALLS, call_args, layer_args, layer_for_call
from fxprune.core.meta import SOURCE

_BATCHNORMS = {F.batch_norm, torch.batch_norm}


def _is_state(node: fx.Node, value) -> bool:
    source = getattr(node.meta.get("grapharg"), "source", None)
    name = source.name if source is not None and hasattr(source, "name") else ""
    return isinstance(value, nn.Parameter) or "_parameters" in name or "_buffers" in name


def modularize(gm: fx.GraphModule, example_inputs: list) -> int:
    """Freeze parameter/buffer inputs into constants and rebuild layer modules; returns how many."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i, (node, value) in enumerate(zip(placeholders, example_inputs)):
        if isinstance(value, torch.Tensor) and _is_state(node, value):
            name = f"_frozen_{i}"
            gm.register_buffer(name, value.detach())
            with gm.graph.inserting_after(placeholders[-1]):
                node.replace_all_uses_with(gm.graph.get_attr(name))
    made = 0
    for node in list(gm.graph.nodes):
        module = _module_for(gm, node) if node.op == "call_function" else None
        if module is None:
            continue
        path = f"layer_{made}"
        gm.add_submodule(path, module)
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(path, (node.args[0],))
        new.meta[SOURCE] = path
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        made += 1
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return made


def _const(gm: fx.GraphModule, arg) -> torch.Tensor | None:
    if arg is None:
        return None
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        return getattr(gm, arg.target)
    raise LookupError


def _module_for(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    try:
        if node.target in CONV_CALLS or node.target in LINEAR_CALLS:
            a = layer_args(node)
            w, b = _const(gm, a["weight"]), _const(gm, a["bias"])
            if w is None:
                return None
            m = layer_for_call(node, a, nn.Parameter(w.detach().clone(), requires_grad=False),
                               None if b is None else nn.Parameter(b.detach().clone(), requires_grad=False))
            return None if m is None else m.eval()
        if node.target in _BATCHNORMS:
            a = call_args(node, ["input", "running_mean", "running_var", "weight", "bias", "training", "momentum",
                                 "eps"], {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5})
            mean, var = _const(gm, a["running_mean"]), _const(gm, a["running_var"])
            w, b = _const(gm, a["weight"]), _const(gm, a["bias"])
            example = node.args[0].meta.get("example_value")
            if a["training"] or mean is None or var is None or example is None or example.dim() != 4:
                return None  # BatchNorm2d only: the input must be known to be NCHW
            m = nn.BatchNorm2d(mean.numel(), eps=a["eps"], affine=w is not None, dtype=mean.dtype).eval()
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            if w is not None:
                m.weight.data.copy_(w)
                m.bias.data.copy_(b)
            return m
        return None
    except LookupError:
        return None  # a weight that is computed, not a frozen parameter: leave the call alone
