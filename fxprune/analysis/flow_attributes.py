"""Channel rules for tensors read directly from the model (get_attr) and channel counts read as numbers.

An attribute's origin is carried through ops that only add, drop, move or broadcast dims; where it meets
channels it is sliced with them (`param` members), if every use of it is understood. A channel count read
from a shape may size a reshape's channel axis (rewritten) or a dim channels do not change (written as its
value); any other use keeps those channels. F.linear / F.convNd on attributes are layers."""

from __future__ import annotations

import math

import torch
import torch.fx as fx

from fxprune.analysis.flow_types import (NEUTRAL, TOKENS_ONLY, Fixup, Member, node_arg, op_name, size_args, tensor_args,
                                         tensor_shape)


# functions of one attribute that keep its positions (Swin V2's logit scale: clamp(...).exp())
POINTWISE = {"clamp", "exp", "sigmoid", "neg", "abs", "sqrt", "tanh",
             "zeroed_key_bias"}  # fxprune.core.plain_forwards: its thirds shrink alike (q, k, v of a head together)


class AttributeRules:
    """Mixed into channel_flow._Propagator (its state: flow, origin, used, parts, ...)."""

    def derive(self, node: fx.Node, name: str) -> bool:
        """Carry the origin of an attribute through ops that only add, drop, move or broadcast dims
        (gamma.reshape(1, -1, 1, 1), cls_token.expand(B, -1, -1)). True if `node` is such an op."""
        if name == "cat":
            return self.cat_attributes(node)
        src = node.args[0] if node.args else None
        if src not in self.origin or name != "type_as" and any(  # type_as reads the other tensor's dtype only
                a is not src and a in self.flow.value for a in tensor_args(node)):
            return False
        path, dims = self.origin[src]
        old, new = tensor_shape(src), tensor_shape(node)
        if old is None or new is None:
            return False
        if name in ("contiguous", "float", "to", "type", "type_as", "detach", "clone", "expand", "expand_as"):
            mapped = [None] * (len(new) - len(old)) + dims if len(new) >= len(old) else None
        elif name in ("reshape", "view", "unsqueeze", "squeeze", "flatten"):  # dims kept whole keep their axis
            mapped = [None] * len(new)
            for i, d in enumerate(dims):
                if d is not None and old[i] > 1:
                    j = next((j for j in range(len(new)) if new[j] == old[i]
                              and math.prod(new[:j]) == math.prod(old[:i])), None)
                    if j is None:
                        return False
                    mapped[j] = d
        elif name in POINTWISE and old == new:
            mapped = list(dims)
        elif name in TOKENS_ONLY and old[-1] == new[-1]:
            mapped = [None] * (len(new) - 1) + dims[-1:]
        elif name == "getitem" and isinstance(node.args[1], int):  # one row of a table: alpha[i]
            mapped = dims[1:]
        elif name == "getitem" and _gather(node.args[1]) is not None:  # table[index], table[:, index]: gathered
            k, index = _gather(node.args[1])
            mapped = dims[:k] + [None] * len(tensor_shape(index)) + dims[k + 1:]
        elif name in ("permute", "transpose"):
            order = list(range(len(old)))
            if name == "transpose":
                a, b = (d % len(old) for d in node.args[1:3])
                order[a], order[b] = order[b], order[a]
            else:
                order = [d % len(old) for d in (node.args[1] if isinstance(node.args[1], (tuple, list)) else node.args[1:])]
            mapped = [dims[d] for d in order]
        else:
            return False
        if mapped is not None:
            self.origin[node] = (path, mapped)
            self.used.add((src, node))
            if name in ("reshape", "view", "expand"):  # sizes to rewrite if the attribute is sliced
                self.attr_sizes += [(node, j, path, d) for j, d in enumerate(mapped) if d is not None]
        return mapped is not None

    def cat_attributes(self, node: fx.Node) -> bool:
        """cat of attributes along one of their axes (BEiT's and EVA's qkv bias: q_bias, a zero k_bias,
        v_bias): the parts are sliced where the result meets channels (adopt). True if `node` is one."""
        tensors = node.args[0]
        dim = node_arg(node, 1, "dim", 0)
        if not isinstance(tensors, (list, tuple)) or not tensors or not all(t in self.origin for t in tensors):
            return False
        dim %= len(tensor_shape(node))
        if any(len(tensor_shape(t)) != len(tensor_shape(node)) or self.origin[t][1][dim] is None for t in tensors):
            return False
        bounds = [0]
        for t in tensors:
            bounds.append(bounds[-1] + tensor_shape(t)[dim])
        self.composite[node] = (dim, [(t, a, b) for t, a, b in zip(tensors, bounds, bounds[1:])])
        return True

    def adopt(self, arg, user: fx.Node, pos: int, ids: torch.Tensor) -> bool:
        """Slice the attribute behind `arg` along the axis at its dim `pos` with the channels `ids` (each
        part of a cat of attributes with its share of them)."""
        if arg in self.composite:
            dim, parts = self.composite[arg]
            if pos != dim or parts[-1][2] != len(ids) or not all(self.adoptable(t, pos, b - a) for t, a, b in parts):
                return False
            for t, a, b in parts:
                self.adopt(t, arg, pos, ids[a:b])
            self.used.add((arg, user))
            return True
        if not self.adoptable(arg, pos, len(ids)):
            return False
        path, dims = self.origin[arg]
        axis = dims[pos]
        self.used.add((arg, user))
        same = [m for m in self.flow.members if m.role == "param" and m.path == path and m.axis == axis]
        if same:  # read in several places: the same channels everywhere
            self.flow.union(same[0].ids, ids)
        else:
            self.flow.members.append(Member(path, "param", ids, axis))
        return True

    def adoptable(self, arg, pos: int, n: int) -> bool:
        path, dims = self.origin.get(arg, (None, []))
        axis = dims[pos] if 0 <= pos < len(dims) else None
        return axis is not None and self.attr_shape[path][axis] == n

    def check_attributes(self) -> None:
        """An attribute sliced with its channels must have no use the rules did not understand; sizes
        written for it in a reshape (table[index].view(49, 49, 2): 2 heads) follow its channels."""
        for member in [m for m in self.flow.members if m.role == "param"]:
            for node, dim, path, axis in self.attr_sizes:
                if (path, axis) == (member.path, member.axis):
                    self.literal_size(node, dim, member.ids)
            for node in self.gm.graph.find_nodes(op="get_attr", target=member.path):
                escape = self.escape(node)
                if escape:
                    self.flow.block(member.ids, f"{member.path} is also read by {escape}")

    def escape(self, node: fx.Node) -> str | None:
        for user in node.users:
            if (node, user) not in self.used and op_name(user) not in NEUTRAL:
                return f"{op_name(user)} ({user.name})"
            found = self.escape(user) if user in self.origin or user in self.composite else None
            if found:
                return found
        return None

    def sizes(self, node: fx.Node, name: str) -> None:
        """Note x.shape, x.size() and the channel count read from them (x.shape[axis], x.size(axis))."""
        src = node.args[0]
        if name in ("getattr", "size") and src in self.flow.value:
            axis, ids = self.flow.value[src]
            n = len(tensor_shape(src))
            if name == "getattr" and node.args[1] == "shape" or name == "size" and len(node.args) == 1:
                self.shape_of[node] = src
            elif name == "size" and isinstance(node.args[1], int) and node.args[1] % n == axis:
                self.size_of[node] = ids
        elif name == "getitem" and src in self.shape_of and isinstance(node.args[1], int):
            axis, ids = self.flow.value[self.shape_of[src]]
            if node.args[1] % len(tensor_shape(self.shape_of[src])) == axis:
                self.size_of[node] = ids

    def check_sizes(self) -> None:
        """A channel count read as a number may only give the size of a reshape's channel axis (then
        rewritten to a literal), or, as itself or divided or multiplied by a constant (CoaT's and Swin V2's
        head_dim = C // heads), the size of a dim that stays (rewritten to its value now), or be compared
        equal to another count (their channels then go together); any other use keeps those channels."""
        for size, ids in self.size_of.items():
            for user in size.users:
                if (size, user) in self.used:
                    continue
                other = next((a for a in user.args if a is not size), size)
                if op_name(user) == "eq" and other in self.size_of and len(self.size_of[other]) == len(ids):
                    self.flow.union(ids, self.size_of[other])  # asserted equal (GCViT): they stay equal
                elif op_name(user) in SIZE_ARITHMETIC and all(a is size or isinstance(a, (int, float))
                                                             for a in user.args) and user.users:
                    blocked = [u for u in user.users if (user, u) not in self.used and not self.fixed(user, u)]
                    if blocked:
                        self.flow.block(ids, f"their count is read by {op_name(blocked[0])} ({blocked[0].name})")
                elif not self.fixed(size, user):
                    self.flow.block(ids, f"their count is read by {op_name(user)} ({user.name})")

    def fixed(self, size: fx.Node, user: fx.Node) -> bool:
        """Where `size` gives sizes of a view/reshape/expand's dims that stay (no channels merge into them),
        record their rewriting to the values they have now; else False."""
        where = size_args(user, size) if op_name(user) in ("view", "reshape", "expand") else []
        if not where or any((user, dim) in self.merged for dim, _, _ in where):
            return False
        self.flow.fixups += [Fixup(user.name, index, item, None, tensor_shape(user)[dim]) for dim, index, item in where]
        return True

    def layer_function(self, node: fx.Node, name: str) -> None:
        """F.linear(x, weight, bias) / F.convNd(x, weight, bias, ..., groups=1) with a weight (and bias)
        read from the model: a layer whose input and output channels are axes 1 and 0 of that attribute.
        A weight computed in the graph (weight standardisation) keeps both."""
        x, weight, bias = (list(node.args) + [None] * 3)[:3]
        weight, bias = node.kwargs.get("weight", weight), node.kwargs.get("bias", bias)
        groups = node_arg(node, 6, "groups", 1)
        tracked, axis = self.flow.value.get(x), len(tensor_shape(node)) - 1 if name == "linear" else 1
        reason = (f"{name} ({node.name}) with a weight or bias computed in the graph" if weight not in self.origin
                  or bias is not None and bias not in self.origin and bias not in self.composite else
                  f"{name} ({node.name}) with groups={groups}" if groups != 1 else None)
        if tracked is not None and (reason or tracked[0] != axis - len(tensor_shape(node)) + len(tensor_shape(x))
                                    or not self.adopt(weight, node, 1, tracked[1])):
            self.barrier(node, reason or f"{name} ({node.name}) reading channels along another axis")
        ids = self.flow.fresh(tensor_shape(node)[axis])
        if reason or not self.adopt(weight, node, 0, ids) or bias is not None and not self.adopt(bias, node, 0, ids):
            self.flow.block(ids, reason or f"{name} ({node.name}) whose weight cannot be sliced")
        self.flow.value[node] = (axis, ids)


SIZE_ARITHMETIC = {"floordiv", "mul", "truediv", "add", "sub"}  # operator's, on a channel count and a constant


def _gather(key) -> tuple[int, fx.Node] | None:
    """(k, index) where `key` indexes one dim k with a tensor after k whole dims (`[index]`, `[:, index]`)."""
    parts = key if isinstance(key, tuple) else (key,)
    k = next((i for i, p in enumerate(parts) if isinstance(p, fx.Node)), None)
    if (k is None or k != len(parts) - 1 or tensor_shape(parts[k]) is None
            or any(p != slice(None) for p in parts[:k])):
        return None
    return k, parts[k]
