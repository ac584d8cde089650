"""Channel rules for attention: a reshape cutting the channel axis into (..., heads, head_dim) makes each
head one class, carried on the heads axis through unbind, softmax, batched matmul and
scaled_dot_product_attention (q, k, v and a per-head bias together). With heads="dim" it makes position j
of every head (and of q, k and v) one class instead, carried on the head_dim axis: q @ k^T contracts it
(q's and k's positions together, the scores carry none), attn @ v carries v's, and
scaled_dot_product_attention gets its scale written out (it would follow the smaller head_dim).
torch.einsum with an explicit output follows the same rules by letter (torchvision's MaxViT)."""

from __future__ import annotations

import torch
import torch.fx as fx

from fxprune.analysis.flow_types import node_arg, tensor_shape


class AttentionRules:
    """Mixed into channel_flow._Propagator (its state: flow, origin, used, parts, ...)."""

    def split(self, node: fx.Node, start: int, dims: tuple[int, ...], ids: torch.Tensor) -> None:
        """The channel axis cut into dims (..., heads, head_dim): the channels of each slab along the
        second-to-last of them (an attention head: its q, k and v parts; a channel group before a
        shuffle) go together, and that dim carries the channels on, one id per slab."""
        sized = [i for i, d in enumerate(dims) if d > 1]  # (heads, 1, head_dim): a token axis put in between
        if self.heads == "dim":
            return self.split_dims(node, start, dims, ids, sized[-1] if sized else len(dims) - 1)
        axis = sized[-2] if len(sized) >= 2 else len(dims) - 2
        slabs = ids.view(dims).movedim(axis, 0).reshape(dims[axis], -1)
        for slab in slabs:
            self.flow.union(slab[:1].expand(len(slab)), slab)
        heads = slabs[:, 0].clone()
        self.flow.slabs += heads.tolist()
        self.flow.value[node] = (start + axis, heads)
        self.literal_size(node, start + axis, heads)

    def split_dims(self, node: fx.Node, start: int, dims: tuple[int, ...], ids: torch.Tensor, axis: int) -> None:
        """heads="dim": position j along dims[axis] (head_dim) of every slab goes together; that dim
        carries the channels on."""
        rows = self.flow.align(ids.view(dims).movedim(axis, -1).reshape(-1, dims[axis]))
        self.flow.head_dims += rows[0].tolist()
        self.flow.value[node] = (start + axis, rows[0].clone())
        self.literal_size(node, start + axis, rows[0])

    def unbind(self, node: fx.Node) -> None:
        """x.unbind(dim) along another axis: every part keeps the channels (q, k, v of fused attention)."""
        src = node.args[0]
        axis, ids = self.flow.value[src]
        dim = node_arg(node, 1, "dim", 0) % len(tensor_shape(src))
        if dim == axis:
            return self.barrier(node, f"unbind over the channel axis ({node.name})")
        self.parts[node] = [(axis - (dim < axis), ids)] * tensor_shape(src)[dim]
        self.flow.value[node] = (axis, ids)

    def softmax(self, node: fx.Node, name: str) -> None:
        src = node.args[0]
        dim = node_arg(node, 1, "dim", None)
        if dim is None or dim % len(tensor_shape(src)) == self.flow.value[src][0]:
            return self.barrier(node, f"{name} over the channel axis ({node.name})")
        self.keep(node, src)

    def batched(self, node: fx.Node, operands: list, name: str) -> bool:
        """Operands of a batched matrix product or attention: channels on the same batch axis (heads) go
        together; an untracked operand broadcasts there or is an attribute sliced with them."""
        out = tensor_shape(node)
        known, inside = [], []  # channels inside the matrices (multi-query attention's one key and value head)
        for a in operands:  # are kept; the heads of the other operands go on
            if a in self.flow.value:
                on_matrix = len(out) - len(tensor_shape(a)) + self.flow.value[a][0] >= len(out) - 2
                (inside if on_matrix else known).append((a, self.flow.value[a]))
        if not known:  # nothing carries heads: the matrices' channels are kept
            for _, (_, ids) in inside:
                self.flow.block(ids, f"{name} ({node.name}) with channels off its batch axes")
            return False
        heads = len(out) - len(tensor_shape(known[0][0])) + known[0][1][0]
        for a, (_, ids) in inside:  # such an operand must broadcast over the others' heads (one head)
            pos = heads - len(out) + len(tensor_shape(a))
            if pos >= 0 and tensor_shape(a)[pos] != 1:
                self.barrier(node, f"{name} ({node.name}) with channels off its batch axes")
                return False
            self.flow.block(ids, f"{name} ({node.name}) with channels off its batch axes")
        axes = {len(out) - len(tensor_shape(a)) + v[0] for a, v in known}
        if len(axes) != 1:
            self.barrier(node, f"{name} ({node.name}) with channels on different batch axes")
            return False
        (first, (axis, ids)), rest = known[0], known[1:]
        axis += len(out) - len(tensor_shape(first))
        for _, (_, other) in rest:
            if len(other) != len(ids):
                self.barrier(node, f"{name} ({node.name}) with channels that do not line up")
                return False
            self.flow.union(ids, other)
        for a in operands:
            shape = tensor_shape(a)
            if a in self.flow.value or shape is None:
                continue
            pos = axis - len(out) + len(shape)
            if pos >= 0 and shape[pos] != 1 and not self.adopt(a, node, pos, ids):
                self.barrier(node, f"{name} ({node.name}) with a per-channel tensor ({a.name}) that is not "
                                   "a layer output")
                return False
        self.flow.value[node] = (axis, known[-1][1][1])
        return True

    def matmul(self, node: fx.Node) -> None:
        """a @ b with channels on a batch axis of both (attention heads): they go together. x @ W with W a
        matrix read from the model (SwiftFormer's `query @ w_g`): a linear layer, its input channels W's
        rows and its output channels W's columns."""
        x, w = node.args[:2]
        tracked = self.flow.value.get(x)
        if (tracked is None or w in self.flow.value or w not in self.origin or len(tensor_shape(w)) != 2
                or tracked[0] != len(tensor_shape(x)) - 1):
            if self.on_matrices(node, x, w):
                return
            return self.batched(node, [x, w], "matmul")
        if not self.adopt(w, node, 0, tracked[1]):
            self.barrier(node, f"matmul ({node.name}) whose weight cannot be sliced")
        ids = self.flow.fresh(tensor_shape(w)[1])
        if not self.adopt(w, node, 1, ids):
            self.flow.block(ids, f"matmul ({node.name}) whose weight cannot be sliced")
        self.flow.value[node] = (len(tensor_shape(node)) - 1, ids)

    def _one_broadcast(self, node: fx.Node, tracked, dims: int):
        """`tracked`, or None where it is one channel on a batch axis (a global-context attention map:
        conv(x) with one output): it broadcasts over the product and is kept."""
        if tracked is not None and tracked[0] < dims - 2 and len(tracked[1]) == 1:
            self.flow.block(tracked[1], f"matmul ({node.name}) broadcasts this one channel over many")
            return None
        return tracked

    def attention(self, node: fx.Node) -> None:
        """F.scaled_dot_product_attention(q, k, v, attn_mask): heads of q, k, v (and of a per-head
        mask or bias) go together; the output carries v's."""
        names = ("query", "key", "value", "attn_mask")
        given = dict(zip(names, node.args), **{k: v for k, v in node.kwargs.items() if k in names})
        operands = [given[k] for k in names if isinstance(given.get(k), fx.Node)]
        if self.heads == "dim" and self.attention_dims(node, given):
            return
        self.batched(node, operands, "scaled_dot_product_attention")

    def on_matrices(self, node: fx.Node, a: fx.Node, b: fx.Node) -> bool:
        """a @ b with channels on the matrix axes only (heads="dim": q @ k^T, attn @ v; EfficientViM's x @ (A B)^T,
        then h @ C): channels on both contracted axes go together; on one of them alone they are kept. The product
        carries a's rows, or b's columns where a's rows carry none (a tensor carries one channel axis: b's are
        then kept). False where an operand has channels on a batch axis (batched decides)."""
        ta, tb = self.flow.value.get(a), self.flow.value.get(b)
        na, nb, n = len(tensor_shape(a) or ()), len(tensor_shape(b) or ()), len(tensor_shape(node) or ())
        if min(na, nb) < 2:
            return False
        ta, tb = self._one_broadcast(node, ta, na), self._one_broadcast(node, tb, nb)
        if ta is not None and ta[0] < na - 2 or tb is not None and tb[0] < nb - 2:
            return False
        ka, kb = (ta if ta is not None and ta[0] == na - 1 else None), (tb if tb is not None and tb[0] == nb - 2 else None)
        rows, cols = (ta if ta is not None and ta[0] == na - 2 else None), (tb if tb is not None and tb[0] == nb - 1 else None)
        if ka is not None and kb is not None and len(ka[1]) == len(kb[1]):
            self.flow.union(ka[1], kb[1])
        else:
            for k in (ka, kb):
                if k is not None:
                    self.flow.block(k[1], f"matmul ({node.name}) contracting channels with positions that carry none")
        if rows is not None and cols is not None:
            self.flow.block(cols[1], f"matmul ({node.name}) with channels on a's rows and b's columns")
        if rows is not None or cols is not None:
            self.flow.value[node] = (n - 2, rows[1]) if rows is not None else (n - 1, cols[1])
        return True

    def attention_dims(self, node: fx.Node, given: dict) -> bool:
        """scaled_dot_product_attention with q, k and v's channels on their last axis (heads="dim"): q's
        and k's go together, the output carries v's, and an implicit scale (1 / sqrt(head_dim)) is
        recorded to be written out. False where they are elsewhere (batched decides)."""
        q, k, v = (given.get(key) for key in ("query", "key", "value"))
        tracked = [self.flow.value.get(t) for t in (q, k, v)]
        mask = given.get("attn_mask")
        if (any(t is None or t[0] != len(tensor_shape(x)) - 1 for t, x in zip(tracked, (q, k, v)))
                or len(tracked[0][1]) != len(tracked[1][1]) or mask in self.flow.value):
            return False
        self.flow.union(tracked[0][1], tracked[1][1])
        if node_arg(node, 6, "scale", None) is None:
            self.flow.scales.append((node.name, tensor_shape(q)[-1] ** -0.5))
        self.flow.value[node] = (len(tensor_shape(node)) - 1, tracked[2][1])
        return True

    def einsum(self, node: fx.Node) -> None:
        """torch.einsum("bhid,bhjd->bhij", ...) with an explicit output: operands whose channels sit on
        the same letter go together; a letter kept in the output carries them there (heads on a batch
        letter; v's head_dim), a contracted one (q's and k's head_dim) leaves the product without them
        (heads="dim"; with whole heads such channels are kept). A barrier for any other form."""
        equation, operands = node.args[0], list(node.args[1:])
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = list(operands[0])
        spec = equation.replace(" ", "") if isinstance(equation, str) else ""
        inputs, _, output = spec.partition("->")
        inputs = inputs.split(",")
        if ("->" not in spec or "." in spec or len(inputs) != len(operands)
                or any(tensor_shape(a) is None or len(i) != len(tensor_shape(a)) for i, a in zip(inputs, operands))):
            return self.barrier(node, f"einsum ({node.name}) in a form not understood")
        by_letter: dict[str, list[torch.Tensor]] = {}
        for letters, a in zip(inputs, operands):
            if a in self.flow.value:
                axis, ids = self.flow.value[a]
                by_letter.setdefault(letters[axis], []).append(ids)
        carried = [c for c in by_letter if c in output]
        for c, idss in by_letter.items():
            sizes = [tensor_shape(a)[i.index(c)] for i, a in zip(inputs, operands) if c in i and a not in self.flow.value]
            if any(len(ids) != len(idss[0]) for ids in idss) or any(size != 1 for size in sizes) or len(carried) > 1:
                return self.barrier(node, f"einsum ({node.name}) with channels that do not line up")
            for ids in idss[1:]:
                self.flow.union(idss[0], ids)
            if c not in output and self.heads != "dim":
                self.flow.block(idss[0], f"einsum ({node.name}) contracting channels")
        if carried:
            self.flow.value[node] = (output.index(carried[0]), by_letter[carried[0]][0])

