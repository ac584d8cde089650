"""torch.compile integration: `torch.compile(model, backend="fxprune")` or `backend=fxprune.backend(...)`.

The pipeline runs on each graph Dynamo captures, after `modularize` froze its parameters into
constants; the result goes to the inner backend. Inference only: weights are read once, at
compile time; after changing them call `torch._dynamo.reset()` and compile again.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.fx as fx

from .api import DEFAULT_PIPELINE
from .manager import PassManager
from .meta import HISTORY
from .modularize import modularize
from .pass_base import PassContext


def backend(pipeline: str = DEFAULT_PIPELINE, inner: str | Callable = "inductor", verify: bool = False) -> Callable:
    """A Dynamo backend that prunes every captured graph with `pipeline`, then compiles with `inner`."""
    manager = PassManager(pipeline, verify=verify)  # a bad pipeline fails here, not inside Dynamo

    def compile_fn(gm: fx.GraphModule, example_inputs: list) -> Callable:
        modularize(gm, example_inputs)
        gm = manager.run(gm, PassContext(tuple(example_inputs)))
        if inner == "eager":
            return gm.forward
        # A fresh GraphModule: Dynamo's metadata maps each parameter to a source in the user's model,
        # which the layers fxprune built do not have (aot_autograd would reject them).
        fresh = fx.GraphModule(gm, gm.graph)
        fresh.meta[HISTORY] = gm.meta[HISTORY]
        gm = fresh
        if callable(inner):
            return inner(gm, example_inputs)
        return torch._dynamo.lookup_backend(inner)(gm, example_inputs)

    return compile_fn


def fxprune_backend(gm: fx.GraphModule, example_inputs: list) -> Callable:
    """The entry point registered as backend "fxprune": the default pipeline, then inductor."""
    return backend()(gm, example_inputs)
