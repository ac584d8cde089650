"""nn.MultiheadAttention traced as the plain ops it computes, so its heads and width can be pruned.

torch.fx keeps every torch.nn module whole, and nn.MultiheadAttention's forward (control flow over
fast paths, masks and flags) does not trace. As one node it hides its projections from the channel
analysis: torchvision's ViTs could not lose a head or an embedding channel. Self-attention without
masks (torchvision's ViT, most hand-written encoders) is traced instead as timm writes attention:
the input projection as F.linear on `in_proj_weight`, a reshape into heads, scaled dot-product
attention (softmax of matmuls where the weights are asked for) and `out_proj` called as a module.
In eval mode this is nn.MultiheadAttention's own computation. Any other call stays one node.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


def plain_forward(m: nn.Module, args: tuple, kwargs: dict):
    """A forward for `m` that traces into plain ops, or None where `m` and its call are not the
    case this computes exactly: self-attention (one tensor as query, key and value), no masks, no
    added key/value biases or zero attention, one input projection, no dropout when training."""
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
