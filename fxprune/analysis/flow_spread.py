"""A conv along the channel axis (ECA's gate: a Conv1d(1, 1, k) over the pooled channels, timm's EcaModule):
each output channel mixes its k neighbours, so removing a channel would shift what its neighbours read.

Removal keeps the conv at the width it was made for: its input is spread back to that width with zeros
where channels were removed (`widen`) and its output read at the kept positions (`narrow`), so a removed
channel reads as 0 to its neighbours, as a removed channel reads as 0 to a layer's input columns. Later
removals rewrite the same two nodes; positions already removed are their own, blocked elements. The
lossless check's reference (channels.as_removed) masks the conv's input in the same way.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from fxprune.analysis.flow_types import tensor_shape

REMOVED = "a removed channel's zero, kept for a conv along the channel axis"


def widen(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`x` spread along its last axis: position i holds x[..., index[i]], or 0 where index[i] is x's width."""
    zero = x.new_zeros(*x.shape[:-1], 1)
    return torch.cat([x, zero], -1).index_select(-1, index)


def narrow(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`x` at the positions `index` of its last axis."""
    return x.index_select(-1, index)


# kept whole by a tracer re-reading a saved model's code (fx.wrap patches these names in this module's globals)
for _name in ("widen", "narrow"):
    torch.fx.wrap(_name)


def along_channels(node: fx.Node, m: nn.Module, tracked) -> bool:
    """Whether `m` at `node` is a Conv1d(1, 1, k) over channels on the last axis that keeps their count."""
    if tracked is None or type(m) is not nn.Conv1d or tuple(m.weight.shape[:2]) != (1, 1):
        return False
    shape, out = tensor_shape(node.args[0]), tensor_shape(node)
    return (len(shape) == 3 and tracked[0] == 2 and shape[1] == 1 and out == shape and m.stride == (1,)
            and m.padding_mode == "zeros")


class SpreadRules:
    """Mixed into channel_flow._Propagator (its state: flow, ...)."""

    def spread_conv(self, node: fx.Node, tracked) -> None:
        self.flow.spreads.append((node.name, tracked[1]))
        self.flow.value[node] = tracked

    def spread_function(self, node: fx.Node, name: str) -> None:
        """widen / narrow written by an earlier removal: positions follow their index; a removed one is fresh
        and blocked."""
        axis, ids = self.flow.value[node.args[0]]
        index = _index(node)
        if axis != len(tensor_shape(node)) - 1:
            return self.barrier(node, f"{name} ({node.name}) along another axis")
        if name == "narrow":
            self.flow.value[node] = (axis, ids[index])
            return
        out = torch.empty(len(index), dtype=ids.dtype)
        kept = index < len(ids)
        out[kept] = ids[index[kept]]
        dead = self.flow.fresh(int((~kept).sum()))
        self.flow.block(dead, REMOVED)
        out[~kept] = dead
        self.flow.value[node] = (axis, out)


def _index(node: fx.Node) -> torch.Tensor:
    attr = node.args[1]
    gm = node.graph.owning_module
    return getattr(gm, attr.target).cpu()


def respread(gm: fx.GraphModule, name: str, kept: torch.Tensor) -> None:
    """Rewrite the conv node `name` so it reads only the positions `kept` (bool, one per position of its
    full-width input, False also where an earlier removal left a zero) of the tensor it is given."""
    nodes = {n.name: n for n in gm.graph.nodes}
    conv = nodes[name]
    src = conv.args[0]
    spread = src if src.target is widen else None
    users = list(conv.users)
    reader = users[0] if len(users) == 1 and users[0].target is narrow else None
    count = int(kept.sum())
    index = torch.full((len(kept),), count, dtype=torch.long)
    index[kept] = torch.arange(count)
    device = gm.get_submodule(conv.target).weight.device
    spread_index = _buffer(gm, "spread", index.to(device))
    narrow_index = _buffer(gm, "narrow", kept.nonzero().flatten().to(device))
    with gm.graph.inserting_before(conv):
        first = gm.graph.get_attr(spread_index)
        spread_node = gm.graph.call_function(widen, ((spread or conv).args[0], first))
        second = gm.graph.get_attr(narrow_index)
    spread_node.meta["is_wrapped"] = True
    conv.args = (spread_node, *conv.args[1:])
    with gm.graph.inserting_after(conv):
        reader_node = gm.graph.call_function(narrow, (conv, second))
    reader_node.meta["is_wrapped"] = True
    if reader is not None:
        reader.replace_all_uses_with(reader_node)
    else:
        conv.replace_all_uses_with(reader_node, delete_user_cb=lambda user: user is not reader_node)
    for old in (reader, spread):
        if old is not None:
            index_node = old.args[1]
            gm.graph.erase_node(old)
            if not index_node.users:
                gm.graph.erase_node(index_node)
                delattr(gm, index_node.target)


def _buffer(gm: fx.GraphModule, kind: str, value: torch.Tensor) -> str:
    i = 0
    while hasattr(gm, f"_fxprune_{kind}{i}"):
        i += 1
    gm.register_buffer(f"_fxprune_{kind}{i}", value)
    return f"_fxprune_{kind}{i}"
