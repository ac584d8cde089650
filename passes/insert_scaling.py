"""insert-scaling: a trainable scale per basis; every other weight frozen except the kept ones."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.fx as fx

from fxprune.analysis.counting import is_counted
from fxprune.core.lowrank import find_pairs, merge_back, pays, set_module
from fxprune.core.meta import SOURCE
from fxprune.nn import BasisScalingConv, ChannelScaling
from fxprune.core.pass_base import FxPass, PassContext, PassResult, option, register


@register
@dataclass(frozen=True)
class InsertScaling(FxPass):
    """Each pair's coef layer becomes a BasisScalingConv (scale = 1: lossless). Afterwards only the
    scales and the modules named by `train` require grad, so transfer learning trains no individual
    weight of the backbone. `fxprune.train_scaling` trains them. Pairs inside the `train` modules
    that do not pay (a new head decomposed at full rank) are first merged back into one plain layer,
    so the head trains as the layer it is, not as two layers and a scale.
    """

    name = "insert-scaling"
    summary = "add a trainable scale per basis and freeze every other weight but the head (lossless)"
    lossless = True
    requires = {"decompose-conv": "it scales the bases that decompose-conv creates"}
    train: str = option("head", "what stays trainable besides the scales: head (the last conv/linear "
                                "layer), none, or module paths separated by commas")

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*", self.train):
            raise self.fail(f"option 'train' must be head, none or module paths separated by commas (no spaces), "
                            f"got {self.train!r}")

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        paths = self._trainable(gm)
        merged = self._merge_trained(gm, paths)
        inserted = 0
        for pair in find_pairs(gm):
            if not isinstance(pair.coef, BasisScalingConv):
                set_module(gm, pair.coef_node.target, BasisScalingConv(pair.coef))
                inserted += 1
        stats = {"scales-inserted": inserted, "trained-pairs-merged": merged,
                 "trainable-params": self._freeze(gm, paths)}
        return PassResult(gm, inserted + merged > 0, stats)

    def _merge_trained(self, gm: fx.GraphModule, paths: list[str]) -> int:
        """Merge back the pairs inside the `train` modules that do not pay (a new head at full rank):
        a layer that trains is trained as one plain layer, never as a product of two layers and a
        scale, which trains badly from a random init. Lossless (bit for bit where nothing was cut)."""
        merged = 0
        for pair in find_pairs(gm):
            if not pays(pair.rank, pair.m, pair.n) and any(pair.path == p or pair.path.startswith(p + ".")
                                                           for p in paths):
                merge_back(gm, pair)
                merged += 1
        return merged

    def _freeze(self, gm: fx.GraphModule, paths: list[str]) -> int:
        """Freeze every parameter but the scales (of bases and of channels) and the `train`
        modules at `paths`; returns how many parameters stay trainable."""
        for p in gm.parameters():
            p.requires_grad_(False)
        for m in gm.modules():
            if isinstance(m, BasisScalingConv):
                m.scale.requires_grad_(True)
            elif isinstance(m, ChannelScaling):
                m.weight.requires_grad_(True)
        for path in paths:
            for p in gm.get_submodule(path).parameters():
                p.requires_grad_(True)
        return sum(p.numel() for p in gm.parameters() if p.requires_grad)

    def _trainable(self, gm: fx.GraphModule) -> list[str]:
        if self.train == "none":
            return []
        if self.train == "head":
            layers = [n for n in gm.graph.nodes if n.op == "call_module" and is_counted(gm.get_submodule(n.target))]
            if not layers:
                raise self.fail("option 'train=head': the model has no conv/linear layer to keep trainable")
            return [layers[-1].meta.get(SOURCE, layers[-1].target)]
        paths = [p.strip() for p in self.train.split(",") if p.strip()]
        names = dict(gm.named_modules())
        for path in paths:
            if path not in names:
                raise self.fail(f"option 'train' names '{path}', which is not a module of this model; write "
                                "head, none or module paths such as 'classifier,blocks.6'")
        return paths
