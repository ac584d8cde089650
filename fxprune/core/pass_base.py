"""The shape of a pass: a frozen dataclass of typed options with `run(gm, ctx) -> PassResult`.

Passes keep no state between runs. Options are dataclass fields; their kebab-case names
(`min_rank` -> `min-rank`) are what pipeline text uses. A pass may modify the GraphModule it is
given and returns it (or a new one) in its PassResult.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch.fx as fx

from fxprune.core.errors import PipelineError


@dataclass(frozen=True)
class PassResult:
    graph_module: fx.GraphModule
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PassContext:
    """What a pipeline run knows besides the graph: the example inputs and user context."""

    example_inputs: tuple
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Option:
    name: str  # kebab-case
    field: str  # python name
    type: Any
    default: Any
    help: str


def option(default: Any, help: str) -> Any:
    """Declare a pass option with its default and a one-line description."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class FxPass:
    """Base class of every pass. Subclasses are `@register`ed frozen dataclasses."""

    name: ClassVar[str]
    summary: ClassVar[str]
    lossless: ClassVar[bool]  # verify=True checks numerical equivalence after lossless passes
    requires: ClassVar[dict[str, str]] = {}  # pass that must run earlier -> why
    context_keys: ClassVar[tuple[str, ...]] = ()  # keys of prune(**context) this pass reads (a property where options decide)
    explicit: frozenset = field(default=frozenset(), compare=False, repr=False, metadata={"internal": True})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def check_context(self, extra: dict[str, Any]) -> None:
        """Raise PipelineError before any pass runs if the user context cannot serve this pass."""

    @classmethod
    def options(cls) -> list[Option]:
        return list(_options(cls))

    def fail(self, message: str) -> PipelineError:
        return PipelineError(f"{self.name}: {message}")

    def check_options(self, exclusive: tuple[str, ...] = (), ranges: dict[str, str] | None = None) -> None:
        """Raise PipelineError naming the option when more than one of `exclusive` is given, or a
        given option lies outside its range: "(0, 1]", "[0, 1)" or ">= 1"."""
        given = [f for f in exclusive if getattr(self, f) is not None]
        if len(given) > 1:
            names = ", ".join(f.replace("_", "-") for f in exclusive)
            raise self.fail(f"give one of {names}, not {' and '.join(g.replace('_', '-') for g in given)}")
        for f, text in (ranges or {}).items():
            v = getattr(self, f)
            if v is None:
                continue
            if text.startswith(">="):
                inside = v >= float(text[2:])
            else:
                low, high = (float(t) for t in text[1:-1].split(","))
                inside = (low < v if text[0] == "(" else low <= v) and (v <= high if text[-1] == "]" else v < high)
            if not inside:
                wording = f"at least {text[2:].strip()}" if text.startswith(">=") else f"in {text}"
                raise self.fail(f"option '{f.replace('_', '-')}' must be {wording}, got {v}")

    def check_momentum(self) -> None:
        """momentum smooths Taylor importance across runs: it means nothing for another criterion."""
        if getattr(self, "momentum", None) is not None and getattr(self, "criterion", "taylor") != "taylor":
            raise self.fail(f"momentum smooths taylor importance across runs; criterion={self.criterion} "
                            "has nothing to smooth: drop momentum or use criterion=taylor")

    def check_data_for_taylor(self, extra: dict[str, Any]) -> None:
        """criterion=taylor needs batches of (inputs, targets) under `data`."""
        if getattr(self, "criterion", None) == "taylor" and extra.get("data") is None:
            raise self.fail("criterion=taylor needs data: pass batches of (inputs, targets), e.g. "
                            "fxprune.prune(model, x, pipeline, data=train_loader)")

    def __str__(self) -> str:
        shown = [
            f"{o.name}={format_value(getattr(self, o.field))}"
            for o in self.options()
            if o.field in self.explicit or getattr(self, o.field) != o.default
        ]
        return f"{self.name}{{{' '.join(shown)}}}" if shown else self.name


@functools.cache
def _options(cls: type) -> tuple[Option, ...]:
    """A pass class's options, computed once (type hints are slow to resolve)."""
    hints = typing.get_type_hints(cls)
    return tuple(Option(f.name.replace("_", "-"), f.name, hints[f.name], f.default, f.metadata.get("help", ""))
                 for f in dataclasses.fields(cls) if not f.metadata.get("internal"))


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


_REGISTRY: dict[str, type[FxPass]] = {}


def register(cls: type[FxPass]) -> type[FxPass]:
    """Class decorator: make a pass available by its kebab-case `name` in pipeline text."""
    if cls.name in _REGISTRY:
        raise ValueError(f"a pass named '{cls.name}' is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> dict[str, type[FxPass]]:
    """Every registered pass by name, in registration order."""
    return dict(_REGISTRY)
