"""Layers whose weight the graph computes from parameters alone, frozen into plain torch layers.

Weight standardisation (timm's StdConv2d and ScaledStdConv2d: BiT ResNets, NFNets, NF-ResNets,
NF-RegNets) normalises every filter of a conv in its forward: `get_attr weight -> reshape ->
batch_norm(training=True) [* gain] -> reshape_as -> conv2d`. The channel analysis cannot slice that
weight (dropping an input channel would change every filter's mean and variance), so those models had
no prunable group, and decompose-conv could not split their convs. With the weights fixed, as in eval,
the computed weight is a constant: `freeze_computed_weights` computes it once, with the same ops on the
same values (so the outputs stay bit for bit), and puts a plain nn.Conv2d (nn.Linear) holding it at the
module's path. timm's StdConv2dSame / ScaledStdConv2dSame, kept whole by the tracer, become timm's
Conv2dSame (or nn.Conv2d where their padding is static). prune() does this on its copy before the
passes; what changes is training afterwards: the layer trains as a plain conv.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxprune.core.lowrank import set_module, type_name
from fxprune.core.meta import SOURCE

CONV_CALLS = {torch.conv1d: nn.Conv1d, torch.conv2d: nn.Conv2d, torch.conv3d: nn.Conv3d,
         F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d}
LINEAR_CALLS = {torch._C._nn.linear, F.linear}
_RANDOM = ("rand", "dropout", "bernoulli", "normal", "multinomial")  # in a name: a weight not fixed
_SAME_STD_CONVS = ("timm.layers.std_conv.StdConv2dSame", "timm.layers.std_conv.ScaledStdConv2dSame")


def call_args(node: fx.Node, names: list[str], defaults: dict) -> dict:
    values = dict(defaults)
    values.update(zip(names, node.args))
    values.update(node.kwargs)
    return values


def layer_args(node: fx.Node) -> dict:
    """The arguments of a functional conv or linear call, by name, defaults filled in."""
    if node.target in CONV_CALLS:
        return call_args(node, ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
                         {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
    return call_args(node, ["input", "weight", "bias"], {"bias": None})


def layer_for_call(node: fx.Node, a: dict, w: torch.Tensor, b: torch.Tensor | None) -> nn.Module | None:
    """The conv/linear module computing the functional call `node` (arguments `a`) with weight `w` and
    bias `b` (the tensors themselves become its parameters); None for a string padding."""
    if node.target in CONV_CALLS:
        if isinstance(a["padding"], str):
            return None
        m = nn.utils.skip_init(CONV_CALLS[node.target], w.shape[1] * a["groups"], w.shape[0], w.shape[2:],
                               stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                               groups=a["groups"], bias=b is not None, dtype=w.dtype, device=w.device)
    else:
        m = nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], bias=b is not None, dtype=w.dtype, device=w.device)
    m.weight = w if isinstance(w, nn.Parameter) else nn.Parameter(w)
    if b is not None:
        m.bias = b if isinstance(b, nn.Parameter) else nn.Parameter(b)
    return m


def freeze_computed_weights(gm: fx.GraphModule) -> int:
    """Freeze every conv/linear weight `gm` computes from its parameters alone (above); returns how many
    layers. Layers whose weight depends on an input, a module call or a random op, or whose module
    holds parameters used elsewhere, stay as they are."""
    frozen = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and (node.target in CONV_CALLS or node.target in LINEAR_CALLS):
            frozen += _freeze_call(gm, node)
        elif node.op == "call_module":
            module = gm.get_submodule(node.target)
            if type_name(module) in _SAME_STD_CONVS:
                set_module(gm, node.target, _plain_same_conv(module))
                frozen += 1
    if frozen:
        gm.delete_all_unused_submodules()
        gm.recompile()
    return frozen


def _freeze_call(gm: fx.GraphModule, node: fx.Node) -> bool:
    a = layer_args(node)
    weight, bias = a["weight"], a["bias"]
    if not isinstance(weight, fx.Node) or weight.op == "get_attr":
        return False
    if bias is not None and not (isinstance(bias, fx.Node) and bias.op == "get_attr"):
        return False
    computed = _parameter_only(weight)
    if computed is None or any(set(n.users) - {*computed, node} for n in computed + [bias] if n is not None):
        return False  # not fixed, or some part of it is used by another computation too
    reads = [n for n in computed if n.op == "get_attr"] + ([bias] if bias is not None else [])
    source = next((n.target for n in reads if n.target.endswith(".weight")), None)
    owner = source and source.rpartition(".")[0]
    if not owner or any(n.target.rpartition(".")[0] != owner for n in reads) or _read_elsewhere(gm, owner, set(reads)):
        return False
    with torch.no_grad():
        value = _evaluate(gm, computed)
    w = nn.Parameter(value.detach().contiguous(), requires_grad=operator.attrgetter(source)(gm).requires_grad)
    layer = layer_for_call(node, a, w, None if bias is None else operator.attrgetter(bias.target)(gm))
    if layer is None:
        return False
    set_module(gm, owner, layer)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(owner, (a["input"],))
    new.meta.update(node.meta)
    new.meta[SOURCE] = owner
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    for n in reversed([*computed] + ([bias] if bias is not None else [])):
        if not n.users:  # the old module's reads, now of attributes it no longer has
            gm.graph.erase_node(n)
    return True


def _parameter_only(node: fx.Node) -> list[fx.Node] | None:
    """`node` and every node it depends on, inputs first, where all are attribute reads or pure
    function/method calls (no input, no module call, nothing random); else None."""
    order: list[fx.Node] = []

    def visit(n: fx.Node) -> bool:
        if n in order:
            return True
        if n.op not in ("get_attr", "call_function", "call_method") or n.is_impure() or any(
                r in str(n.target) for r in _RANDOM):
            return False
        if not all(visit(i) for i in n.all_input_nodes):
            return False
        order.append(n)
        return True

    return order if visit(node) else None


def _read_elsewhere(gm: fx.GraphModule, owner: str, reads: set[fx.Node]) -> bool:
    prefix = owner + "."
    return any(n.op == "get_attr" and n.target.startswith(prefix) and n not in reads for n in gm.graph.nodes) or any(
        n.op == "call_module" and (n.target == owner or n.target.startswith(prefix)) for n in gm.graph.nodes)


def _evaluate(gm: fx.GraphModule, nodes: list[fx.Node]) -> torch.Tensor:
    env: dict[fx.Node, object] = {}
    for n in nodes:
        args, kwargs = fx.node.map_arg((n.args, n.kwargs), env.__getitem__)
        if n.op == "get_attr":
            env[n] = operator.attrgetter(n.target)(gm)
        elif n.op == "call_function":
            env[n] = n.target(*args, **kwargs)
        else:
            env[n] = getattr(args[0], n.target)(*args[1:], **kwargs)
    return env[nodes[-1]]


def _plain_same_conv(m: nn.Conv2d) -> nn.Module:
    """timm's (Scaled)StdConv2dSame as the conv it computes in eval: its standardised weight (timm's
    formula: batch_norm over each filter, scaled by gain * scale where it has them) in a Conv2dSame,
    or an nn.Conv2d with its padding where that is static."""
    from timm.layers import Conv2dSame

    gain = (m.gain * m.scale).view(-1) if hasattr(m, "gain") else None
    with torch.no_grad():
        w = F.batch_norm(m.weight.reshape(1, m.out_channels, -1), None, None, weight=gain, training=True,
                         momentum=0.0, eps=m.eps).reshape_as(m.weight)
    kind, padding = (Conv2dSame, 0) if m.same_pad else (nn.Conv2d, m.padding)
    plain = nn.utils.skip_init(kind, m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                               padding=padding, dilation=m.dilation, groups=m.groups, bias=m.bias is not None,
                               dtype=w.dtype, device=w.device)
    plain.weight = nn.Parameter(w.contiguous(), requires_grad=m.weight.requires_grad)
    if m.bias is not None:
        plain.bias = m.bias
    return plain
