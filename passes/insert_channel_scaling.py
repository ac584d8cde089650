"""insert-channel-scaling: a trainable scale per prunable output channel (Wong et al.'s channel scaling)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from fxprune.analysis.channels import analyse
from fxprune.core.lowrank import set_module
from fxprune.core.meta import ROLE
from fxprune.nn import ChannelScaling
from fxprune.core.pass_base import PassContext, PassResult, register

from .insert_scaling import InsertScaling


@register
@dataclass(frozen=True)
class InsertChannelScaling(InsertScaling):
    """After every layer whose output channels prune-channels could remove (a member of a prunable
    channel group), a ChannelScaling module (scale = 1: lossless). Then, as with insert-scaling,
    only the scales (of channels, and of bases if insert-scaling ran) and the `train` modules
    require grad. Train with `fxprune.train_scaling(gm, data, l1=...)`, prune with
    `prune-channels{criterion=scale}`; `fold` multiplies the scales into the layers.
    """

    name = "insert-channel-scaling"
    summary = "add a trainable scale per prunable output channel and freeze every other weight but the head"
    requires = {}

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        paths = self._trainable(gm)
        merged = self._merge_trained(gm, paths)
        if merged:
            gm.recompile()
        graph = analyse(gm, ctx.example_inputs)
        producers = sorted({path for g in graph.prunable for path, role in g.members if role == "out"})
        inserted = 0
        for path in producers:
            (node,) = gm.graph.find_nodes(op="call_module", target=path)  # prunable: called once
            if any(u.op == "call_module" and isinstance(gm.get_submodule(u.target), ChannelScaling)
                   for u in node.users):
                continue
            weight = gm.get_submodule(path).weight
            dim = 1 if weight.dim() > 2 else -1  # convs: channels first; linear: channels last
            # beside a pair's container, not inside it: prune-basis and fold replace the container whole
            owner = path.rpartition(".")[0] if node.meta.get(ROLE) == "coef" else path
            target = f"{owner}_channel_scale"
            set_module(gm, target, ChannelScaling(weight.shape[0], dim, weight))
            with gm.graph.inserting_after(node):
                scaled = gm.graph.call_module(target, (node,))
            node.replace_all_uses_with(scaled, delete_user_cb=lambda user: user is not scaled)
            inserted += 1
        stats = {"channel-scales-inserted": inserted, "trained-pairs-merged": merged,
                 "trainable-params": self._freeze(gm, paths)}
        return PassResult(gm, inserted + merged > 0, stats)

