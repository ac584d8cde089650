"""decompose-conv: replace each conv/linear layer by an exactly equal basis + coef pair (thin SVD)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import torch
import torch.fx as fx

from fxprune.analysis.counting import tied_modules
from fxprune.core.lowrank import (as_groups, build_pair, find_pairs, is_dense_layer, keep_original,
                             matrix_shape, pays, set_module)
from fxprune.core.memory import release_freed
from fxprune.core.meta import ROLE, SOURCE
from fxprune.core.pass_base import FxPass, PassContext, PassResult, option, register
from fxprune.analysis.responses import response_moments
from fxprune.core.svd import response_basis, thin_svd
from fxprune.core.threads import free_threads


TRIM_FROM = 1 << 21  # weights this big (16 MiB in float64) give their freed memory back after their SVD;
# each malloc_trim costs milliseconds, too much to pay after every small layer


@register
@dataclass(frozen=True)
class DecomposeConv(FxPass):
    """Per group, W = U S V^T: a basis layer with the rows of V^T, then a 1x1 layer with U S.

    With `basis=data` (and `data=`), the bases are instead the principal directions of each layer's
    responses on that data (fxprune.core.svd.response_basis: the SVD of W C^(1/2), C the input
    covariance): still exactly equal at full rank, but ordered by what the layer produces on the
    target data, so prune-basis{criterion=energy} drops what that data does not use. The basis rows
    are then not orthonormal.

    Skipped, and counted: layers where even a rank-1 pair would not be smaller (depthwise convs),
    subclasses of Conv/Linear (they may change forward), layers whose weights the graph reads
    directly, layers sharing a weight with another module (tied: a pair would untie them and the
    model would grow), and layers already decomposed.
    """

    name = "decompose-conv"
    summary = "split every conv/linear layer into a basis layer and a 1x1 coefficient layer (lossless)"
    lossless = True
    linear: bool = option(True, "decompose nn.Linear layers too")
    basis: Literal["svd", "data"] = option("svd", "svd: orthonormal filters, ordered by singular value; data: "
                                                  "principal directions of the responses on data= (whitened SVD)")

    @property
    def context_keys(self) -> tuple[str, ...]:  # data= is read only for basis=data
        return ("data",) if self.basis == "data" else ()

    def check_context(self, extra: dict) -> None:
        if self.basis == "data" and extra.get("data") is None:
            raise self.fail("basis=data needs data: pass batches of (inputs, targets), e.g. "
                            "fxprune.prune(model, x, pipeline, data=train_loader)")

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        stats = {"convs-decomposed": 0, "linears-decomposed": 0, "depthwise-skipped": 0, "no-gain-skipped": 0,
                 "weights-read-skipped": 0, "tied-skipped": 0}
        in_pairs = {n.target for p in find_pairs(gm) for n in (p.basis_node, p.coef_node)}
        read = {n.target.rpartition(".")[0] for n in gm.graph.nodes if n.op == "get_attr"}
        tied = tied_modules(gm)
        calls: dict[str, list[fx.Node]] = defaultdict(list)
        for node in gm.graph.nodes:
            if node.op == "call_module" and node.target not in in_pairs:
                calls[node.target].append(node)
        moments = {}
        if self.basis == "data":
            dense = [p for p in calls if is_dense_layer(gm.get_submodule(p))]
            moments = response_moments(gm, dense, ctx.extra["data"])
        with free_threads():  # SVDs on a busy machine: fewer threads, not spin-waiting ones
            for path, nodes in calls.items():
                layer = gm.get_submodule(path)
                if not is_dense_layer(layer) or (isinstance(layer, torch.nn.Linear) and not self.linear):
                    continue
                g, m, n = matrix_shape(layer)
                if path in read or path in tied:
                    stats["weights-read-skipped" if path in read else "tied-skipped"] += 1
                    continue
                if not pays(1, m, n):
                    stats["depthwise-skipped" if m == 1 and g > 1 else "no-gain-skipped"] += 1
                    continue
                if not torch.isfinite(layer.weight).all():
                    raise self.fail(f"layer {path} has NaN or inf weights: an SVD of them means nothing; fix or "
                                    "reload the model's weights")
                set_module(gm, path, decompose(layer, moments.get(path)))
                if layer.weight.numel() >= TRIM_FROM:
                    release_freed()  # the SVD's float64 blocks, before the next layer's
                for node in nodes:
                    _rewire(gm, node, path)
                stats["linears-decomposed" if isinstance(layer, torch.nn.Linear) else "convs-decomposed"] += 1
        return PassResult(gm, stats["convs-decomposed"] + stats["linears-decomposed"] > 0, stats)


def decompose(layer: torch.nn.Module, moment: torch.Tensor | None = None) -> torch.nn.Module:
    """The full-rank pair equal to `layer` (float64, factors stored in the weight's dtype): from its
    SVD, or from its responses' second moment `moment` (g, m, m) where given."""
    g, _, _ = matrix_shape(layer)
    w = as_groups(layer.weight.detach(), g)
    if moment is None:
        u, s, vh = thin_svd(w)  # float64; Gram matrix where accurate
        coef, basis = u.mul_(s[:, None, :]), vh  # in place: u may be as big as the weight
    else:
        coef, basis = response_basis(w, moment)
    container = build_pair(layer, basis, coef, layer.bias)
    keep_original(container, layer)  # fold gives it back bit for bit if nothing is cut
    return container


def _rewire(gm: fx.GraphModule, node: fx.Node, path: str) -> None:
    source = node.meta.get(SOURCE, path)
    with gm.graph.inserting_after(node):
        basis = gm.graph.call_module(f"{path}.basis", node.args, node.kwargs)
    with gm.graph.inserting_after(basis):
        coef = gm.graph.call_module(f"{path}.coef", (basis,))
    basis.meta.update({SOURCE: source, ROLE: "basis"})
    coef.meta.update({SOURCE: source, ROLE: "coef"})
    node.replace_all_uses_with(coef)
    gm.graph.erase_node(node)
