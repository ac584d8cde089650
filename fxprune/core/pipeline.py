"""Textual pipelines, MLIR style: `decompose-conv,prune-basis{energy=0.95},fold`.

`Pipeline.parse(text)` checks pass names, option names, option types and pass order;
`str(pipeline)` prints the canonical text, which parses back to an equal pipeline.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any, Iterable, Sequence

from fxprune.core.errors import PipelineError
from fxprune.core.pass_base import FxPass, Option, registered

# possessive quantifiers: no backtracking, so parsing is linear in the text's length
_ITEM = re.compile(r"\s*+([A-Za-z0-9_-]++)\s*+(?:\{([^{}]*+)\})?\s*+(,|$)")
_OPT = re.compile(r"([A-Za-z0-9_-]++)=([^\s=]++)")


def excerpt(text: str, pos: int = 0, width: int = 40) -> str:
    """`text` as repr, cut to about `width` characters either side of `pos`."""
    start, end = max(0, pos - width), min(len(text), pos + width)
    return ("..." if start else "") + repr(text[start:end]) + ("..." if end < len(text) else "")


class Pipeline:
    """An ordered list of pass instances."""

    def __init__(self, passes: Iterable[FxPass]):
        self.passes: list[FxPass] = list(passes)
        for p in self.passes:
            if not isinstance(p, FxPass):
                raise PipelineError(f"pipeline items must be fxprune passes, got {type(p).__name__}")

    @classmethod
    def parse(cls, text: str) -> "Pipeline":
        if not isinstance(text, str):
            raise PipelineError(f"a pipeline is text or a list of passes, got {type(text).__name__}: write e.g. "
                                "'decompose-conv,fold'")
        if not text.strip():
            raise PipelineError("empty pipeline: name at least one pass, e.g. 'decompose-conv,fold'")
        passes, pos, last = [], 0, len(text.rstrip())
        while pos < len(text):
            m = _ITEM.match(text, pos)
            if not m or m.end() == pos:
                raise PipelineError(f"cannot parse pipeline {excerpt(text, pos)} at column {pos + 1}: expected "
                                    "'pass-name' or 'pass-name{key=value ...}' separated by commas")
            passes.append(_make_pass(m.group(1), m.group(2)))
            pos = m.end()
            if m.group(3) == "," and pos >= last:
                raise PipelineError(f"pipeline {excerpt(text, pos)} ends with a comma: name a pass after it")
        return cls(passes)

    @classmethod
    def of(cls, pipeline: "str | Sequence[FxPass] | Pipeline") -> "Pipeline":
        if isinstance(pipeline, Pipeline):
            return pipeline
        if isinstance(pipeline, (list, tuple)):
            return cls(pipeline)
        return cls.parse(pipeline)  # text, or a clear error for anything else

    def check_order(self, applied: Sequence[str] = ()) -> None:
        """Refuse a pass whose prerequisite neither ran before (`applied`) nor comes earlier."""
        seen = set(applied)
        for p in self.passes:
            for needed, why in p.requires.items():
                if needed not in seen:
                    raise PipelineError(
                        f"wrong pass order: {p.name} must come after {needed} ({why}); "
                        f"write '{needed},...,{p.name}'"
                    )
            seen.add(p.name)

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)

    def __repr__(self) -> str:
        return f"Pipeline({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.passes == other.passes


def _make_pass(name: str, body: str | None) -> FxPass:
    passes = registered()
    if name not in passes:
        close = difflib.get_close_matches(name, passes, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise PipelineError(f"unknown pass {excerpt(name)}: {hint}registered passes: {', '.join(passes)}")
    cls = passes[name]
    opts = {o.name: o for o in cls.options()}
    values: dict[str, Any] = {}
    body = (body or "").strip()
    for token in body.split() if body else []:
        m = _OPT.fullmatch(token)
        if not m:
            raise PipelineError(f"{name}: cannot parse option {excerpt(token)}: write key=value, separated by spaces")
        key, raw = m.groups()
        if key not in opts:
            valid = ", ".join(opts) or "none"
            raise PipelineError(f"{name} has no option {excerpt(key)}; valid options: {valid}")
        if opts[key].field in values:
            raise PipelineError(f"{name}: option '{key}' is given twice")
        values[opts[key].field] = _convert(name, opts[key], raw)
    return cls(**values, explicit=frozenset(values))


def _convert(pass_name: str, opt: Option, raw: str) -> Any:
    kinds = [opt.type]
    if isinstance(opt.type, types.UnionType) or typing.get_origin(opt.type) is typing.Union:
        kinds = [t for t in typing.get_args(opt.type) if t is not type(None)]
    for kind in kinds:
        try:
            if kind is bool:
                if raw.lower() in ("true", "false"):
                    return raw.lower() == "true"
                continue
            if typing.get_origin(kind) is typing.Literal:
                if raw in typing.get_args(kind):
                    return raw
                continue
            return kind(raw)
        except ValueError:
            continue
    raise PipelineError(f"{pass_name}: option '{opt.name}' expects {_type_name(opt.type)}, got {excerpt(raw)}")


def _type_name(t: Any) -> str:
    if typing.get_origin(t) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(t)))
    args = [a for a in typing.get_args(t) if a is not type(None)] or [t]
    return " or ".join("an integer" if a is int else "a number" if a is float else "true or false"
                       if a is bool else getattr(a, "__name__", str(a)) for a in args)


def describe_passes() -> list[dict[str, str]]:
    """Rows for `fxprune passes`: every registered pass with its options and defaults."""
    rows = []
    for name, cls in registered().items():
        opts = cls.options()
        rows.append({
            "pass": name,
            "summary": cls.summary,
            "options": "\n".join(f"{o.name}={_default_text(o)}: {o.help}" for o in opts) or "-",
        })
    return rows


def _default_text(o: Option) -> str:
    return "unset" if o.default is None else str(o.default).lower() if isinstance(o.default, bool) else str(o.default)

