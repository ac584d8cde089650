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

from fxprune.core.meta import SOURCE

_CONVS = {torch.conv1d: nn.Conv1d, torch.conv2d: nn.Conv2d, torch.conv3d: nn.Conv3d,
          F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d}
_LINEARS = {torch._C._nn.linear, F.linear}
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


def _args(node: fx.Node, names: list[str], defaults: dict) -> dict:
    values = dict(defaults)
    values.update(zip(names, node.args))
    values.update(node.kwargs)
    return values


def _module_for(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    try:
        if node.target in _CONVS:
            a = _args(node, ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
                      {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
            w, b = _const(gm, a["weight"]), _const(gm, a["bias"])
            if w is None or isinstance(a["padding"], str):
                return None
            m = nn.utils.skip_init(_CONVS[node.target], w.shape[1] * a["groups"], w.shape[0], w.shape[2:],
                                   stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                                   groups=a["groups"], bias=b is not None, dtype=w.dtype, device=w.device)
        elif node.target in _LINEARS:
            a = _args(node, ["input", "weight", "bias"], {"bias": None})
            w, b = _const(gm, a["weight"]), _const(gm, a["bias"])
            if w is None:
                return None
            m = nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], bias=b is not None, dtype=w.dtype,
                                   device=w.device)
        elif node.target in _BATCHNORMS:
            a = _args(node, ["input", "running_mean", "running_var", "weight", "bias", "training", "momentum",
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
        else:
            return None
    except LookupError:
        return None  # a weight that is computed, not a frozen parameter: leave the call alone
    m.weight = nn.Parameter(w.detach().clone(), requires_grad=False)
    if b is not None:
        m.bias = nn.Parameter(b.detach().clone(), requires_grad=False)
    return m.eval()
