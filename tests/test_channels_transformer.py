"""prune-channels on transformer-style graphs: the embedding width as one group with its norms,
position embedding, class token and layer scales; literal and computed channel counts rewritten;
token-only reshapes (windows), roll and pad; exact members, reasons and lossless removal."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.analysis.channels import analyse, as_removed, zero

from .test_channels import check_zeroed_channels_are_removed_losslessly

C, N = 8, 4  # embedding width, tokens
IMG = torch.randn(2, 3, 4, 4)  # 2x2 patches of 2x2 pixels: N = 4 tokens


class TinyViT(nn.Module):
    """Patch conv, class token, position embedding, a pre-norm block with a module LayerNorm and a
    functional one (weight read directly), layer scale, final norm, head on the class token."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, C, 2, stride=2)
        self.cls_token = nn.Parameter(torch.randn(1, 1, C))
        self.pos_embed = nn.Parameter(torch.randn(1, N + 1, C))
        self.norm1 = nn.LayerNorm(C)
        self.fc1, self.fc2 = nn.Linear(C, 12), nn.Linear(12, C)
        self.gamma = nn.Parameter(torch.rand(C) + 0.5)
        self.norm2_weight, self.norm2_bias = nn.Parameter(torch.rand(C) + 0.5), nn.Parameter(torch.randn(C))
        self.head = nn.Linear(C, 5)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, N, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = x + self.gamma * self.fc2(F.gelu(self.fc1(self.norm1(x))))
        x = F.layer_norm(x, (C,), self.norm2_weight, self.norm2_bias)
        return self.head(x[:, 0])


def groups_of(model, x=IMG):
    graph = analyse(fxprune.trace(model.eval()), (x,))
    return {frozenset(g.members): (g.size, g.blocked) for g in graph.groups}


def test_the_embedding_width_is_one_group_with_norms_and_attributes():
    assert groups_of(TinyViT()) == {
        frozenset({("patch", "out"), ("cls_token", "param"), ("pos_embed", "param"), ("norm1", "norm"),
                   ("fc1", "in"), ("fc2", "out"), ("gamma", "param"), ("norm2_weight", "param"),
                   ("norm2_bias", "param"), ("head", "in")}): (C, None),
        frozenset({("fc1", "out"), ("fc2", "in")}): (12, None),
        frozenset({("head", "out")}): (5, "reaches the model output"),
    }


def test_removing_embedding_channels_slices_every_attribute_and_norm():
    small = fxprune.prune(TinyViT(), IMG, "prune-channels{ratio=0.5}")
    assert small.cls_token.shape == (1, 1, 4) and small.pos_embed.shape == (1, N + 1, 4)
    assert small.gamma.shape == small.norm2_weight.shape == small.norm2_bias.shape == (4,)
    assert small.get_submodule("norm1").normalized_shape == (4,)
    assert [n.args[1] for n in small.graph.nodes if n.target is F.layer_norm] == [(4,)]
    assert small(IMG).shape == (2, 5)


def test_zeroed_embedding_channels_are_removed_losslessly_against_masked_norms():
    check_zeroed_channels_are_removed_losslessly(TinyViT(), IMG, random_weights=False)


def test_masked_norms_differ_from_plain_norms_only_where_channels_are_masked():
    """The rule the lossless check rests on: a LayerNorm over C channels of which some are zero is
    not the LayerNorm over the others; masking them out of its statistics is."""
    gm = fxprune.trace(TinyViT().eval())
    graph = analyse(gm, (IMG,))
    with torch.no_grad():
        torch.testing.assert_close(as_removed(graph, set())(IMG), gm(IMG), rtol=1e-6, atol=1e-6)
        chosen = set(graph.prunable[0].classes[:3])
        zero(graph, chosen)
        assert not torch.allclose(as_removed(graph, chosen)(IMG), gm(IMG), atol=1e-3)


class Norms(nn.Module):
    """RMSNorm and GroupNorm with one group over a residual stream (channels first for GroupNorm)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, C, 1), nn.Conv2d(C, C, 1)
        self.gn, self.rms = nn.GroupNorm(1, C), nn.RMSNorm(C)
        self.head = nn.Linear(C, 5)

    def forward(self, x):
        x = self.a(x)
        x = x + self.b(self.gn(x))
        return self.head(self.rms(x.mean((2, 3))))


def test_rms_norm_and_one_group_group_norm_prune_losslessly_against_as_removed():
    members = next(iter(g for g in groups_of(Norms()) if ("gn", "norm") in g))
    assert members == {("a", "out"), ("b", "in"), ("b", "out"), ("gn", "norm"), ("rms", "norm"), ("head", "in")}
    check_zeroed_channels_are_removed_losslessly(Norms(), IMG, random_weights=False)


def test_group_norm_with_several_groups_keeps_them_equal_and_prunes_losslessly_against_as_removed():
    """GroupNorm(4, 8): position j of each of its 4 groups of 2 goes together (2 classes of 4 channels),
    so every group loses as many channels and num_groups stays 4; statistics per group, masked."""
    model = Norms()
    model.gn = nn.GroupNorm(4, C)
    graph = analyse(fxprune.trace(model.eval()), (IMG,))
    group = next(g for g in graph.groups if ("gn", "norm") in g.members)
    assert group.size == 2 and group.blocked is None
    check_zeroed_channels_are_removed_losslessly(model, IMG, random_weights=False)
    small = fxprune.prune(model, IMG, "prune-channels{ratio=0.5}")
    assert (small.gn.num_groups, small.gn.num_channels, small.gn.weight.shape) == (4, 4, (4,))


class Windows(nn.Module):
    """Channels-last tokens cut into windows (view/permute/view with the width read from the shape),
    shifted with roll and padded on the token axes only, as Swin does; a literal width in a reshape."""

    def __init__(self):
        super().__init__()
        self.embed, self.norm = nn.Conv2d(3, C, 1), nn.LayerNorm(C)
        self.fc = nn.Linear(C, C)
        self.head = nn.Linear(C, 5)

    def forward(self, x):
        x = self.embed(x).reshape(2, C, 16).transpose(1, 2).reshape(2, 4, 4, C)  # literal C
        x = F.pad(self.norm(x), (0, 0, 0, 2, 0, 2))  # (B, 6, 6, C)
        b, h, w, c = x.shape
        win = torch.roll(x, (1, 1), (1, 2)).view(b, h // 3, 3, w // 3, 3, c).permute(0, 1, 3, 2, 4, 5)
        win = self.fc(win.reshape(-1, 9, c))
        x = x + win.view(b, 2, 2, 3, 3, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return self.head(x.mean((1, 2)))


def test_token_reshapes_roll_and_pad_keep_the_channel_axis_and_literals_are_rewritten():
    members = next(iter(g for g in groups_of(Windows()) if ("norm", "norm") in g))
    assert members == {("embed", "out"), ("norm", "norm"), ("fc", "in"), ("fc", "out"), ("head", "in")}
    assert groups_of(Windows())[members] == (C, None)
    check_zeroed_channels_are_removed_losslessly(Windows(), IMG, random_weights=False)
    small = fxprune.prune(Windows(), IMG, "prune-channels{ratio=0.5}")
    assert [n.args for n in small.graph.nodes if n.target == "reshape"][0][1:] == (2, 4, 16)


class FunctionalLinear(nn.Module):
    """A linear layer applied as F.linear with its weight read directly (BEiT's qkv), its outputs cut
    into two slabs and merged back with the width read from the input's shape (rewritten to -1)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, C)
        self.qkv = nn.Linear(C, C)
        self.head = nn.Linear(C, 5)

    def forward(self, x):
        x = self.a(x)
        b, c = x.shape
        y = F.linear(x, self.qkv.weight, self.qkv.bias).view(b, 2, 4)  # two slabs of 4 outputs
        return self.head(y.reshape(b, c))  # x's width sizes y


def test_functional_linear_reads_channels_through_its_weight_attribute():
    x = torch.randn(2, 6)
    groups = groups_of(FunctionalLinear(), x)
    assert groups[frozenset({("a", "out"), ("qkv.weight", "param")})] == (C, None)
    check_zeroed_channels_are_removed_losslessly(FunctionalLinear(), x, random_weights=False)
    small = fxprune.prune(FunctionalLinear(), x, "prune-channels{ratio=0.5}")
    assert small.qkv.weight.shape == (4, 4) and small(x).shape == (2, 5)  # one slab of outputs, half the inputs
    assert [n.args[1:] for n in small.graph.nodes if n.target == "reshape"] == [(n.args[1], -1) for n in small.graph.nodes
                                                                                 if n.target == "reshape"]


class CountAsNumber(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(6, C), nn.Linear(C, 5)
        self.table = nn.Parameter(torch.randn(C))

    def forward(self, x):
        x = self.a(x)
        return self.head(x) * x.shape[1] + self.table.sum()


def test_a_channel_count_used_as_a_number_keeps_its_channels():
    x = torch.randn(2, 6)
    assert groups_of(CountAsNumber(), x)[frozenset({("a", "out"), ("head", "in")})] == (
        C, "their count is read by mul (mul)")


class SharedAttribute(nn.Module):
    """pos is added to the channels and also read by an op the rules do not understand (exp keeps its
    positions; the sum over them is not understood for an attribute)."""

    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(6, C), nn.Linear(C, 5)
        self.pos = nn.Parameter(torch.randn(C))

    def forward(self, x):
        return self.head(self.a(x) + self.pos) + self.pos.exp().sum()


def test_an_attribute_with_a_use_not_understood_keeps_its_channels():
    x = torch.randn(2, 6)
    assert groups_of(SharedAttribute(), x)[frozenset({("a", "out"), ("pos", "param"), ("head", "in")})] == (
        C, "pos is also read by sum (sum_1)")


@pytest.mark.parametrize("name, kwargs, member", [
    ("deit_tiny_patch16_224", dict(img_size=32, depth=2), ("pos_embed", "param")),
    ("swin_tiny_patch4_window7_224", dict(img_size=32, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 2)),
     ("layers.0.blocks.1.norm1", "norm")),
])
def test_timm_transformers_prune_their_embedding_width_losslessly(name, kwargs, member):
    """Zeroed channels of every group (embedding width included) removed against masked norms."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
    x = torch.randn(1, 3, 32, 32)
    graph = analyse(fxprune.trace(model), (x,))
    assert any(member in g.members for g in graph.prunable)
    check_zeroed_channels_are_removed_losslessly(model, x)


class PoolFormerish(nn.Module):
    """F.group_norm (weight read directly) and StarReLU (s * relu(x) ** 2 + b)."""

    def __init__(self, groups: int = 1):
        super().__init__()
        self.groups = groups
        self.a, self.b, self.head = nn.Conv2d(3, C, 1), nn.Conv2d(C, C, 1), nn.Linear(C, 5)
        self.gn_w, self.gn_b = nn.Parameter(torch.rand(C) + 0.5), nn.Parameter(torch.randn(C))
        self.s, self.t = nn.Parameter(torch.ones(1)), nn.Parameter(torch.zeros(1))

    def forward(self, x):
        x = self.a(x)
        x = x + self.s * F.relu(self.b(F.group_norm(x, self.groups, self.gn_w, self.gn_b))) ** 2 + self.t
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("norm_groups", [1, 2])
def test_functional_group_norm_and_star_relu_prune_losslessly_against_as_removed(norm_groups):
    model = PoolFormerish(norm_groups)
    groups = groups_of(model)
    assert groups[frozenset({("a", "out"), ("b", "in"), ("b", "out"), ("gn_w", "param"), ("gn_b", "param"),
                             ("head", "in")})] == (C // norm_groups, None)  # classes: positions within a group
    check_zeroed_channels_are_removed_losslessly(model, IMG, random_weights=False)


def test_magnitude_scores_layers_whose_slices_hold_one_value():
    """Only attributes with one value per channel (layer scale, class token) are left out of l1/l2:
    a Linear(1, 4) -> Linear(4, 1) pair is scored (csatv2's attention MLPs)."""
    from fxprune.analysis.channels import magnitude

    graph = analyse(fxprune.trace(nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1))), (torch.randn(2, 1),))
    assert len(graph.prunable) == 1 and set(graph.prunable[0].classes) <= set(magnitude(graph, 1))


class Attention(nn.Module):
    """timm's attention, fused (scaled_dot_product_attention with a per-head bias read from a table,
    as BEiT) or by hand (q @ k^T, softmax, @ v, the bias added, as Swin); a residual around it."""

    def __init__(self, fused: bool, heads: int = 4, dim: int = 3):
        super().__init__()
        self.fused, self.heads, self.dim = fused, heads, dim
        self.embed = nn.Linear(6, C)
        self.qkv, self.proj = nn.Linear(C, 3 * heads * dim), nn.Linear(heads * dim, C)
        self.table = nn.Parameter(torch.randn(7, heads))
        self.register_buffer("index", torch.randint(0, 7, (N * N,)))
        self.head = nn.Linear(C, 5)

    def forward(self, x):
        x = self.embed(x)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.table[self.index].view(N, N, self.heads).permute(2, 0, 1).unsqueeze(0)  # literal heads
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            y = ((q * self.dim ** -0.5) @ k.transpose(-2, -1) + bias).softmax(dim=-1) @ v
        x = x + self.proj(y.transpose(1, 2).reshape(b, n, self.heads * self.dim))
        return self.head(x.mean(1))


@pytest.mark.parametrize("fused", [True, False])
def test_attention_heads_are_classes_with_their_bias_and_are_removed_whole(fused):
    x = torch.randn(2, N, 6)
    heads = frozenset({("qkv", "out"), ("proj", "in"), ("table", "param")})
    assert groups_of(Attention(fused), x)[heads] == (4, None)
    check_zeroed_channels_are_removed_losslessly(Attention(fused), x, random_weights=False)
    small = fxprune.prune(Attention(fused), x, "prune-channels{ratio=0.5}")
    assert small.qkv.weight.shape[0] == 3 * 2 * 3 and small.proj.weight.shape[1] == 2 * 3
    assert small.table.shape == (7, 2) and small(x).shape == (2, 5)


@pytest.mark.parametrize("fused", [True, False])
def test_heads_dim_prunes_position_j_of_every_head_and_writes_out_the_attention_scale(fused):
    """heads=dim: q, k and v of all 4 heads lose the same positions of their head_dim (3 classes); the
    per-head bias stays whole; the fused attention's implicit 1/sqrt(3) is written out, so removing
    zeroed positions keeps the outputs (the check fails without it)."""
    x = torch.randn(2, N, 6)
    graph = analyse(fxprune.trace(Attention(fused).eval()), (x,), "dim")
    group = next(g for g in graph.groups if ("qkv", "out") in g.members)
    assert (set(group.members), group.size, group.blocked, group.kind) == (
        {("qkv", "out"), ("proj", "in")}, 3, None, "head_dim")
    check_zeroed_channels_are_removed_losslessly(Attention(fused), x, random_weights=False, heads="dim")
    small = fxprune.prune(Attention(fused), x, "prune-channels{ratio=0.5 heads=dim}")
    assert small.qkv.weight.shape[0] == 3 * 4 * 1 and small.proj.weight.shape[1] == 4 * 1
    assert small.table.shape == (7, 4) and small(x).shape == (2, 5)
    scales = [n.kwargs.get("scale") for n in small.graph.nodes if n.target is F.scaled_dot_product_attention]
    assert scales == ([3 ** -0.5] if fused else [])


class EinsumAttention(nn.Module):
    """Attention written with torch.einsum (as torchvision's MaxViT), batch and heads on named letters."""

    def __init__(self, heads: int = 4, dim: int = 3):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.embed, self.qkv = nn.Linear(6, C), nn.Linear(C, 3 * heads * dim)
        self.proj, self.head = nn.Linear(heads * dim, C), nn.Linear(C, 5)

    def forward(self, x):
        x = self.embed(x)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.einsum("B H I D, B H J D -> B H I J", q * self.dim ** -0.5, k).softmax(dim=-1)
        y = torch.einsum("bhij,bhjd->bhid", attn, v)
        x = x + self.proj(torch.swapaxes(y, 1, 2).reshape(b, n, self.heads * self.dim))
        return self.head(x.mean(1))


@pytest.mark.parametrize("heads, size", [("whole", 4), ("dim", 3)])
def test_einsum_attention_prunes_heads_or_head_dim_losslessly(heads, size):
    x = torch.randn(2, N, 6)
    graph = analyse(fxprune.trace(EinsumAttention().eval()), (x,), heads)
    group = next(g for g in graph.groups if ("qkv", "out") in g.members)
    assert (set(group.members), group.size, group.blocked) == ({("qkv", "out"), ("proj", "in")}, size, None)
    check_zeroed_channels_are_removed_losslessly(EinsumAttention(), x, random_weights=False, heads=heads)


def test_einsum_with_an_ellipsis_is_a_barrier_and_one_operand_carries_its_channels():
    class SumTokens(EinsumAttention):
        def forward(self, x):
            return self.head(torch.einsum("bnc->bc", self.embed(x)))  # one operand: c carried on

    class Ellipsis_(EinsumAttention):
        def forward(self, x):
            return self.head(torch.einsum("...c->...c", self.embed(x)).mean(1))

    reasons = {g.blocked for g in analyse(fxprune.trace(Ellipsis_().eval()), (torch.randn(2, N, 6),)).groups}
    assert "einsum (einsum) in a form not understood" in reasons
    groups = analyse(fxprune.trace(SumTokens().eval()), (torch.randn(2, N, 6),)).groups
    embed = next(g for g in groups if ("embed", "out") in g.members)
    assert embed.blocked is None and ("head", "in") in embed.members  # c carried to the output


def test_groups_name_their_kind_and_the_cli_prints_it(capsys):
    from fxprune.runners.cli import main

    graph = analyse(fxprune.trace(Attention(True).eval()), (torch.randn(2, N, 6),))
    kinds = {frozenset(g.members): g.kind for g in graph.groups}
    assert kinds[frozenset({("qkv", "out"), ("proj", "in"), ("table", "param")})] == "heads"
    assert kinds[frozenset({("embed", "out"), ("qkv", "in"), ("proj", "out"), ("head", "in")})] == "channels"
    assert {g.kind for g in analyse(fxprune.trace(TinyViT().eval()), (IMG,)).groups} == {"embedding", "channels"}
    assert main(["groups", "timm:test_vit", "--input-size", "3,160,160"]) == 0
    out = capsys.readouterr().out
    assert "kind" in out.splitlines()[0] and " heads " in out and " embedding " in out
    assert main(["groups", "timm:test_vit", "--input-size", "3,160,160", "--heads", "dim"]) == 0
    out = capsys.readouterr().out
    assert " head_dim " in out and " heads " not in out


class Splits(nn.Module):
    """torch.split along channels with known sizes (a CSP block) and with one size (equal parts)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 10, 1), nn.Conv2d(4, 4, 1)
        self.c, self.d = nn.Conv2d(10, 6, 1), nn.Conv2d(3, 5, 1)

    def forward(self, x):
        left, right = self.a(x).split([4, 6], dim=1)
        y = self.c(torch.cat([self.b(left), right], 1))
        p, q = y.split(3, dim=1)
        return self.d(p + q)


def test_split_with_known_sizes_prunes_each_part_and_rewrites_the_sizes():
    groups = groups_of(Splits())
    assert groups[frozenset({("a", "out"), ("b", "in")})] == (4, None)
    assert groups[frozenset({("a", "out"), ("c", "in")})] == (6, None)
    assert groups[frozenset({("c", "out"), ("d", "in")})] == (3, None)  # position j of both parts
    check_zeroed_channels_are_removed_losslessly(Splits(), IMG, random_weights=False)
    small = fxprune.prune(Splits(), IMG, "prune-channels{ratio=0.5}")
    assert [n.args[1] for n in small.graph.nodes if n.target == "split"] == [[2, 3], 1]
    assert small(IMG).shape == (2, 5, 4, 4)


class FunctionalConv(nn.Module):
    """F.conv2d on weights read directly; `standardise` computes the second weight in the graph
    (NFNet's weight standardisation), which keeps the channels it reads."""

    def __init__(self, standardise: bool):
        super().__init__()
        self.standardise = standardise
        self.w, self.b = nn.Parameter(torch.randn(C, 3, 1, 1)), nn.Parameter(torch.randn(C))
        self.w2 = nn.Parameter(torch.randn(5, C, 3, 3))

    def forward(self, x):
        w2 = self.w2 - self.w2.mean((1, 2, 3), keepdim=True) if self.standardise else self.w2
        return F.conv2d(F.relu(F.conv2d(x, self.w, self.b)), w2, padding=1)


def test_functional_conv_on_attributes_prunes_and_a_computed_weight_is_named():
    members = frozenset({("w", "param"), ("b", "param"), ("w2", "param")})
    assert groups_of(FunctionalConv(False))[members] == (C, None)
    check_zeroed_channels_are_removed_losslessly(FunctionalConv(False), IMG, random_weights=False)
    assert groups_of(FunctionalConv(True))[frozenset({("w", "param"), ("b", "param")})] == (
        C, "conv2d (conv2d_1) with a weight or bias computed in the graph")
