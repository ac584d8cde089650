"""The pass manager: runs a Pipeline on a GraphModule, timing each pass and keeping its statistics."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx

from fxprune.core.errors import FxPruneError, PassError, PipelineError, first_line
from fxprune.core.meta import HISTORY
from fxprune.core.pass_base import PassContext
from fxprune.core.pipeline import Pipeline
from fxprune.core.verify import run_model, verify_after


@dataclass(frozen=True)
class PassRecord:
    """What one pass did: its canonical text, wall time in seconds and statistics."""

    name: str
    text: str
    seconds: float
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


def history(gm: fx.GraphModule) -> list[PassRecord]:
    """Every pass fxprune applied to `gm` (over all prune() calls), oldest first."""
    # stored as plain dicts: a saved GraphModule pickles its meta and must load without fxprune
    return [PassRecord(**r) for r in gm.meta.get(HISTORY, [])]


class PassManager:
    """Runs passes in order; with `verify=True`, checks the graph after every pass."""

    def __init__(self, pipeline, verify: bool = False):
        self.pipeline = Pipeline.of(pipeline)
        self.verify = verify

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
        """Apply every pass to `gm` (modified in place where passes allow) and return the result."""
        done = history(gm)
        self.pipeline.check_order([r.name for r in done])
        allowed = {k for p in self.pipeline.passes for k in p.context_keys}
        unknown = sorted(set(ctx.extra) - allowed)
        if unknown:
            raise PipelineError(
                f"unknown context {', '.join(map(repr, unknown))}: the passes of '{self.pipeline}' read "
                f"{', '.join(sorted(allowed)) or 'no context'}"
            )
        for p in self.pipeline.passes:
            p.check_context(ctx.extra)
        reference = run_model(gm, ctx.example_inputs) if self.verify else None
        for p in self.pipeline.passes:
            start = time.perf_counter()
            try:
                result = p.run(gm, ctx)
                gm = result.graph_module
                gm.graph.lint()  # a pass that leaves a broken graph fails here, named like any other
                gm.recompile()
            except FxPruneError:
                raise
            except Exception as e:  # noqa: BLE001 - re-raised naming the pass and those before it
                before = ",".join(r.text for r in done) or "none"
                raise PassError(f"pass {p} failed: {type(e).__name__}: {e} (passes before it: {before})") from e
            seconds = time.perf_counter() - start
            if self.verify:
                reference = verify_after(str(p), gm, ctx.example_inputs, reference, p.lossless)
            done.append(PassRecord(p.name, str(p), seconds, result.modified, dict(result.stats)))
            gm.meta[HISTORY] = [dataclasses.asdict(r) for r in done]
        if not self.verify:  # verify ran it after every pass; without it, once: no model that cannot run comes back
            try:
                run_model(gm, ctx.example_inputs)
            except Exception as e:  # noqa: BLE001 - named in one line
                raise PassError(f"the model '{self.pipeline}' returned does not run its example inputs: "
                                f"{type(e).__name__}: {first_line(e)} (verify=True names the pass that broke "
                                "it)") from e
        return gm
