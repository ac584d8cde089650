"""The errors fxprune raises: each names the module, node, pass or option and what to do."""

from __future__ import annotations

from torch import nn


def first_line(error: BaseException) -> str:
    """The first line of an error's message ("" if it has none): enough to name a failure in a table."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


class FxPruneError(Exception):
    """Base class of every error fxprune raises on purpose."""


class TraceError(FxPruneError):
    """Symbolic tracing failed; `module_path` is where (empty: the top-level forward)."""

    def __init__(self, model: nn.Module, path: list[tuple[str, str]], cause: Exception):
        self.module_path = path[-1][0] if path else ""
        where = (
            f"inside module '{path[-1][0]}' ({path[-1][1]})" if path else f"in {type(model).__name__}.forward"
        )
        reason = first_line(cause) or type(cause).__name__
        hint = (
            f"mark that module's class as a leaf: fxprune.trace(model, leaf_modules=[{path[-1][1]}])"
            if path
            else "fix inputs that steer control flow with concrete_args={...}, or wrap the offending "
            "function with torch.fx.wrap"
        )
        super().__init__(
            f"cannot trace {type(model).__name__}: failed {where}: {type(cause).__name__}: {reason}. "
            f"Hint: {hint}."
        )


class PipelineError(FxPruneError, ValueError):
    """Bad pipeline text, an unknown pass or option, a bad option value or a wrong pass order."""


class VerificationError(FxPruneError):
    """A pass left a graph that fails lint, shape propagation or numerical equivalence."""


class PassError(FxPruneError):
    """A pass could not be applied to this model (names the pass and the node)."""
