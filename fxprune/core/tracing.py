"""Symbolic tracing of torchvision and timm models into a GraphModule with provenance."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import torch.fx as fx
from torch import nn

from fxprune.core.errors import TraceError
from fxprune.core.lowrank import is_dense_layer
from fxprune.core.meta import SOURCE
from fxprune.core.parametrized import owned_copy
from fxprune.core.plain_forwards import plain_forward
from fxprune.core.plain_timm import plain_timm_forward


def _timm_leaves() -> tuple[list[type[nn.Module]], list[Callable]]:
    """timm's registered no-trace modules and functions (plus BatchNormAct2d, which `fold` folds)."""
    try:
        from timm.layers import BatchNormAct2d
        from timm.layers._fx import get_notrace_functions, get_notrace_modules
    except ImportError:  # timm is optional for tracing plain torch models
        return [], []
    funcs = [f for f in get_notrace_functions() if callable(f)]
    return [*get_notrace_modules(), BatchNormAct2d], funcs


class _Tracer(fx.Tracer):
    """A tracer that knows timm's leaf modules, traces the modules plain_forwards.py and plain_timm.py
    know (attention, timm's VGG head, TinyViT and MobileViT blocks) as the plain ops they compute, and
    records where tracing currently is."""

    def __init__(self, leaf_modules: Iterable[type[nn.Module]], autowrap_functions: Iterable[Callable]):
        super().__init__(autowrap_functions=tuple(autowrap_functions))
        self._leaves = tuple(leaf_modules)
        self._opened: set[int] = set()  # modules being traced through by a plain forward
        self.path: list[tuple[str, str]] = []

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # a conv/linear subclass that keeps torch's forward (torchvision's Conv3DSimple) is a layer too
        return id(m) not in self._opened and (isinstance(m, self._leaves) or is_dense_layer(m)
                                              or super().is_leaf_module(m, module_qualified_name))

    def call_module(self, m, forward, args, kwargs):
        name = self.path_of_module(m)
        self.path.append((name, type(m).__name__))
        plain = plain_forward(m, args, kwargs) or plain_timm_forward(m, args, kwargs)
        if plain is not None:
            forward = plain
            self._opened.add(id(m))
        try:
            out = super().call_module(m, forward, args, kwargs)
        finally:
            self._opened.discard(id(m))
        self.path.pop()  # kept on failure: TraceError names the module it failed in
        return out


def trace(
    model: nn.Module,
    *,
    leaf_modules: Iterable[type[nn.Module]] = (),
    autowrap_functions: Iterable[Callable] = (),
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """Symbolically trace `model` (not mutated) into a GraphModule.

    timm's registered leaf modules and autowrap functions are always used; pass more with
    `leaf_modules` / `autowrap_functions`, and fix control-flow inputs with `concrete_args`.
    forward() arguments that default to None or a bool are fixed to it unless `concrete_args` says otherwise.
    Every `call_module` node records its module path in `node.meta["fxprune.source"]`.
    Raises TraceError naming the module where tracing broke. A copy of `model` is traced: a forward
    may store what it computes on its modules (timm's EfficientFormer caches its attention bias in eval
    mode), and a traced forward would leave proxies there.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fxprune.trace expects an nn.Module, got {type(model).__name__}")
    return trace_copy(owned_copy(model), leaf_modules=leaf_modules, autowrap_functions=autowrap_functions,
                      concrete_args=concrete_args)


def trace_copy(model: nn.Module, *, leaf_modules: Iterable[type[nn.Module]] = (),
               autowrap_functions: Iterable[Callable] = (), concrete_args: dict[str, Any] | None = None
               ) -> fx.GraphModule:
    """trace() of a model the caller owns (a copy it made): its modules become the GraphModule's."""
    if isinstance(model, fx.GraphModule):
        _record_sources(model)
        return model
    leaves, funcs = _timm_leaves()
    concrete_args = {**_flag_defaults(model), **(concrete_args or {})} or None
    tracer = _Tracer([*leaves, *leaf_modules], [*funcs, *autowrap_functions])
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as e:  # noqa: BLE001 - re-raised with the module path and a hint
        raise TraceError(model, tracer.path, e) from e
    # A pickled GraphModule re-traces itself with its tracer class on load; plain fx.Tracer keeps a
    # saved model loadable where fxprune is not installed.
    graph._tracer_cls = None
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    _record_sources(gm)
    return gm


def _flag_defaults(model: nn.Module) -> dict[str, None | bool]:
    """forward() arguments that default to None or a bool (masks, flags) are traced as that default:
    a proxy would make every `if arg is not None` branch true (timm's Hiera has such a mask)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if (p.default is None or isinstance(p.default, bool))
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _record_sources(gm: fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        if node.op == "call_module":
            node.meta.setdefault(SOURCE, node.target)
