"""Modules the tracer would keep whole, traced as plain ops (fxprune.core.plain_forwards): nn.MultiheadAttention's
self-attention, torchvision's Swin attention, timm's VGG head. The same outputs as the modules, every other call
kept as one node, and their heads and width pruned."""

import pytest
import torch
from torch import nn

import fxprune
from fxprune.analysis.channels import analyse

from .test_channels import check_zeroed_channels_are_removed_losslessly

E, H, T = 16, 4, 5  # width, heads, tokens


class Block(nn.Module):
    """A pre-norm encoder block as torchvision's ViT writes it, with a class-token head."""

    def __init__(self, batch_first=True, need_weights=False, **mha):
        super().__init__()
        self.embed = nn.Linear(6, E)
        self.norm = nn.LayerNorm(E)
        self.attn = nn.MultiheadAttention(E, H, batch_first=batch_first, **mha)
        self.head = nn.Linear(E, 3)
        self.need_weights, self.batch_first = need_weights, batch_first

    def forward(self, x):
        x = self.embed(x if self.batch_first else x.transpose(0, 1))
        y = self.norm(x)
        y, weights = self.attn(y, y, y, need_weights=self.need_weights)
        x = x + y
        out = self.head(x[:, 0] if self.batch_first else x[0])
        return out if weights is None else (out, weights)


X = torch.randn(2, T, 6)


def module_targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_module"]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_self_attention_traces_as_plain_ops_with_torchs_outputs(batch_first, need_weights):
    model = Block(batch_first, need_weights).eval()
    gm = fxprune.trace(model)
    assert module_targets(gm) == ["embed", "norm", "attn.out_proj", "head"]
    with torch.no_grad():  # torch's own fast path runs here
        torch.testing.assert_close(gm(X), model(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mha, call", [
    ({"add_bias_kv": True}, {}),
    ({"add_zero_attn": True}, {}),
    ({"kdim": 8, "vdim": 8}, {}),
    ({}, {"attn_mask": torch.zeros(T, T, dtype=torch.bool)}),
    ({}, {"is_causal": True, "attn_mask": torch.ones(T, T).triu(1).bool()}),
])
def test_other_attention_calls_stay_one_module(mha, call):
    class Masked(Block):
        def forward(self, x):
            x = self.embed(x)
            key = x[..., :8] if self.attn.kdim != E else x
            return self.head(self.attn(x, key, key, need_weights=False, **call)[0][:, 0])

    model = Masked(**mha).eval()
    gm = fxprune.trace(model)
    assert "attn" in module_targets(gm)
    with torch.no_grad():
        torch.testing.assert_close(gm(X), model(X))


def test_cross_attention_stays_one_module():
    class Cross(Block):
        def forward(self, x):
            x = self.embed(x)
            return self.head(self.attn(x, self.norm(x), self.norm(x), need_weights=False)[0][:, 0])

    assert "attn" in module_targets(fxprune.trace(Cross().eval()))


def test_heads_and_width_are_groups_pruned_losslessly():
    graph = analyse(fxprune.trace(Block().eval()), (X,))
    groups = {g.kind: (g.size, frozenset(g.members), g.blocked) for g in graph.groups if g.kind != "channels"}
    assert groups["heads"] == (H, frozenset({("attn.in_proj_weight", "param"), ("attn.in_proj_bias", "param"),
                                             ("attn.out_proj", "in")}), None)
    assert groups["embedding"] == (E, frozenset({("embed", "out"), ("norm", "norm"), ("attn.in_proj_weight", "param"),
                                                 ("attn.out_proj", "out"), ("head", "in")}), None)
    check_zeroed_channels_are_removed_losslessly(Block(), X, random_weights=False)
    small = fxprune.prune(Block(), X, "prune-channels{ratio=0.5}")
    head_dim = E // H
    assert small.attn.in_proj_weight.shape == (3 * 2 * head_dim, E // 2)  # 2 of 4 heads, 8 of 16 channels
    assert small.attn.out_proj.weight.shape == (E // 2, 2 * head_dim) and small(X).shape == (2, 3)


def tiny_swin(v2: bool = False, **kw):
    """A two-stage Swin (V2: cosine attention, position-bias MLP, no key bias; every qkv bias given random
    values, so the key third's zeroing is what makes the outputs equal)."""
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

    torch.manual_seed(0)
    if v2:
        kw.update(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2, 2], num_heads=[2, 2], window_size=[2, 2],
                            num_classes=3, **kw).eval()
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "cpb_mlp"):
                m.qkv.bias.normal_()
    return model


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("size", [32, 36])  # 8x8 tokens; 9x9: padded to whole windows, then cropped
def test_torchvisions_shifted_windows_trace_as_plain_ops_with_its_outputs(size, v2):
    model, x = tiny_swin(v2), torch.randn(2, 3, size, size)
    gm = fxprune.trace(model)
    functions = {getattr(n.target, "__name__", "") for n in gm.graph.nodes if n.op == "call_function"}
    assert {"window_tokens", "shift_mask", "window_image"} <= functions and ("zeroed_key_bias" in functions) == v2
    assert "shifted_window_attention" not in functions and "features.1.0.attn.proj" in module_targets(gm)
    assert ("features.1.0.attn.qkv" in module_targets(gm)) != v2  # V2: F.linear on its weight and zeroed bias
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-6)


def test_shifted_windows_with_dropout_in_training_stay_one_function():
    gm = fxprune.trace(tiny_swin(attention_dropout=0.1).train())
    assert "shifted_window_attention" in {getattr(n.target, "__name__", "") for n in gm.graph.nodes}


@pytest.mark.parametrize("v2", [False, True])
def test_swin_heads_width_and_patch_merging_are_pruned_losslessly(v2):
    """V2: each head's logit scale and the row of the position-bias MLP's last layer that makes its
    bias go with it; the MLP's hidden width is a group of its own."""
    x = torch.randn(2, 3, 32, 32)
    graph = analyse(fxprune.trace(tiny_swin(v2)), (x,))
    assert [g.blocked for g in graph.groups] == [None] * (len(graph.groups) - 1) + ["reaches the model output"]
    heads = [g for g in graph.groups if g.kind == "heads"]
    assert len(heads) == 4  # one group per block
    if v2:
        assert {("features.1.0.attn.logit_scale", "param"), ("features.1.0.attn.cpb_mlp.2", "out")} <= set(heads[0].members)
    merging = next(g for g in graph.groups if ("features.2.reduction", "in") in g.members)
    assert merging.kind == "embedding" and merging.size == 8  # each channel read 4 times by the reduction
    check_zeroed_channels_are_removed_losslessly(tiny_swin(v2), x, random_weights=False)
    small = fxprune.prune(tiny_swin(v2), x, "prune-channels{ratio=0.5}")
    assert small.get_submodule("features.2.reduction").weight.shape == (8, 16) and small(x).shape == (2, 3)
    if v2:
        assert small.get_submodule("features.1.0.attn").logit_scale.shape == (1, 1, 1)


class VggHead(nn.Module):
    """timm's VGG head (ConvMlp: a 3x3 conv pooled up to 3x3 where the input is smaller, a 1x1 conv)."""

    def __init__(self):
        super().__init__()
        from timm.models.vgg import ConvMlp

        self.conv = nn.Conv2d(3, 4, 1)
        self.pre_logits = ConvMlp(4, 6, kernel_size=3, drop_rate=0.0)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.pre_logits(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("size", [5, 2])  # 2x2: pooled up to the 3x3 kernel
def test_timms_vgg_head_traces_as_its_layers_and_prunes_losslessly(size):
    model, x = VggHead().eval(), torch.randn(2, 3, size, size)
    gm = fxprune.trace(model)
    assert module_targets(gm) == ["conv", "pre_logits.fc1", "pre_logits.act1", "pre_logits.drop", "pre_logits.fc2",
                                  "pre_logits.act2", "head"]
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))
    graph = analyse(gm, (x,))
    assert {frozenset(g.members): g.blocked for g in graph.groups}[
        frozenset({("pre_logits.fc1", "out"), ("pre_logits.fc2", "in")})] is None
    check_zeroed_channels_are_removed_losslessly(VggHead(), x)


def tiny_swin3d():
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    torch.manual_seed(0)
    return SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=8, depths=[2, 2], num_heads=[2, 2], window_size=[2, 2, 2],
                             num_classes=3).eval()


@pytest.mark.parametrize("shape", [(2, 3, 4, 16, 16),  # 2x4x4 tokens: whole windows
                                   (1, 3, 6, 20, 12)])  # 3x5x3: padded, and the last window fitted to the input
def test_video_swin_attention_traces_as_plain_ops_with_its_outputs(shape):
    model, x = tiny_swin3d(), torch.randn(*shape)
    gm = fxprune.trace(model)
    functions = {getattr(n.target, "__name__", "") for n in gm.graph.nodes if n.op == "call_function"}
    assert {"windows_3d", "window_image_3d", "shift_mask_3d", "bias_index_3d"} <= functions
    assert "shifted_window_attention_3d" not in functions and "features.0.0.attn.qkv" in module_targets(gm)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-6)


def test_video_swin_heads_and_width_are_pruned_losslessly():
    x = torch.randn(2, 3, 4, 16, 16)
    graph = analyse(fxprune.trace(tiny_swin3d()), (x,))
    assert [g.blocked for g in graph.groups] == [None] * (len(graph.groups) - 1) + ["reaches the model output"]
    assert [g.kind for g in graph.groups].count("heads") == 4 and [g.kind for g in graph.groups].count("embedding") == 2
    check_zeroed_channels_are_removed_losslessly(tiny_swin3d(), x)
    small = fxprune.prune(tiny_swin3d(), x, "prune-channels{ratio=0.5}")
    assert small.get_submodule("features.0.0.attn").relative_position_bias_table.shape == (27, 1)
    assert small(x).shape == (2, 3)
