"""Modules the tracer keeps whole, traced as the plain ops they compute, so their layers can be pruned.

As one node each such module hides its layers from the channel analysis (torchvision's ViTs and Swins
could not lose a head or an embedding channel). So they are traced as timm writes attention (the input
projection, a reshape into heads, attention, the output projection) and as their layers; what depends on
the input size (Swin's windows, shift and mask; ConvMlp's pooling) stays in functions kept whole that do
not mix channels. In eval mode this is the modules' own computation. Traced so, and otherwise one node:
- nn.MultiheadAttention: self-attention, no masks, no added key/value biases or zero attention, one
  input projection, no dropout when training;
- torchvision's ShiftedWindowAttention, V2 (cosine attention, its logit scale and position-bias MLP, the
  key third of the qkv bias zeroed by `zeroed_key_bias`) and 3d (Video Swin), no dropout when training;
- timm's vgg.ConvMlp, any call with one input;
- timm's nfnet.NormFreeBlock in eval (its in-place skipinit `mul_` written out of place).
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from fxprune.core.lowrank import type_name

_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


def plain_forward(m: nn.Module, args: tuple, kwargs: dict):
    """A forward for `m` that traces into plain ops, or None where `m` and its call are not a case
    computed exactly (above)."""
    from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2
    from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

    kind = type_name(m)
    if kind == "timm.models.vgg.ConvMlp" and len(args) == 1 and not kwargs:
        return lambda *_, **__: m.act2(m.fc2(m.drop(m.act1(m.fc1(pool_up_to(args[0], m.input_kernel_size))))))
    if kind == "timm.models.nfnet.NormFreeBlock" and len(args) == 1 and not kwargs and not m.training:
        return lambda *_, **__: _norm_free_block(m, args[0])
    if type(m) in (ShiftedWindowAttention, ShiftedWindowAttentionV2) and len(args) == 1 and not kwargs:
        if m.training and (m.attention_dropout > 0 or m.dropout > 0):
            return None
        return lambda *_, **__: _shifted_windows(m, args[0], type(m) is ShiftedWindowAttentionV2)
    if type(m) is ShiftedWindowAttention3d and len(args) == 1 and not kwargs:
        if m.training and (m.attention_dropout > 0 or m.dropout > 0):
            return None
        return lambda *_, **__: _shifted_windows_3d(m, args[0])
    if type(m) is not nn.MultiheadAttention or m.bias_k is not None or m.add_zero_attn or not m._qkv_same_embed_dim:
        return None
    if m.training and m.dropout > 0:
        return None
    try:
        call = _SIGNATURE.bind(m, *args, **kwargs).arguments
    except TypeError:
        return None
    if not (call["query"] is call["key"] is call["value"]) or any(
            call.get(k) is not None for k in ("key_padding_mask", "attn_mask")) or call.get("is_causal"):
        return None
    need_weights, average = call.get("need_weights", True), call.get("average_attn_weights", True)
    if not isinstance(need_weights, bool) or not isinstance(average, bool):
        return None
    return lambda *_, **__: _self_attention(m, call["query"], need_weights, average)


def _norm_free_block(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's NormFreeBlock in eval, its skipinit gain applied out of place (timm keeps the block whole
    because FX loses the node of its in-place `mul_`)."""
    out = m.act1(x) * m.beta
    shortcut = x if m.downsample is None else m.downsample(out)
    out = m.conv2(m.act2(m.conv1(out)))
    if m.conv2b is not None:
        out = m.conv2b(m.act2b(out))
    if m.attn is not None:
        out = m.attn_gain * m.attn(out)
    out = m.conv3(m.act3(out))
    if m.attn_last is not None:
        out = m.attn_gain * m.attn_last(out)
    out = m.drop_path(out)
    if m.skipinit_gain is not None:
        out = out * m.skipinit_gain
    return out * m.alpha + shortcut


def _self_attention(m: nn.MultiheadAttention, x: torch.Tensor, need_weights: bool, average: bool):
    if not m.batch_first:
        x = x.transpose(0, 1)
    batch, tokens = x.shape[0], x.shape[1]
    qkv = F.linear(x, m.in_proj_weight, m.in_proj_bias)
    q, k, v = qkv.reshape(batch, tokens, 3, m.num_heads, m.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    weights = None
    if need_weights:
        weights = torch.matmul(q * m.head_dim ** -0.5, k.transpose(-2, -1)).softmax(dim=-1)
        out = torch.matmul(weights, v)
        weights = weights.mean(dim=1) if average else weights
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    out = m.out_proj(out.transpose(1, 2).reshape(batch, tokens, m.embed_dim))
    return (out if m.batch_first else out.transpose(0, 1)), weights


def _shifted_windows(m: nn.Module, x: torch.Tensor, v2: bool) -> torch.Tensor:
    """torchvision's shifted_window_attention on x (B, H, W, C), written as timm's Swin writes it (V2:
    cosine attention scaled per head, the position bias from the module's MLP, no key bias)."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    area, heads, head_dim = m.window_size[0] * m.window_size[1], m.num_heads, m.qkv.in_features // m.num_heads
    windows = window_tokens(x, m.window_size, m.shift_size).view(-1, area, channels)
    if v2 and m.qkv.bias is not None:  # V2 has no key bias, whatever the parameter holds (F.linear on the
        qkv = F.linear(windows, m.qkv.weight, zeroed_key_bias(m.qkv.bias))  # weights: decompose-conv skips it)
    else:
        qkv = m.qkv(windows)
    q, k, v = qkv.reshape(-1, area, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    if v2:
        attn = torch.matmul(F.normalize(q, dim=-1), F.normalize(k, dim=-1).transpose(-2, -1))
        attn = attn * torch.clamp(m.logit_scale, max=math.log(100.0)).exp()
        table = m.cpb_mlp(m.relative_coords_table).view(-1, heads)
        bias = 16 * torch.sigmoid(table[m.relative_position_index].view(area, area, -1))
    else:
        attn = torch.matmul(q * head_dim ** -0.5, k.transpose(-2, -1))
        bias = m.relative_position_bias_table[m.relative_position_index].view(area, area, -1)
    attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
    mask = shift_mask(x, m.window_size, m.shift_size)
    attn = (attn.view(-1, mask.shape[0], heads, area, area) + mask.unsqueeze(1).unsqueeze(0)).view(-1, heads, area, area)
    out = torch.matmul(attn.softmax(dim=-1), v).transpose(1, 2).reshape(-1, area, heads * head_dim)
    out = m.proj(out).view(-1, m.window_size[0], m.window_size[1], channels)
    return window_image(out, height, width, m.window_size, m.shift_size)


def zeroed_key_bias(bias: torch.Tensor) -> torch.Tensor:
    """A qkv bias with its key third zeroed; positions kept, so it is sliced with the qkv rows (their
    thirds lose the same positions)."""
    third = bias.numel() // 3
    return torch.cat([bias[:third], torch.zeros_like(bias[third:2 * third]), bias[2 * third:]])


def _shifted_windows_3d(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's shifted_window_attention_3d on x (B, T, H, W, C), written as _shifted_windows; the
    window and shift, fitted to the input's size, stay inside the wrapped functions."""
    heads, head_dim = m.num_heads, m.qkv.in_features // m.num_heads
    windows = windows_3d(x, m.window_size, m.shift_size)  # (B * windows, tokens, C)
    qkv = m.qkv(windows)
    q, k, v = qkv.reshape(qkv.shape[0], qkv.shape[1], 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    attn = torch.matmul(q * head_dim ** -0.5, k.transpose(-2, -1))
    bias = m.relative_position_bias_table[bias_index_3d(m.relative_position_index, x, m.window_size)]
    attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
    mask = shift_mask_3d(x, m.window_size, m.shift_size)
    tokens = attn.shape[-1]
    attn = (attn.view(-1, mask.shape[0], heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)).view(
        -1, heads, tokens, tokens)
    out = torch.matmul(attn.softmax(dim=-1), v).transpose(1, 2).reshape(attn.shape[0], tokens, heads * head_dim)
    return window_image_3d(m.proj(out), x.shape[1], x.shape[2], x.shape[3], m.window_size, m.shift_size)


def _fitted_3d(size: list[int], window: list[int], shift: list[int]) -> tuple[list[int], list[int], list[int]]:
    """(window, shift, padded size) of Video Swin over a (T, H, W) input: a window no larger than the
    input (and then no shift there), the input padded to whole windows."""
    window = [min(w, s) for w, s in zip(window, size)]
    shift = [0 if s <= w0 else sh for s, w0, sh in zip(size, window, shift)]
    return window, shift, [s + (w - s % w) % w for s, w in zip(size, window)]


def windows_3d(x: torch.Tensor, window: list[int], shift: list[int]) -> torch.Tensor:
    """(B, T, H, W, C) padded, shifted and cut into windows (B * windows, tokens, C); channels untouched."""
    b, c = x.shape[0], x.shape[-1]
    window, shift, padded = _fitted_3d(list(x.shape[1:4]), window, shift)
    x = F.pad(x, (0, 0, 0, padded[2] - x.shape[3], 0, padded[1] - x.shape[2], 0, padded[0] - x.shape[1]))
    if sum(shift) > 0:
        x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    x = x.view(b, padded[0] // window[0], window[0], padded[1] // window[1], window[1], padded[2] // window[2],
               window[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window[0] * window[1] * window[2], c)


def window_image_3d(x: torch.Tensor, t: int, h: int, w: int, window: list[int], shift: list[int]) -> torch.Tensor:
    """windows_3d undone: (B * windows, tokens, C) joined, shifted back, cropped to (B, t, h, w, C)."""
    window, shift, padded = _fitted_3d([t, h, w], window, shift)
    c = x.shape[-1]
    x = x.view(-1, padded[0] // window[0], padded[1] // window[1], padded[2] // window[2], window[0], window[1],
               window[2], c)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(-1, padded[0], padded[1], padded[2], c)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=tuple(shift), dims=(1, 2, 3))
    return x[:, :t, :h, :w, :].contiguous()


def shift_mask_3d(x: torch.Tensor, window: list[int], shift: list[int]) -> torch.Tensor:
    """The additive mask (windows, tokens, tokens) of shifted 3-D windows over x (B, T, H, W, C): -100
    between tokens from different regions, else 0 (all 0 without a shift). Reads x's size, dtype, device."""
    window, shift, padded = _fitted_3d(list(x.shape[1:4]), window, shift)
    count = (padded[0] // window[0]) * (padded[1] // window[1]) * (padded[2] // window[2])
    tokens = window[0] * window[1] * window[2]
    if sum(shift) == 0:
        return x.new_zeros((count, tokens, tokens))
    mask = x.new_zeros(padded)
    region = 0
    cuts = [((0, -window[i]), (-window[i], -shift[i]), (-shift[i], None)) for i in range(3)]
    for d in cuts[0]:
        for h in cuts[1]:
            for w in cuts[2]:
                mask[d[0]:d[1], h[0]:h[1], w[0]:w[1]] = region
                region += 1
    mask = mask.view(padded[0] // window[0], window[0], padded[1] // window[1], window[1], padded[2] // window[2],
                     window[2])
    mask = mask.permute(0, 2, 4, 1, 3, 5).reshape(count, tokens)
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def bias_index_3d(index: torch.Tensor, x: torch.Tensor, window: list[int]) -> torch.Tensor:
    """The rows of the position-bias table each pair of tokens of a window fitted to x reads (tokens, tokens)."""
    window, _, _ = _fitted_3d(list(x.shape[1:4]), window, [0, 0, 0])
    tokens = window[0] * window[1] * window[2]
    return index[:tokens, :tokens]


def _padded_shift(height: int, width: int, window: list[int], shift: list[int]) -> tuple[int, int, list[int]]:
    """Height and width padded to whole windows, and the shift applied there (none along a side
    that one window covers)."""
    pad_h = height + (window[0] - height % window[0]) % window[0]
    pad_w = width + (window[1] - width % window[1]) % window[1]
    return pad_h, pad_w, [0 if window[0] >= pad_h else shift[0], 0 if window[1] >= pad_w else shift[1]]


def window_tokens(x: torch.Tensor, window: list[int], shift: list[int]) -> torch.Tensor:
    """(B, H, W, C) padded to whole windows, shifted and cut into windows (B * windows, Wh, Ww, C);
    channels untouched."""
    b, h, w, c = x.shape
    pad_h, pad_w, shift = _padded_shift(h, w, window, shift)
    x = F.pad(x, (0, 0, 0, pad_w - w, 0, pad_h - h))
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    x = x.view(b, pad_h // window[0], window[0], pad_w // window[1], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0], window[1], c)


def window_image(x: torch.Tensor, height: int, width: int, window: list[int], shift: list[int]) -> torch.Tensor:
    """window_tokens undone: windows (B * windows, Wh, Ww, C) joined, shifted back, cropped to
    (B, height, width, C); channels untouched."""
    pad_h, pad_w, shift = _padded_shift(height, width, window, shift)
    c = x.shape[-1]
    x = x.view(-1, pad_h // window[0], pad_w // window[1], window[0], window[1], c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, pad_h, pad_w, c)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :height, :width, :].contiguous()


def shift_mask(x: torch.Tensor, window: list[int], shift: list[int]) -> torch.Tensor:
    """The additive mask (windows, N, N) of shifted windows over x (B, H, W, C): -100 between tokens
    from different regions of the shifted image, else 0 (all 0 without a shift). Reads x's size,
    dtype and device only."""
    pad_h, pad_w, shift = _padded_shift(x.shape[1], x.shape[2], window, shift)
    count = (pad_h // window[0]) * (pad_w // window[1])
    if sum(shift) == 0:
        return x.new_zeros((count, window[0] * window[1], window[0] * window[1]))
    mask = x.new_zeros((pad_h, pad_w))
    region = 0
    for h in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for w in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            mask[h[0]:h[1], w[0]:w[1]] = region
            region += 1
    mask = mask.view(pad_h // window[0], window[0], pad_w // window[1], window[1])
    mask = mask.permute(0, 2, 1, 3).reshape(count, window[0] * window[1])
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def pool_up_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """x (B, C, H, W) average-pooled up to at least size x size where it is smaller (timm's ConvMlp), else x."""
    if x.shape[-2] < size or x.shape[-1] < size:
        return F.adaptive_avg_pool2d(x, (max(size, x.shape[-2]), max(size, x.shape[-1])))
    return x


# depend on the input's size: kept whole by the tracer (the channel analysis knows they do not mix channels)
for _name in ("window_tokens", "window_image", "shift_mask", "pool_up_to", "zeroed_key_bias", "windows_3d",
              "window_image_3d", "shift_mask_3d", "bias_index_3d"):
    torch.fx.wrap(_name)
