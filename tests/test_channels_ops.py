"""prune-channels through ops met in the zoos: a slice of the channel axis (GhostNet's `cat(...)[:, :out_chs]`),
padding modules, timm's Conv2dSame, nn.Upsample, F.normalize, x @ W, a bias concatenated from attributes, a mean
or sum over channels (hand-written RMS norm), unsqueeze, multi-query attention and InstanceNorm; exact groups,
rewritten slice bounds and lossless removal of zeroed channels."""

import operator
import warnings

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import nn

import fxprune

from fxprune.analysis.channels import analyse

from .test_channels import check_zeroed_channels_are_removed_losslessly, groups_of

X = torch.randn(2, 3, 8, 8)


class Ghost(nn.Module):
    """A ghost module of 5 channels (3 primary, their 3 depthwise "cheap" copies, sliced to 5), then
    padding, a "same"-padded conv, upsampling and an L2 normalisation over channels."""

    def __init__(self):
        super().__init__()
        self.primary = nn.Conv2d(3, 3, 1)
        self.cheap = nn.Conv2d(3, 3, 3, padding=1, groups=3)
        self.pad = nn.ZeroPad2d(1)
        self.same = Conv2dSame(5, 6, 3, stride=2)
        self.up = nn.Upsample(scale_factor=2)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        a = self.primary(x)
        x = torch.cat([a, self.cheap(a)], 1)[:, :5]
        x = self.same(self.pad(x))
        x = F.normalize(self.up(x), dim=1)
        return self.head(x.mean((2, 3)))


def test_a_slice_of_the_channel_axis_keeps_the_channels_in_its_range():
    assert groups_of(Ghost()) == {
        frozenset({("primary", "out"), ("cheap", "dw"), ("same", "in")}): (3, None),
        frozenset({("same", "out"), ("head", "in")}): (6, None),
        frozenset({("head", "out")}): (4, "reaches the model output"),
    }


def test_the_slice_bound_is_rewritten_to_the_channels_kept_before_it():
    small = fxprune.prune(Ghost(), X, "prune-channels{ratio=0.5}")
    # 1 of 3 primary channels kept: the concat holds it twice, both inside [:5]
    assert [n.args[1][1] for n in small.graph.nodes if n.op == "call_function" and "getitem" in n.name] == [slice(None, 2)]
    assert small.same.weight.shape == (3, 2, 3, 3) and type(small.same) is Conv2dSame
    assert small(X).shape == (2, 4)


def test_zeroed_channels_through_slice_pad_same_conv_upsample_normalize_are_removed_losslessly():
    check_zeroed_channels_are_removed_losslessly(Ghost(), X)


class ChannelsLast(nn.Module):
    def __init__(self, step=None):
        super().__init__()
        self.fc, self.pad, self.head = nn.Linear(3, 6), nn.ConstantPad1d(1, 0.0), nn.Linear(8, 2)
        self.step = step

    def forward(self, x):
        y = self.fc(x.flatten(2).transpose(1, 2))
        if self.step:
            return self.head(torch.cat([y[:, :, :: self.step]] * 4, -1)[:, :, :8])
        return self.head(self.pad(y))


def test_a_pad_of_the_channel_axis_and_a_strided_slice_are_barriers_with_their_names():
    assert groups_of(ChannelsLast())[frozenset({("fc", "out")})] == (
        6, "module pad (ConstantPad1d pads the channel axis)")
    assert groups_of(ChannelsLast(step=2))[frozenset({("fc", "out")})] == (
        6, "indexing the channel axis (getitem)")


class AdditiveAttention(nn.Module):
    """SwiftFormer's attention: normalised queries times a learned (C, 1) matrix read directly."""

    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(3, 6), nn.Linear(6, 2)
        self.w_g = nn.Parameter(torch.randn(6, 1))

    def forward(self, x):
        q = F.normalize(self.fc(x.flatten(2).transpose(1, 2)), dim=-1)
        return self.head((q @ self.w_g * q).sum(1))


def test_a_matrix_read_directly_is_a_linear_layer_sliced_with_its_input_channels():
    assert groups_of(AdditiveAttention()) == {
        frozenset({("fc", "out"), ("w_g", "param"), ("head", "in")}): (6, None),
        frozenset({("w_g", "param")}): (1, "mul (mul) broadcasts this one channel over many"),
        frozenset({("head", "out")}): (2, "reaches the model output"),
    }
    check_zeroed_channels_are_removed_losslessly(AdditiveAttention(), X)
    assert fxprune.prune(AdditiveAttention(), X, "prune-channels{ratio=0.5}").w_g.shape == (3, 1)


class HandWrittenRms(nn.Module):
    """timm's rms_norm2d written out (mean of squares over channels), a channel sum as a gate, and
    unsqueeze moving the channel axis before a Linear."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 6, 1), nn.Linear(6, 2)
        self.weight = nn.Parameter(torch.rand(6) + 0.5)

    def forward(self, x):
        y = self.conv(x)
        y = y * torch.rsqrt(y.pow(2).mean(dim=1, keepdim=True) + 1e-5) * self.weight.reshape(1, -1, 1, 1)
        y = y * torch.sigmoid(y.sum(1, keepdim=True))
        return self.head(y.mean((2, 3)).unsqueeze(1))


def test_a_mean_over_channels_is_rescaled_to_stay_their_sum_over_the_first_count():
    assert groups_of(HandWrittenRms())[frozenset({("conv", "out"), ("weight", "param"), ("head", "in")})] == (6, None)
    check_zeroed_channels_are_removed_losslessly(HandWrittenRms(), X)  # exact against zeroing: no masked norm
    small = fxprune.prune(HandWrittenRms(), X, "prune-channels{ratio=0.5}")
    assert [n.args[1] for n in small.graph.nodes if n.target is operator.mul and n.args[0].name == "mean"] == [0.5]


class MultiQuery(nn.Module):
    """Multi-query attention: 4 query heads, one key and value head shared by all."""

    def __init__(self):
        super().__init__()
        self.embed, self.q, self.k, self.v = nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 2), nn.Linear(8, 2)
        self.proj, self.head = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        x = self.embed(x.flatten(2).transpose(1, 2))
        b, n = x.shape[0], x.shape[1]
        q = self.q(x).reshape(b, n, 4, 2).transpose(1, 2)
        k, v = self.k(x).unsqueeze(1), self.v(x).unsqueeze(1)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, 8)
        return self.head(self.proj(out).mean(1))


def test_multi_query_attention_prunes_query_heads_and_keeps_the_shared_key_and_value():
    groups = groups_of(MultiQuery())
    assert groups[frozenset({("q", "out"), ("proj", "in")})] == (4, None)
    reason = "scaled_dot_product_attention (scaled_dot_product_attention) with channels off its batch axes"
    assert groups[frozenset({("k", "out")})] == groups[frozenset({("v", "out")})] == (2, reason)
    check_zeroed_channels_are_removed_losslessly(MultiQuery(), X)


class CatBias(nn.Module):
    """BEiT's qkv bias: q and v biases with a zero k bias (a buffer) concatenated in the graph, given to
    F.linear with the weight of a Linear read directly."""

    def __init__(self):
        super().__init__()
        self.embed, self.qkv, self.head = nn.Linear(3, 6), nn.Linear(6, 12, bias=False), nn.Linear(12, 2)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4))
        self.register_buffer("k_bias", torch.zeros(4))

    def forward(self, x):
        x = self.embed(x.flatten(2).transpose(1, 2))
        bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        return self.head(F.linear(x, self.qkv.weight, bias).mean(1))


def test_a_bias_concatenated_from_attributes_is_sliced_part_by_part():
    groups = groups_of(CatBias())  # each part's 4 outputs are one group (they touch different biases)
    for part in ("q_bias", "k_bias", "v_bias"):
        assert groups[frozenset({("qkv.weight", "param"), (part, "param"), ("head", "in")})] == (4, None)
    check_zeroed_channels_are_removed_losslessly(CatBias(), X)
    small = fxprune.prune(CatBias(), X, "prune-channels{ratio=0.5}")
    assert small.qkv.weight.shape == (6, 3) and small.q_bias.shape == small.k_bias.shape == small.v_bias.shape == (2,)


class Instance(nn.Module):
    """InstanceNorm (RAFT's encoders): each channel normalised on its own."""

    def __init__(self, affine):
        super().__init__()
        self.a, self.n, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.InstanceNorm2d(6, affine=affine), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.b(torch.relu(self.n(self.a(x))))


@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_keeps_its_channels_and_is_resized_with_them(affine):
    assert groups_of(Instance(affine))[frozenset({("a", "out"), ("n", "bn"), ("b", "in")})] == (6, None)
    check_zeroed_channels_are_removed_losslessly(Instance(affine), X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # InstanceNorm warns when num_features is not the input's
        small = fxprune.prune(Instance(affine), X, "prune-channels{ratio=0.5}")
        assert small(X).shape == (2, 2, 8, 8)
    assert small.n.num_features == 3 and (small.n.weight is None) is (not affine)


class ClassAttention(nn.Module):
    """VOLO's and CaiT's class attention: the class token's query reshaped to (B, heads, 1, head_dim)."""

    def __init__(self):
        super().__init__()
        self.embed, self.kv, self.q = nn.Linear(3, 8), nn.Linear(8, 16), nn.Linear(8, 8)
        self.proj, self.head = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        x = self.embed(x.flatten(2).transpose(1, 2))
        b, n = x.shape[0], x.shape[1]
        k, v = self.kv(x).reshape(b, n, 2, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        q = self.q(x[:, :1, :]).reshape(b, 2, 1, 4) * 0.5
        out = ((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(b, 1, 8)
        return self.head(self.proj(out)[:, 0])


def test_a_query_reshaped_around_a_token_axis_keeps_its_heads_with_the_keys():
    """(B, 1, heads * head_dim) -> (B, heads, 1, head_dim): the heads are the dim before the token axis,
    not the token axis (a one-head operand is only taken as broadcast where it has one head)."""
    graph = analyse(fxprune.trace(ClassAttention()), (X,))
    groups = {frozenset(g.members): (g.size, g.kind, g.blocked) for g in graph.groups}
    assert groups[frozenset({("kv", "out"), ("q", "out"), ("proj", "in")})] == (2, "heads", None)
    check_zeroed_channels_are_removed_losslessly(ClassAttention(), X)


class FilterResponse(nn.Module):
    """timm's FilterResponseNormTlu2d (per-channel RMS over H, W; `.to(x.dtype)` of its statistic and
    affine; a learned threshold through torch.maximum) between two convs."""

    def __init__(self):
        super().__init__()
        from timm.layers import FilterResponseNormTlu2d

        self.a, self.frn, self.b = nn.Conv2d(3, 6, 3), FilterResponseNormTlu2d(6), nn.Conv2d(6, 4, 1)
        for p in (self.frn.weight, self.frn.bias, self.frn.tau):
            p.data.normal_()

    def forward(self, x):
        return self.b(self.frn(self.a(x))).mean((2, 3))


def test_filter_response_norm_channels_are_one_group_and_removed_losslessly():
    assert groups_of(FilterResponse()) == {
        frozenset({("a", "out"), ("frn.weight", "param"), ("frn.bias", "param"), ("frn.tau", "param"),
                   ("b", "in")}): (6, None),
        frozenset({("b", "out")}): (4, "reaches the model output"),
    }
    check_zeroed_channels_are_removed_losslessly(FilterResponse(), X)


class Upsampling(nn.Module):
    """LowFormer's attention output: a dense transposed conv (weight (in, out, k, k)), then a depthwise one."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(6, 5, 4, stride=2, padding=1)
        self.dw = nn.ConvTranspose2d(5, 5, 3, padding=1, groups=5)
        self.head = nn.Conv2d(5, 2, 1)

    def forward(self, x):
        return self.head(self.dw(self.up(self.a(x)).relu()))


def test_transposed_convs_read_and_start_channels_along_their_own_weight_axes():
    x = torch.randn(2, 3, 6, 6)
    assert groups_of(Upsampling(), x) == {
        frozenset({("a", "out"), ("up", "in")}): (6, None),
        frozenset({("up", "out"), ("dw", "dw"), ("head", "in")}): (5, None),
        frozenset({("head", "out")}): (2, "reaches the model output")}
    check_zeroed_channels_are_removed_losslessly(Upsampling(), x)
    small = fxprune.prune(Upsampling(), x, "prune-channels{ratio=0.4}")
    assert small.get_submodule("up").weight.shape == (3, 3, 4, 4) and small.get_submodule("dw").groups == 3  # 6 -> 3, 5 -> 3


class ChannelStatistics(nn.Module):
    """timm's SimpleNorm (x / sqrt(var over channels)) and a spatial gate from the max over channels (CSATv2)."""

    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 2, 1)
        self.gate = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        x = self.a(x)
        x = x * torch.rsqrt(torch.var(x, dim=(1,), keepdim=True) + 1e-5)
        return self.head(x * self.gate(x.amax(dim=1, keepdim=True)).sigmoid())


def test_var_and_amax_over_the_channel_axis_run_over_the_kept_channels():
    x = torch.randn(2, 3, 5, 5)
    assert groups_of(ChannelStatistics(), x) == {
        frozenset({("a", "out"), ("head", "in")}): (6, None),
        frozenset({("gate", "out")}): (1, "mul (mul_1) broadcasts this one channel over many"),
        frozenset({("head", "out")}): (2, "reaches the model output")}
    check_zeroed_channels_are_removed_losslessly(ChannelStatistics(), x)


class GlobalContextNet(nn.Module):
    """timm's GlobalContext: x (B, 1, C, HW) @ softmax(conv(x) with one output) (B, 1, HW, 1), then an MLP gate."""

    def __init__(self):
        super().__init__()
        from timm.layers import GlobalContext

        self.a, self.gc, self.head = nn.Conv2d(3, 8, 3, padding=1), GlobalContext(8, rd_ratio=0.5), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.gc(self.a(x)))


def test_a_product_with_a_one_channel_attention_map_keeps_the_channels_on_its_rows():
    x = torch.randn(2, 3, 5, 5)
    graph = analyse(fxprune.trace(GlobalContextNet().eval()), (x,))
    assert sorted((g.size, g.blocked) for g in graph.groups) == [
        (1, "matmul (matmul) broadcasts this one channel over many"), (2, "reaches the model output"), (4, None),
        (8, None)]
    check_zeroed_channels_are_removed_losslessly(GlobalContextNet(), x)


class PoolChannelsLast(nn.Module):
    """A pool over the last two dims of (B, H, W, C) tokens: it pools along W and the channels together."""

    def __init__(self, functional: bool):
        super().__init__()
        self.functional, self.a, self.pool, self.head = functional, nn.Linear(3, 6), nn.MaxPool2d(2), nn.Linear(3, 2)

    def forward(self, x):
        x = self.a(x.permute(0, 2, 3, 1))
        return self.head(F.avg_pool2d(x, 2) if self.functional else self.pool(x))


@pytest.mark.parametrize("functional, reason", [(True, "avg_pool2d acts on another axis"),
                                                (False, "pool acts on another axis")])
def test_a_pool_over_channels_on_another_axis_than_1_is_a_named_barrier(functional, reason):
    x = torch.randn(2, 3, 4, 4)
    assert sorted((g.size, g.blocked) for g in analyse(fxprune.trace(PoolChannelsLast(functional)), (x,)).groups) == [
        (2, "reaches the model output"), (6, reason)]
