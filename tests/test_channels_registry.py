"""Ops that blocked whole timm families (issue 35), each understood by its rule: a BatchNorm over flattened
tokens restored with reshape_as (LeViT), a per-head bias table gathered with [:, index] (LeViT), rotary
embeddings stacking q's halves and type_as (EVA-02), a p-norm over space and addcmul (ConvNeXt-V2's Global
Response Norm); hand-made graphs, then the real models: zeroed channels removed exactly."""

import pytest
import torch
from torch import nn

import fxprune
from fxprune.analysis.counting import total_params
from fxprune.runners.models import create

from .conftest import randomize_bn
from .test_channels import check_zeroed_channels_are_removed_losslessly, groups_of

TOKENS = torch.randn(2, 9, 8)


class LinearNorm(nn.Module):
    """LeViT's Linear + BatchNorm over the tokens flattened into the batch, then back to (B, N, C)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.linear, self.bn = nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout)

    def forward(self, x):
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class BiasTableAttention(nn.Module):
    """LeViT's attention: q, k, v from LinearNorms, a per-head bias table gathered as table[:, index]."""

    def __init__(self, heads: int = 2, dim: int = 4):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.qkv, self.proj = LinearNorm(8, 3 * heads * dim), LinearNorm(heads * dim, 8)
        self.table = nn.Parameter(torch.randn(heads, 9))
        self.register_buffer("index", torch.randint(0, 9, (9, 9)), persistent=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, self.heads, -1).split([self.dim] * 3, dim=3)
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
        attn = (q @ k.transpose(-2, -1) * self.dim ** -0.5 + self.table[:, self.index]).softmax(-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.dim)
        return self.head((x + self.proj(x)).mean(1))


class Rotary(nn.Module):
    """EVA-02's rotary step on q and k: pairs of head_dim positions rotated, stacked back, type_as v."""

    def __init__(self, heads: int = 2, dim: int = 4):
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(8, 3 * heads * dim), nn.Linear(heads * dim, 3)
        self.register_buffer("sin", torch.randn(9, dim), persistent=False)
        self.register_buffer("cos", torch.randn(9, dim), persistent=False)

    def rotate(self, x):
        turned = torch.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)
        return x * self.cos + turned * self.sin

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.rotate(q).type_as(v), self.rotate(k).type_as(v)
        x = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(x.transpose(1, 2).reshape(b, n, -1).mean(1))


class GlobalResponse(nn.Module):
    """ConvNeXt-V2's MLP, channels last: fc1, Global Response Norm (a p-norm over space, its mean over the
    channels, addcmul with per-channel weight and bias), fc2."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 12), nn.Linear(12, 4)
        self.weight, self.bias = nn.Parameter(torch.randn(12)), nn.Parameter(torch.randn(12))

    def forward(self, x):
        x = self.fc1(x.permute(0, 2, 3, 1))
        g = x.norm(p=2, dim=(1, 2), keepdim=True)
        response = x * g / (g.mean(-1, keepdim=True) + 1e-6)
        x = x + torch.addcmul(self.bias.view(1, 1, 1, -1), self.weight.view(1, 1, 1, -1), response)
        return self.fc2(x).mean((1, 2))


def test_a_batchnorm_over_flattened_tokens_restored_with_reshape_as_is_channel_wise():
    model = nn.Sequential(LinearNorm(8, 6), nn.GELU(), LinearNorm(6, 3))
    assert groups_of(model, TOKENS) == {
        frozenset({("0.linear", "out"), ("0.bn", "bn"), ("2.linear", "in")}): (6, None),
        frozenset({("2.linear", "out"), ("2.bn", "bn")}): (3, "reaches the model output"),
    }
    check_zeroed_channels_are_removed_losslessly(randomize_bn(model), TOKENS)


def test_reshape_as_onto_a_tensor_without_the_same_channels_is_a_named_barrier():
    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(8, 6), nn.Linear(8, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.head(self.a(x).flatten(0, 1).reshape_as(self.b(x)))

    blocked = {g.blocked for g in fxprune.analysis.channels.analyse(fxprune.trace(Other()), (TOKENS,)).groups}
    assert "reshape_as (reshape_as) onto a tensor without the same channels" in blocked


@pytest.mark.parametrize("model", [BiasTableAttention, Rotary, GlobalResponse])
def test_bias_tables_rotary_embeddings_and_global_response_norm_prune_losslessly(model):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5) if model is GlobalResponse else TOKENS
    check_zeroed_channels_are_removed_losslessly(randomize_bn(model()), x)
    graph = fxprune.analysis.channels.analyse(fxprune.trace(model().eval()), (x,))
    assert [g.blocked for g in graph.groups if g.blocked] == ["reaches the model output"]


@pytest.mark.parametrize("name, size, kept", [("timm:levit_128s", 224, 0.497), ("timm:convnextv2_atto", 64, 0.515),
                                               ("timm:eva02_tiny_patch14_224", 224, 0.698)])
def test_the_families_these_ops_blocked_prune_deep_and_exactly(name, size, kept):
    """At ratio 0.3 (issue 35: <= 0.6 of params kept). eva02_tiny as registered has no classifier: its
    embedding width is its output and stays; the heads and MLPs go."""
    torch.manual_seed(0)
    model, x = create(name).eval(), torch.randn(1, 3, size, size)
    small = fxprune.prune(model, x, "prune-channels{ratio=0.3},fold")
    assert total_params(small) / total_params(model) == pytest.approx(kept, abs=5e-4)
    check_zeroed_channels_are_removed_losslessly(model, x)
