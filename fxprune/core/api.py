"""The one-line transform: fxprune.prune(model, example_inputs, pipeline=...)."""

from __future__ import annotations


from typing import Sequence

import torch
import torch.fx as fx
from torch import nn

from fxprune.core.freeze import freeze_computed_weights
from fxprune.core.parametrized import freeze_parametrizations, owned_copy, refuse_hooks
from fxprune.core.manager import PassManager
from fxprune.core.pass_base import FxPass, PassContext
from fxprune.core.pipeline import Pipeline
from fxprune.core.tracing import trace_copy

DEFAULT_PIPELINE = "decompose-conv,prune-basis{energy=0.95},fold"


def as_inputs(example_inputs) -> tuple:
    """A tensor or a tuple of model inputs, as a tuple."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


def prune(
    model: nn.Module,
    example_inputs,
    pipeline: str | Sequence[FxPass] | Pipeline = DEFAULT_PIPELINE,
    *,
    verify: bool = False,
    **context,
) -> fx.GraphModule:
    """Trace a copy of `model` in eval mode and run `pipeline` on it; `model` is never modified.
    Conv/linear weights the model computes from its parameters alone (weight standardisation,
    parametrize, spectral_norm, weight_norm) are first frozen into plain layers (`fxprune.core.freeze`,
    `fxprune.core.parametrized`): the same outputs, bit for bit. A forward hook on a layer is refused.

    `verify=True` lints and shape-checks the graph after every pass and checks that passes meant
    to be lossless kept the outputs (raises VerificationError naming the pass). The passes applied,
    with wall times and statistics, are in `fxprune.history(result)`.
    """
    manager = PassManager(pipeline, verify=verify)  # bad pipeline text fails before any work
    inputs = as_inputs(example_inputs)
    return manager.run(traced_for_passes(model), PassContext(inputs, dict(context)))


def traced_for_passes(model: nn.Module) -> fx.GraphModule:
    """`model` as prune() hands it to the passes: a copy, in eval mode (tracing bakes `self.training`
    branches into the graph), traced, its weights computed from parameters alone frozen into plain
    layers (weight standardisation; the same outputs bit for bit). What `fxprune groups` and the
    zeroed-channel checks analyse, so they see the groups prune-channels will."""
    owned = owned_copy(model).eval()
    freeze_parametrizations(owned)
    gm = trace_copy(owned)
    refuse_hooks(gm)
    freeze_computed_weights(gm)
    return gm
