"""Weights computed by torch.nn.utils' parametrizations and hooks, frozen before tracing; hooks refused.

`parametrize.register_parametrization` (and the newer `parametrizations.spectral_norm` / `weight_norm`)
computes a weight from its originals on every access; the older `utils.spectral_norm` and
`utils.weight_norm` compute it in a forward pre-hook. Traced as they are, the passes would slice the
originals while the computation still expects their full shapes, and a pruned model would not run. In
eval the computed weight is a constant, so it is computed once, with torch's own removal functions (the
same ops on the same values: outputs bit for bit), into a plain parameter of the copy prune() owns.
A forward hook left on a layer that stays a call in the graph would be dropped when a pass rewrites it,
so it is refused, naming the layer.
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from fxprune.core.errors import FxPruneError


def owned_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model`. The weight a norm hook computed in a training forward, or a cache a forward
    filled (timm's attention_bias_cache: {device: table[:, index]}), is a non-leaf tensor, which deepcopy
    refuses: the copy gets it detached (the forward recomputes it anyway), the model keeps it."""
    found = [t for m in model.modules() for v in vars(m).values()
             for t in (v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else (v,))]
    memo = {id(t): t.detach().clone() for t in found
            if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter) and not t.is_leaf}
    return copy.deepcopy(model, memo)


def freeze_parametrizations(model: nn.Module) -> int:
    """Replace every parametrized or norm-hooked tensor of `model` (a copy the caller owns) by its computed
    value; returns how many."""
    frozen = 0
    with torch.no_grad():
        for module in list(model.modules()):  # removing a parametrization changes the tree
            if parametrize.is_parametrized(module):
                # a deep copy shares the class torch generated for the original, and removal deletes the
                # parametrized properties from that class: the copy gets a class of its own first
                cls = type(module)
                module.__class__ = type(cls.__name__, cls.__bases__,
                                        {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")})
                for name in list(module.parametrizations.keys()):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
                    frozen += 1
            for hook in list(module._forward_pre_hooks.values()):
                if isinstance(hook, SpectralNorm):
                    nn.utils.remove_spectral_norm(module, hook.name)
                    frozen += 1
                elif isinstance(hook, WeightNorm):
                    nn.utils.remove_weight_norm(module, hook.name)
                    frozen += 1
    return frozen


def refuse_hooks(gm: fx.GraphModule) -> None:
    """A layer the graph calls as a module must carry no forward hook: a pass that rewrites it drops it."""
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        kinds = [kind for kind, hooks in (("forward hook", module._forward_hooks),
                                          ("forward pre-hook", module._forward_pre_hooks)) if hooks]
        if kinds:
            raise FxPruneError(f"layer '{node.target}' ({type(module).__name__}) has a {kinds[0]}: the passes "
                               "rewrite layers and would drop it; remove it before pruning (its handle's "
                               ".remove()) and add it to the pruned model's layer if you still need it")
