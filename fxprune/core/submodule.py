"""Prune one named submodule of a model that does not trace whole (detection models: data-dependent
control flow in their heads and post-processing), and put the pruned part back."""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch import nn

from fxprune.core.api import DEFAULT_PIPELINE, as_inputs, prune
from fxprune.core.errors import PipelineError
from fxprune.core.lowrank import set_module


def submodule_inputs(model: nn.Module, path: str, example_inputs: tuple) -> tuple:
    """The positional inputs `model.<path>` receives when `model(*example_inputs)` runs in eval mode
    (its first call)."""
    sub = model.get_submodule(path)
    seen: list[tuple] = []

    def hook(module, args, kwargs):
        if kwargs:
            raise PipelineError(f"submodule {path!r} is called with keyword arguments ({', '.join(kwargs)}): "
                                "prune a submodule that takes positional inputs")
        if not seen:
            seen.append(tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args))

    handle = sub.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        handle.remove()
    if not seen:
        raise PipelineError(f"submodule {path!r} was never called by the model's forward on the example inputs")
    return seen[0]


def prune_submodule(model: nn.Module, path: str, example_inputs, pipeline: str = DEFAULT_PIPELINE, *,
                    verify: bool = False, **context) -> nn.Module:
    """A copy of `model` (in eval mode) with `model.<path>` pruned by `pipeline`; `model` is never modified.

    The submodule's example inputs are what it receives when the copy runs on `example_inputs`
    (the whole model's input). Its outputs keep their structure and shapes (dicts, lists and tuples
    too: prune-channels never removes a channel that reaches an output), so the rest of the model
    runs on them unchanged. The pruned part is a GraphModule; fxprune.history(result.<path>) lists
    its passes.
    """
    try:
        model.get_submodule(path)
    except AttributeError as e:
        names = ", ".join(n for n, _ in model.named_children())
        raise PipelineError(f"the model has no submodule {path!r}: its children are {names}") from e
    whole = copy.deepcopy(model).eval()
    inputs = submodule_inputs(whole, path, as_inputs(example_inputs))
    pruned: fx.GraphModule = prune(whole.get_submodule(path), inputs, pipeline, verify=verify, **context)
    set_module(whole, path, pruned)
    return whole
