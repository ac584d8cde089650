"""timm blocks registered as leaves (their forwards branch on the input's size), traced as the plain ops
they compute, so their layers can be pruned. What depends on the input size (windows, patches, the
resizing to whole patches) stays in functions kept whole that move tokens only, channels last:
- tiny_vit.TinyVitBlock: window attention (one window where the image is one), depthwise conv, MLP;
- mobilevit.MobileVitBlock and MobileVitV2Block: local convs, patches through the transformer, back;
- xcit.PositionalEncodingFourier: Fourier features of the grid (kept whole), then its 1x1 conv;
- twins.LocallyGroupedAttn: attention within windows (padded where the image is not whole windows);
- lowformer.ConvAttention and cpubone.ConvAttention: attention over a strided projection, upsampled, cropped;
- convit.GPSA: attention gated per head with attention over the tokens' relative positions (made whole);
- efficientvit_msra.LocalWindowAttention and CascadedGroupAttention: windows (kept whole), then attention head by
  head, each head's input the previous head's output plus its own share of the channels;
- naflexvit.NaFlexEmbeds on images (not pre-patchified NaFlex batches): patches, linear projection, positions
  resized to the grid (kept whole), class and register tokens.
"""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from fxprune.core.lowrank import type_name
from fxprune.core.plain_forwards import window_image, window_tokens


def plain_timm_forward(m: nn.Module, args: tuple, kwargs: dict):
    """A forward for timm block `m` that traces into plain ops, or None where it is not one of the above."""
    block, count = {"timm.models.tiny_vit.TinyVitBlock": (_tiny_vit_block, 1),
                    "timm.models.mobilevit.MobileVitBlock": (_mobilevit_block, 1),
                    "timm.models.mobilevit.MobileVitV2Block": (_mobilevit_v2_block, 1),
                    "timm.models.xcit.PositionalEncodingFourier": (_fourier_positions, 3),
                    "timm.models.twins.LocallyGroupedAttn": (_locally_grouped_attn, 2),
                    "timm.models.lowformer.ConvAttention": (_conv_attention, 1),
                    "timm.models.cpubone.ConvAttention": (_conv_attention, 1),
                    "timm.models.convit.GPSA": (_gated_positional_attention, 1),
                    "timm.models.naflexvit.NaFlexEmbeds": (_naflex_embeds, 1),
                    "timm.models.efficientvit_msra.LocalWindowAttention": (_local_window_attention, 1),
                    "timm.models.efficientvit_msra.CascadedGroupAttention": (_cascaded_group_attention, 1),
                    }.get(type_name(m), (None, 0))
    # keyword arguments only as None (NaFlexEmbeds' patch_coord and patch_valid: a NaFlex batch stays a leaf)
    if (block is None or len(args) != count or any(v is not None for v in kwargs.values())
            or getattr(m, "coreml_exportable", False) or block is _naflex_embeds and not _standard_naflex(m)):
        return None
    return lambda *_, **__: block(m, *args)


def _tiny_vit_block(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    b, height, width, channels = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    window = [m.window_size, m.window_size]
    tokens = window_tokens(x, window, [0, 0]).view(-1, m.window_size * m.window_size, channels)
    attended = m.attn(tokens).view(-1, m.window_size, m.window_size, channels)
    x = x + m.drop_path1(window_image(attended, height, width, window, [0, 0]))
    x = m.local_conv(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
    x = x + m.drop_path2(m.mlp(x))
    return x.view(b, height, width, channels)


def _locally_grouped_attn(m: nn.Module, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    b, n, channels = x.shape[0], x.shape[1], x.shape[2]
    height, width, area, heads = size[0], size[1], m.ws * m.ws, m.num_heads
    windows = window_tokens(x.view(b, height, width, channels), [m.ws, m.ws], [0, 0]).view(-1, area, channels)
    q, k, v = m.qkv(windows).reshape(-1, area, 3, heads, channels // heads).permute(2, 0, 3, 1, 4).unbind(0)
    if m.fused_attn:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=m.attn_drop.p if m.training else 0.0)
    else:
        out = m.attn_drop((q * m.scale @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
    out = out.transpose(1, 2).reshape(-1, m.ws, m.ws, channels)
    out = window_image(out, height, width, [m.ws, m.ws], [0, 0]).reshape(b, n, channels)
    return m.proj_drop(m.proj(out))


def _conv_attention(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    height, width = x.shape[-2], x.shape[-1]
    if getattr(m, "small_kernels", False) and m.att_stride > 1:  # CPUBone: odd sizes padded for the projection
        x = pad_to_multiple(x, m.att_stride)
    out = m.pwise(m.conv_proj(x))
    b, h, w = out.shape[0], out.shape[2], out.shape[3]
    q, k, v = out.reshape(b, m.num_heads, m.num_keys * m.head_dim, h * w).permute(0, 1, 3, 2).chunk(3, dim=3)
    if m.fused_attn:
        values = F.scaled_dot_product_attention(q, k, v)
    else:
        values = ((q * m.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    out = m.o_proj(values.permute(0, 1, 3, 2).reshape(b, m.o_proj_inpdim, h, w))
    return m.upsampling(out)[..., :height, :width]


def pad_to_multiple(x: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, C, H, W) zero-padded at the bottom and right to multiples of `stride`; channels untouched."""
    pad_h, pad_w = (-x.shape[-2]) % stride, (-x.shape[-1]) % stride
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def _gated_positional_attention(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    b, n, channels = x.shape[0], x.shape[1], x.shape[2]
    heads = m.num_heads
    q, k = m.qk(x).reshape(b, n, 2, heads, channels // heads).permute(2, 0, 3, 1, 4).unbind(0)
    positions = m.pos_proj(relative_positions(x).expand(b, -1, -1, -1)).permute(0, 3, 1, 2).softmax(dim=-1)
    patches = ((q @ k.transpose(-2, -1)) * m.scale).softmax(dim=-1)
    gate = torch.sigmoid(m.gating_param.view(1, -1, 1, 1))
    attn = (1.0 - gate) * patches + gate * positions
    attn = m.attn_drop(attn / attn.sum(dim=-1).unsqueeze(-1))
    v = m.v(x).reshape(b, n, heads, channels // heads).permute(0, 2, 1, 3)
    return m.proj_drop(m.proj((attn @ v).transpose(1, 2).reshape(b, n, channels)))


def relative_positions(x: torch.Tensor) -> torch.Tensor:
    """ConViT's (1, N, N, 3) offsets (dx, dy, dx^2 + dy^2) between the N tokens of x (B, N, C), a square grid, in
    x's dtype and device. Reads x's size, dtype and device only."""
    side = int(x.shape[1] ** 0.5)
    offsets = torch.arange(side, dtype=torch.float32).view(1, -1) - torch.arange(side, dtype=torch.float32).view(-1, 1)
    dx = offsets.repeat(side, side)
    dy = offsets.repeat_interleave(side, dim=0).repeat_interleave(side, dim=1)
    return torch.stack([dx, dy, dx ** 2 + dy ** 2], dim=-1).unsqueeze(0).to(device=x.device, dtype=x.dtype)


def _mobilevit_block(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    shortcut = x
    x = m.conv_1x1(m.conv_kxk(x))
    height, width = x.shape[2], x.shape[3]
    tokens = patch_tokens(fit_to_patches(x.permute(0, 2, 3, 1), m.patch_size, False), m.patch_size)
    x = m.norm(m.transformer(tokens.flatten(0, 1)))
    x = patch_image(x, m.patch_size, height, width).permute(0, 3, 1, 2).contiguous()
    x = m.conv_proj(x)
    return x if m.conv_fusion is None else m.conv_fusion(torch.cat((shortcut, x), dim=1))


def _mobilevit_v2_block(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = fit_to_patches(x.permute(0, 2, 3, 1), m.patch_size, True).permute(0, 3, 1, 2).contiguous()
    x = m.conv_1x1(m.conv_kxk(x))
    height, width = x.shape[2], x.shape[3]  # whole patches now
    tokens = patch_tokens(x.permute(0, 2, 3, 1), m.patch_size).permute(0, 3, 1, 2)  # (B, C, P, N)
    x = m.norm(m.transformer(tokens)).permute(0, 2, 3, 1)
    return m.conv_proj(patch_image(x, m.patch_size, height, width).permute(0, 3, 1, 2).contiguous())


def _fourier_positions(m: nn.Module, b: int, height: int, width: int) -> torch.Tensor:
    weight = m.token_projection.weight  # only its device and dtype are read
    grid = fourier_grid(height, width, m.hidden_dim, m.temperature, m.scale, m.eps, weight.device, weight.dtype)
    return m.token_projection(grid).repeat(b, 1, 1, 1)


def fourier_grid(height: int, width: int, hidden: int, temperature: float, scale: float, eps: float,
                 device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """XCiT's Fourier features of a height x width grid, (1, 2 * hidden, H, W): y then x, each position
    normalised to (0, scale], divided by temperature ** (2 * (i // 2) / hidden), sin and cos interleaved."""
    rows = torch.arange(1, height + 1, device=device).to(torch.float32).view(1, height, 1).expand(1, height, width)
    cols = torch.arange(1, width + 1, device=device).to(torch.float32).view(1, 1, width).expand(1, height, width)
    rows = rows / (rows[:, -1:, :] + eps) * scale
    cols = cols / (cols[:, :, -1:] + eps) * scale
    steps = torch.arange(hidden, device=device).to(torch.float32)
    steps = temperature ** (2 * torch.div(steps, 2, rounding_mode="floor") / hidden)

    def features(t: torch.Tensor) -> torch.Tensor:
        t = t[..., None] / steps
        return torch.stack([t[..., 0::2].sin(), t[..., 1::2].cos()], dim=4).flatten(3)

    return torch.cat((features(rows), features(cols)), dim=3).permute(0, 3, 1, 2).to(dtype)


def _local_window_attention(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    height, width, window = x.shape[2], x.shape[3], [m.attn.resolution] * 2
    out = m.attn(window_tokens(x.permute(0, 2, 3, 1), window, [0, 0]).permute(0, 3, 1, 2))
    return window_image(out.permute(0, 2, 3, 1), height, width, window, [0, 0]).permute(0, 3, 1, 2)


def _cascaded_group_attention(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    b, height, width = x.shape[0], x.shape[2], x.shape[3]
    parts, bias, heads = x.chunk(len(m.qkvs), dim=1), m.attention_biases[:, m.attention_bias_idxs], []
    feat = parts[0]
    for i, (qkv, dws) in enumerate(zip(m.qkvs, m.dws)):
        feat = feat if i == 0 else feat + parts[i]
        q, k, v = qkv(feat).view(b, -1, height, width).split([m.key_dim, m.key_dim, m.val_dim], dim=1)
        q, k, v = dws(q).flatten(2), k.flatten(2), v.flatten(2)
        attn = ((q * m.scale).transpose(-2, -1) @ k + bias[i]).softmax(dim=-1)
        feat = (v @ attn.transpose(-2, -1)).view(b, m.val_dim, height, width)
        heads.append(feat)
    return m.proj(torch.cat(heads, 1))


def _standard_naflex(m: nn.Module) -> bool:
    """NaFlexEmbeds in the form _naflex_embeds writes out: a linear patch projection, learned or factorized
    positions (their resizing read from the module), no patch-size interpolation."""
    return (m.is_linear and not getattr(m, "enable_patch_interpolator", False)
            and m.pos_embed_type in ("learned", "factorized", "none")
            and not getattr(m, "pos_embed_use_grid_sample", False))


def _naflex_embeds(m: nn.Module, x: torch.Tensor):
    b, (ph, pw) = x.shape[0], m.patch_size
    rows, cols = ((x.shape[2] + ph - 1) // ph, (x.shape[3] + pw - 1) // pw) if m.dynamic_img_pad else (
        x.shape[2] // ph, x.shape[3] // pw)
    x = naflex_patches(x, (ph, pw), m.dynamic_img_pad, getattr(m, "channels_last", True)).flatten(2)
    x = m.norm(m.proj(x if m.norm_input is None else m.norm_input(x)))
    grid = (rows, cols, m.pos_embed_ar_preserving)
    if m.pos_embed_type == "learned":
        positions = naflex_positions(m.pos_embed, *grid, m.pos_embed_interp_mode, m.pos_embed_align_corners,
                                     m.pos_embed_antialias)
        x = x + positions.type_as(x)
    elif m.pos_embed_type == "factorized":
        y = naflex_axis_positions(m.pos_embed_y, rows, cols, m.pos_embed_ar_preserving).type_as(x).unsqueeze(2)
        x = x + (y + naflex_axis_positions(m.pos_embed_x, cols, rows, m.pos_embed_ar_preserving).type_as(x)
                 .unsqueeze(1)).flatten(1, 2)
    tokens = [t.expand(b, -1, -1) for t in (m.cls_token, m.reg_token) if t is not None]
    return m.pos_drop(torch.cat(tokens + [x], dim=1) if tokens else x), (rows, cols)


def naflex_patches(x: torch.Tensor, patch: tuple[int, int], pad: bool, channels_last: bool) -> torch.Tensor:
    """timm's batch_patchify: (B, C, H, W) as (B, N, P*P*C) patches, row-major over the grid."""
    from timm.models.naflexvit import batch_patchify

    return batch_patchify(x, patch, pad=pad, channels_last=channels_last)[0]


def naflex_positions(table: torch.Tensor, rows: int, cols: int, keep_ratio: bool, mode: str, align_corners: bool,
                     antialias: bool) -> torch.Tensor:
    """NaFlexEmbeds' learned (1, H, W, C) positions for a rows x cols grid, as (1, rows * cols, C): the table
    itself where it is that grid, else resized (to a square of the longer side where `keep_ratio`), cropped."""
    if (table.shape[1], table.shape[2]) == (rows, cols):
        return table.reshape(1, rows * cols, -1)
    size = (max(rows, cols),) * 2 if keep_ratio else (rows, cols)
    table = F.interpolate(table.permute(0, 3, 1, 2).float(), size=size, mode=mode, align_corners=align_corners,
                          antialias=antialias)
    return table[:, :, :rows, :cols].flatten(2).transpose(1, 2)


def naflex_axis_positions(table: torch.Tensor, length: int, other: int, keep_ratio: bool) -> torch.Tensor:
    """One axis of NaFlexEmbeds' factorized (1, L, C) positions for `length` patches (`other` along the other
    axis): resized (linear) to `length`, or the longer side where `keep_ratio`, where that is not L; cropped."""
    size = max(length, other) if keep_ratio else length
    if size != table.shape[1]:
        table = F.interpolate(table.permute(0, 2, 1).float(), size=size, mode="linear",
                              align_corners=False).permute(0, 2, 1)
    return table[:, :length]


def fit_to_patches(x: torch.Tensor, patch: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """(B, H, W, C) resized (bilinear) up to whole patches where it is not; channels untouched."""
    height, width = x.shape[1], x.shape[2]
    size = (math.ceil(height / patch[0]) * patch[0], math.ceil(width / patch[1]) * patch[1])
    if size == (height, width):
        return x
    x = F.interpolate(x.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=align_corners)
    return x.permute(0, 2, 3, 1)


def patch_tokens(x: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) of whole patches as (B, P, N, C): P the position in a patch, N the patch (timm's order)."""
    b, height, width, c = x.shape
    x = x.reshape(b, height // patch[0], patch[0], width // patch[1], patch[1], c).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, patch[0] * patch[1], -1, c)


def patch_image(x: torch.Tensor, patch: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """patch_tokens undone, from (B, P, N, C) or (B * P, N, C), into (B, H, W, C) for an image height x
    width: the patches joined, then resized back to height x width where fit_to_patches resized it."""
    c = x.shape[-1]
    rows = math.ceil(height / patch[0])
    x = x.reshape(-1, patch[0], patch[1], rows, x.shape[-2] // rows, c).permute(0, 3, 1, 4, 2, 5)
    x = x.reshape(x.shape[0], rows * patch[0], -1, c)
    if (x.shape[1], x.shape[2]) == (height, width):
        return x
    x = F.interpolate(x.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1)


# kept whole by the tracer (wrap patches the names in this module's globals, the imported ones too)
for _name in ("fit_to_patches", "patch_tokens", "patch_image", "window_tokens", "window_image", "fourier_grid",
              "pad_to_multiple", "relative_positions", "naflex_patches", "naflex_positions", "naflex_axis_positions"):
    torch.fx.wrap(_name)
