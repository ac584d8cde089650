"""Saving a pruned model in torch's standard exported form (`.pt2`), loadable with torch alone."""

from __future__ import annotations

import copy
import warnings

import torch
import torch.fx as fx

from fxprune.core.io import atomic_write


def save_exported(gm: fx.GraphModule, example_inputs: tuple, path) -> None:
    """torch.export the model with a dynamic batch dimension (every tensor input's dim 0) and save it;
    `torch.export.load(path).module()` gives it back in any process with torch installed, for any
    batch size. A model that cannot take a dynamic batch is exported for the example's batch size,
    with a warning."""
    from fxprune.core.api import as_inputs

    inputs = as_inputs(example_inputs)  # a tensor or a tuple, as prune() takes them
    # export specialises a dimension of size 1, so a batch of 1 is shown to it as a batch of 2
    wide = tuple(x.expand(2, *x.shape[1:]).contiguous() if isinstance(x, torch.Tensor) and x.dim() and x.shape[0] == 1
                 else x for x in inputs)
    dims = tuple({0: torch.export.Dim.DYNAMIC} if isinstance(x, torch.Tensor) and x.dim() else None for x in wide)
    try:  # on a copy: a failed export can leave the module it traced unusable for the next attempt
        program = torch.export.export(copy.deepcopy(gm), wide, dynamic_shapes=dims)
    except Exception as e:  # noqa: BLE001 - a static export still serves the example's batch size
        warnings.warn(f"the model does not export with a dynamic batch ({type(e).__name__}); the .pt2 takes "
                      f"batch size {inputs[0].shape[0] if inputs and isinstance(inputs[0], torch.Tensor) else '?'} "
                      "only", stacklevel=2)
        program = torch.export.export(gm, inputs)
    atomic_write(path, lambda tmp: torch.export.save(program, tmp))
