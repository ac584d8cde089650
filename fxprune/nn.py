"""fxprune.nn: the modules fxprune adds while a model trains (trainable scales); `fold` folds
them into the weights again."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasisScalingConv(nn.Module):
    """The coefficient half of a decomposed layer with a trainable scale per basis.

    y = layer(x * scale) with the frozen 1x1 weight U S (and the original bias): scaling the input
    channel i of the 1x1 layer is scaling column i of U S, i.e. U S diag(s). `scale` starts at 1,
    so inserting this module changes nothing. Works for 1x1 convs (any dimension, any groups) and
    Linear layers (`groups` = 1, channels last).
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.groups = getattr(layer, "groups", 1)
        self.pointwise_dims = layer.weight.dim() - 2  # 0: Linear, 1-3: Conv1d-3d
        self.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=False)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        self.scale = nn.Parameter(torch.ones(layer.weight.shape[1] * self.groups, dtype=layer.weight.dtype,
                                             device=layer.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pointwise_dims == 0:
            return F.linear(x * self.scale, self.weight, self.bias)
        s = self.scale.view(-1, *([1] * self.pointwise_dims))
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.pointwise_dims - 1]
        return conv(x * s, self.weight, self.bias, groups=self.groups)

    def extra_repr(self) -> str:
        return f"bases={self.scale.numel()}, out={self.weight.shape[0]}, groups={self.groups}"


class ChannelScaling(nn.Module):
    """A trainable scale per channel of the layer output before it: y = x * weight along `dim`.

    `weight` starts at 1, so inserting this module changes nothing. Trained with an L1 penalty
    (`fxprune.train_scaling(l1=...)`), it tells which channels the task needs: prune-channels
    `criterion=scale` removes the channels with the smallest |weight|, and `fold` multiplies the
    weights into the rows of the layer before it.
    """

    def __init__(self, channels: int, dim: int, like: torch.Tensor):
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(torch.ones(channels, dtype=like.dtype, device=like.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[self.dim] = -1
        return x * self.weight.view(shape)

    def extra_repr(self) -> str:
        return f"channels={self.weight.numel()}, dim={self.dim}"
