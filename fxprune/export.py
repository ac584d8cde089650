"""Saving a pruned model in torch's standard exported form (`.pt2`), loadable with torch alone."""

from __future__ import annotations

import torch
import torch.fx as fx

from .io import atomic_write


def save_exported(gm: fx.GraphModule, example_inputs: tuple, path) -> None:
    """torch.export the model on `example_inputs` and save it; `torch.export.load(path).module()`
    gives it back in any process with torch installed."""
    program = torch.export.export(gm, tuple(example_inputs))
    atomic_write(path, lambda tmp: torch.export.save(program, tmp))
