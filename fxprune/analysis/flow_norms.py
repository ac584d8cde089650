"""Channel rules for norms over the channel axis: LayerNorm, RMSNorm and GroupNorm, modules or functions.
They keep the channels and slice their affine; their statistics then run over fewer channels (`Norm`: the
lossless check masks removed channels out of them, channels.as_removed). GroupNorm's groups stay equal
(num_groups is kept): position j of every group goes together, as in a grouped conv."""

from __future__ import annotations

import torch.fx as fx
from torch import nn

from fxprune.analysis.flow_types import Fixup, Member, Norm, node_arg, tensor_shape


class NormRules:
    """Mixed into channel_flow._Propagator (its state: flow, origin, used, parts, ...)."""

    def norm_module(self, node: fx.Node, m: nn.Module, path: str, tracked) -> None:
        """LayerNorm / RMSNorm over the last dim, GroupNorm (over dims 1... of each group)."""
        axis, ids = tracked
        n = len(tensor_shape(node))
        groups = 1
        if isinstance(m, nn.GroupNorm):
            if axis != 1:
                return self.barrier(node, f"module {path} (GroupNorm of channels on axis {axis})")
            groups, dims = m.num_groups, tuple(range(1, n))
            self.flow.align(ids.view(groups, -1))
        else:
            if len(m.normalized_shape) != 1:
                return self.barrier(node, f"module {path} ({type(m).__name__} over {len(m.normalized_shape)} dims)")
            if axis != n - 1:
                return self.keep(node, node.args[0])
            dims = (n - 1,)
        self.flow.members.append(Member(path, "norm", ids))
        self.flow.norms.append(Norm(node.name, ids, axis, dims, isinstance(m, nn.RMSNorm), groups))
        self.flow.value[node] = tracked

    def norm_function(self, node: fx.Node, name: str) -> None:
        """F.layer_norm(x, shape, weight, bias, eps) / F.rms_norm(x, shape, weight, eps) over the last dim."""
        src = node.args[0]
        axis, ids = self.flow.value[src]
        n = len(tensor_shape(src))
        shape = node_arg(node, 1, "normalized_shape")
        k = 1 if isinstance(shape, int) else len(shape)
        if axis < n - k:  # statistics over other dims: channels stay independent
            return self.keep(node, src)
        if k != 1:
            return self.barrier(node, f"{name} ({node.name}) over the channel axis and others")
        if not self.affine(node, name, ("weight", "bias") if name == "layer_norm" else ("weight",), ids):
            return
        self.flow.norms.append(Norm(node.name, ids, n - 1, (n - 1,), name == "rms_norm"))
        if isinstance(shape, int):
            self.flow.fixups.append(Fixup(node.name, 1, None, ids))
        elif isinstance(shape[0], int):
            self.flow.fixups.append(Fixup(node.name, 1, 0, ids))
        self.flow.value[node] = (axis, ids)

    def affine(self, node: fx.Node, name: str, keys: tuple[str, ...], ids) -> bool:
        """Slice a functional norm's affine (args 2, 3 or by keyword) with its channels; a barrier if one
        is not a model attribute."""
        for i, key in enumerate(keys):
            t = node.args[2 + i] if len(node.args) > 2 + i else node.kwargs.get(key)
            if t is not None and not self.adopt(t, node, 0, ids):
                self.barrier(node, f"{name} ({node.name}) with a {key} that is not a model attribute")
                return False
        return True

    def group_norm_function(self, node: fx.Node) -> None:
        """F.group_norm(x, groups, weight, bias, eps): statistics over dims 1... of each group, channels on
        axis 1."""
        src = node.args[0]
        axis, ids = self.flow.value[src]
        groups = node_arg(node, 1, "num_groups")
        if not isinstance(groups, int) or axis != 1:
            return self.barrier(node, f"group_norm ({node.name}) with groups={groups} of channels on axis {axis}")
        if not self.affine(node, "group_norm", ("weight", "bias"), ids):
            return
        self.flow.align(ids.view(groups, -1))
        self.flow.norms.append(Norm(node.name, ids, 1, tuple(range(1, len(tensor_shape(src)))), False, groups))
        self.flow.value[node] = (axis, ids)
