"""torch.compile integration: `torch.compile(model, backend="fxprune")` or `backend=fxprune.backend(...)`.

The pipeline runs on each graph Dynamo captures, after `modularize` froze its parameters into
constants; the result goes to the inner backend. Inference only: weights are read once, at
compile time; after changing them call `torch._dynamo.reset()` and compile again.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.fx as fx

from fxprune.analysis.counting import total_params
from fxprune.core.manager import PassManager
from fxprune.core.meta import HISTORY
from fxprune.runners.modularize import modularize
from fxprune.core.pass_base import PassContext
from fxprune.core.verify import output_error, run_model

BACKEND_PIPELINE = "fold"  # lossless: a compiler backend keeps the model's meaning unless told otherwise


def backend(pipeline: str = BACKEND_PIPELINE, inner: str | Callable = "inductor", verify: bool = False) -> Callable:
    """A Dynamo backend that prunes every captured graph with `pipeline`, then compiles with `inner`.

    The default, `fold`, is lossless (BatchNorm folded into the layers). A pipeline that can change
    the outputs must be named; it then warns, once per captured graph, what it removed and how much
    the graph's outputs changed on the example inputs."""
    manager = PassManager(pipeline, verify=verify)  # a bad pipeline fails here, not inside Dynamo
    lossy = [str(p) for p in manager.pipeline.passes if not p.lossless]

    def compile_fn(gm: fx.GraphModule, example_inputs: list) -> Callable:
        modularize(gm, example_inputs)
        inputs = tuple(example_inputs)
        before = (run_model(gm, inputs), total_params(gm)) if lossy else None
        gm = manager.run(gm, PassContext(inputs))
        if before is not None:
            err = output_error(run_model(gm, inputs), before[0])
            after = total_params(gm)
            warnings.warn(f"fxprune backend: '{manager.pipeline}' is lossy ({', '.join(lossy)}): it took a captured "
                          f"graph from {before[1]:,} to {after:,} params ({100 * (1 - after / max(before[1], 1)):.1f}% "
                          f"fewer); its outputs on the example inputs changed by relative L2 {err.rel_l2:.3g} "
                          f"(max abs {err.max_abs:.3g})", stacklevel=2)
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
    """The entry point registered as backend "fxprune": the lossless `fold`, then inductor."""
    return backend()(gm, example_inputs)
