"""Checks run between passes with verify=True: graph lint, shape propagation, output equivalence."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
from torch.utils._pytree import tree_leaves

from fxprune.analysis.counting import propagate_shapes
from fxprune.core.errors import VerificationError

# Float32 tolerance for passes meant to be lossless; see README "Numerics" for the evidence.
RTOL = 1e-4
ATOL = 1e-4


@dataclass(frozen=True)
class OutputError:
    max_abs: float
    rel_l2: float

    def ok(self) -> bool:
        return self.rel_l2 < 1e-5 or self.max_abs <= ATOL

    def __str__(self) -> str:
        return f"max abs error {self.max_abs:.3g}, relative L2 error {self.rel_l2:.3g}"


def run_model(module: torch.nn.Module, example_inputs: tuple):
    with torch.no_grad():
        return module(*example_inputs)


def output_error(actual, expected) -> OutputError:
    """Largest absolute difference and largest relative-L2 difference over the tensors of two model
    outputs (dicts, lists and tuples leaf by leaf: a small output cannot hide behind a large one)."""
    a, e = tree_leaves(actual), tree_leaves(expected)
    if len(a) != len(e):
        return OutputError(float("inf"), float("inf"))
    max_abs, rel_l2 = 0.0, 0.0
    for x, y in zip(a, e):
        if not isinstance(x, torch.Tensor):
            continue
        if x.shape != y.shape:
            return OutputError(float("inf"), float("inf"))
        x, y = x.double(), y.double()
        same = (x == y) | (x.isnan() & y.isnan())  # equal infinities and NaN where the reference has NaN
        if not (same | (x.isfinite() & y.isfinite())).all():
            return OutputError(float("inf"), float("inf"))  # NaN or inf that the reference has not
        d = torch.where(same, 0.0, x - y)
        max_abs = max(max_abs, d.abs().max().item() if d.numel() else 0.0)
        num, den = d.pow(2).sum().item(), torch.where(y.isfinite(), y, 0.0).pow(2).sum().item()
        rel_l2 = max(rel_l2, (num / den) ** 0.5 if den else num ** 0.5)
    return OutputError(max_abs, rel_l2)


def verify_after(pass_text: str, gm: fx.GraphModule, example_inputs: tuple, reference, lossless: bool):
    """Lint and shape-check `gm`; for a lossless pass also compare with `reference` outputs.

    Returns the new outputs. Raises VerificationError naming the pass.
    """
    try:
        gm.graph.lint()
        propagate_shapes(gm, example_inputs)
    except Exception as e:  # noqa: BLE001 - re-raised naming the pass
        raise VerificationError(f"after pass {pass_text}: the graph is invalid: {type(e).__name__}: {e}") from e
    out = run_model(gm, example_inputs)
    if reference is not None:
        err = output_error(out, reference)
        if err.max_abs == float("inf"):
            raise VerificationError(f"after pass {pass_text}: the outputs hold NaN or inf that they did not hold "
                                    "before, or changed structure or shape")
        if lossless and not err.ok():
            raise VerificationError(
                f"after pass {pass_text}: outputs changed ({err}) although the pass is meant to be "
                f"lossless (tolerance: relative L2 < 1e-5 or max abs <= {ATOL})"
            )
    return out
