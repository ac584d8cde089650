"""The savings report: one row per original conv/linear layer, an (other) row and exact totals."""

from __future__ import annotations

import copy
import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
from tabulate import tabulate
from torch import nn

from fxprune.analysis.counting import node_macs, total_macs, total_params, unused_params
from fxprune.core.io import atomic_write_text
from fxprune.core.lowrank import CONVS, groups_of
from fxprune.core.meta import RANK, ROLE, SOURCE
from fxprune.core.tracing import trace_copy

COLUMNS = ["layer", "kind", "form", "rank", "channels", "params_before", "params_after", "macs_before",
           "macs_after"]
_HEADERS = ["layer", "kind", "form", "rank kept/full", "out ch kept/full", "params", "params after",
            "MACs", "MACs after", "params saved"]


@dataclass
class SavingsReport:
    """`rows`: list of dicts (COLUMNS); `totals`: the totals row. MACs are multiply-accumulates.
    `unused`: parameters the original holds but its eval forward never uses (training-only heads),
    by module path; tracing drops them, so they are outside the rows and totals."""

    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    unused: dict[str, int] = field(default_factory=dict)

    def _table(self) -> list[list[Any]]:
        return [[r[c] for c in COLUMNS] + [_saved(r)] for r in [*self.rows, self.totals]]

    def __str__(self) -> str:
        return tabulate(self._table(), headers=_HEADERS, intfmt=",") + self._unused_note()

    def to_markdown(self) -> str:
        return tabulate(self._table(), headers=_HEADERS, tablefmt="github", intfmt=",") + self._unused_note()

    def to_json(self) -> str:
        return json.dumps({"units": {"macs": "multiply-accumulates"}, "rows": self.rows, "totals": self.totals,
                           "unused": self.unused}, indent=1)

    def _unused_note(self) -> str:
        if not self.unused:
            return ""
        where = ", ".join(f"{path} ({n:,})" for path, n in self.unused.items())
        return (f"\n\nNot counted: {sum(self.unused.values()):,} parameters the model holds but never uses in "
                f"eval, so tracing drops them: {where}.")

    def to_csv(self, path) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows([*self.rows, self.totals])
        atomic_write_text(path, buf.getvalue())


def _saved(row: dict[str, Any]) -> str:
    before = row["params_before"]
    return f"{100 * (1 - row['params_after'] / before):.1f}%" if before else ""


def savings(original: nn.Module, pruned: nn.Module, example_inputs) -> SavingsReport:
    """Compare `pruned` with `original` (neither is modified) on `example_inputs`."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    before_gm = trace_copy(copy.deepcopy(original).eval())
    # counting runs copies, never the caller's modules
    after_gm = trace_copy(copy.deepcopy(pruned) if isinstance(pruned, fx.GraphModule) else copy.deepcopy(pruned).eval())
    before, after = _layers(before_gm, inputs), _layers(after_gm, inputs)
    rows = [_row(source, layer, after.get(source)) for source, layer in before.items()]
    totals = {"layer": "total", "kind": "", "form": "", "rank": "", "channels": "",
              "params_before": total_params(before_gm), "params_after": total_params(pruned),
              "macs_before": total_macs(before_gm, inputs), "macs_after": total_macs(after_gm, inputs)}
    other = {"layer": "(other: norms, embeddings, attention matmuls, ...)", "kind": "", "form": "", "rank": "",
             "channels": ""}
    for key in ("params_before", "params_after", "macs_before", "macs_after"):
        other[key] = totals[key] - sum(r[key] for r in rows)
    return SavingsReport(rows + [other], totals, unused_params(original, before_gm))


@dataclass
class _Layer:
    params: int = 0
    macs: int = 0
    kind: str = ""
    form: str = "dense"
    rank: str = ""
    out_channels: int = 0


def _layers(gm: fx.GraphModule, inputs: tuple) -> dict[str, _Layer]:
    macs = node_macs(gm, inputs)
    layers: dict[str, _Layer] = defaultdict(_Layer)
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if node.name not in macs:
            continue
        module = gm.get_submodule(node.target)
        layer = layers[node.meta.get(SOURCE, node.target)]
        layer.macs += macs[node.name]
        if node.target not in seen:
            seen.add(node.target)
            layer.params += sum(p.numel() for p in module.parameters())
        role = node.meta.get(ROLE)
        if role == "basis":
            continue
        layer.out_channels = module.weight.shape[0]
        if role == "coef":
            basis = gm.get_submodule(node.args[0].target)
            g = groups_of(basis)
            full = min(module.weight.shape[0] // g, basis.weight[0].numel()) * g
            layer.form, layer.rank = "pair", f"{basis.weight.shape[0]}/{full}"
        else:
            layer.kind = _kind(module)
            if RANK in node.meta:
                layer.form, layer.rank = "merged", "{}/{}".format(*node.meta[RANK])
    return dict(layers)


def _row(source: str, before: _Layer, after: _Layer | None) -> dict[str, Any]:
    after = after or _Layer(form="removed")
    channels = f"{after.out_channels}/{before.out_channels}" if after.out_channels != before.out_channels else ""
    return {"layer": source, "kind": before.kind, "form": after.form, "rank": after.rank, "channels": channels,
            "params_before": before.params, "params_after": after.params, "macs_before": before.macs,
            "macs_after": after.macs}


def _kind(m: nn.Module) -> str:
    if not isinstance(m, CONVS):
        return "linear"
    k = "x".join(map(str, m.kernel_size))
    g = groups_of(m)
    if g > 1 and g == m.in_channels:
        return f"dwconv{k}"
    return f"gconv{k}/g{g}" if g > 1 else f"conv{k}"
