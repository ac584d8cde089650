"""The data of the channel analysis (channel_flow): elements and their classes, the members that
slice along them, the norms and literal sizes to rewrite, and the node helpers every rule reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

NORMS = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)  # exactly these types: subclasses may normalise other dims
NEUTRAL = {"size", "dim", "getattr", "numel"}  # read metadata only
# functions a tracer keeps whole (timm's Swin windows) that only move tokens, the last (channel) axis untouched
TOKENS_ONLY = {"window_partition", "window_reverse", "resample_abs_pos_embed", "resample_abs_pos_embed_nhwc",
               "window_tokens", "window_image", "windows_3d", "window_image_3d",  # plain_forwards' (Swin, Video Swin)
               "fit_to_patches", "patch_tokens", "patch_image",  # and fxprune.core.plain_timm's (MobileViT)
               "grid_reverse", "blockify", "deblockify", "resample_pos_embed_grid",  # MaxViT's, NesT's, Qwen3-ViT's
               "naflex_positions", "naflex_axis_positions",  # fxprune.core.plain_timm's (NaFlexViT)
               "global_pool_naflex"}  # timm's NaFlexViT pooling: over tokens, channel by channel
TOKENS_FIRST = {"window_reverse_nchw", "grid_reverse_nchw",  # the same, the channel axis 1 (MaxViT's NCHW blocks)
                "pad_to_multiple"}  # fxprune.core.plain_timm's (CPUBone)
# functions reading only a tensor's size, dtype and device (plain_forwards)
SHAPE_ONLY = {"shift_mask", "shift_mask_3d", "bias_index_3d", "fourier_grid", "relative_positions"}


def op_name(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


@dataclass
class Member:
    """A parameterised module that slices along a channel axis: role `out` (weight rows), `in`
    (weight columns), `dw` (depthwise conv: both), `bn` (per-channel affine and statistics) or
    `scale` (fxprune.nn.ChannelScaling)."""

    path: str  # a module's path; for `param`, the tensor attribute's qualified name
    role: str
    ids: torch.Tensor  # element id of each position (of its output channels for out/dw/bn, inputs for in)
    axis: int = 0  # `param`: the tensor's axis that holds the channels


@dataclass
class Norm:
    """A node normalising its input over `dims`, channel axis `axis` among them (RMS: no mean), each of
    `groups` equal parts of the channel axis on its own (GroupNorm)."""

    node: str
    ids: torch.Tensor
    axis: int
    dims: tuple[int, ...]
    rms: bool
    groups: int = 1


@dataclass
class Fixup:
    """A channel count in `node`'s size arguments, args[index] (or args[index][item]), to be written
    as a literal: the count of `ids` kept. With `bound` ("start" or "stop") the argument is a slice of
    the channel axis and that bound is written."""

    node: str
    index: int
    item: int | None
    ids: torch.Tensor | None  # None: the size is `value`, fixed (it sizes a dim that channels do not change)
    value: int = 0
    bound: str | None = None


@dataclass
class ChannelFlow:
    parent: list[int] = field(default_factory=list)
    blocked: dict[int, str] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)
    norms: list[Norm] = field(default_factory=list)
    fixups: list[Fixup] = field(default_factory=list)
    slabs: list[int] = field(default_factory=list)  # one element of each slab a split made (attention heads)
    head_dims: list[int] = field(default_factory=list)  # with heads="dim": one position of each head's dims
    scales: list[tuple[str, float]] = field(default_factory=list)  # sdpa nodes whose implicit scale is written out
    # a mean over the channel axis (a hand-written RMS norm's statistic): its node and channels. Once channels
    # go it is rescaled by kept / all, so it stays the sum over the channels divided by their first count
    means: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    # var, std, amax or amin over the channel axis (timm's SimpleNorm): after removal over the kept channels
    reduced: list[tuple[str, torch.Tensor, int]] = field(default_factory=list)  # node, its input's ids, axis
    spreads: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # convs along channels, their inputs' ids
    value: dict[fx.Node, tuple[int, torch.Tensor]] = field(default_factory=dict)

    def fresh(self, n: int) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return torch.arange(start, start + n)

    def find(self, e: int) -> int:
        root = e
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[e] != root:
            self.parent[e], e = root, self.parent[e]
        return root

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def align(self, parts: torch.Tensor) -> torch.Tensor:
        """Unite position j of every row of `parts` (equal parts of a channel axis: chunks, the groups
        of a grouped conv, equal splits), so every part loses the same positions; returns `parts`."""
        for part in parts[1:]:
            self.union(parts[0], part)
        return parts

    def block(self, ids: torch.Tensor, reason: str) -> None:
        for e in ids.unique().tolist():
            self.blocked.setdefault(e, reason)


REQUIRED = object()


def node_arg(node: fx.Node, index: int, name: str, default=REQUIRED):
    """A call's argument given at position `index` or as keyword `name`, else `default` (a KeyError
    where there is none)."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs[name] if default is REQUIRED else node.kwargs.get(name, default)


def tensor_shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def size_args(node: fx.Node, size: fx.Node) -> list[tuple[int, int, int | None]]:
    """(output dim, args index, item) of each size argument of a view/reshape/expand that is `size`."""
    sizes = node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        return [(d, 1, d) for d, s in enumerate(sizes[0]) if s is size]
    return [(d, 1 + d, None) for d, s in enumerate(sizes) if s is size]


def tensor_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
    return found
