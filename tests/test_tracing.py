import copy

import pytest
import timm
import torch
from torch import nn

import fxprune
from fxprune import TraceError
from fxprune.core.meta import SOURCE
from fxprune.runners.models import create

from .conftest import assert_same_state, state_copy


@pytest.mark.parametrize("model_id", ["tv:resnet18", "tv:shufflenet_v2_x0_5", "timm:efficientnet_b0",
                                      "timm:vit_tiny_patch16_224"])
def test_trace_is_bit_exact_and_records_sources(model_id):
    model = create(model_id).eval()
    size = 224 if "vit" in model_id else 64
    x = torch.randn(2, 3, size, size)
    before = state_copy(model)
    gm = fxprune.trace(model)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    calls = [n for n in gm.graph.nodes if n.op == "call_module"]
    assert calls and all(n.meta[SOURCE] == n.target for n in calls)
    assert_same_state(model, before)


def test_timm_leaf_modules_are_kept_whole():
    from timm.layers import BatchNormAct2d

    gm = fxprune.trace(create("timm:efficientnet_b0").eval())
    bnact = [n for n in gm.graph.nodes if n.op == "call_module"
             and isinstance(gm.get_submodule(n.target), BatchNormAct2d)]
    assert len(bnact) == 49


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3), Gate())

    def forward(self, x):
        return self.block(x)


class Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: not symbolically traceable
            return x
        return -x


def test_untraceable_model_names_the_module_and_hints():
    with pytest.raises(TraceError) as e:
        fxprune.trace(Branchy())
    msg = str(e.value)
    assert e.value.module_path == "block.1"
    assert "cannot trace Branchy: failed inside module 'block.1' (Gate)" in msg
    assert "Hint: mark that module's class as a leaf: fxprune.trace(model, leaf_modules=[Gate])" in msg
    model = Branchy()
    gm = fxprune.trace(model, leaf_modules=[Gate])  # the hint works
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(gm(x), model(x)) and torch.equal(gm(-x), model(-x))


class TopLevelBranch(nn.Module):
    def forward(self, x, flag):
        return x if flag else -x


def test_top_level_control_flow_hints_concrete_args():
    with pytest.raises(TraceError, match=r"failed in TopLevelBranch.forward: .*concrete_args"):
        fxprune.trace(TopLevelBranch())
    gm = fxprune.trace(TopLevelBranch(), concrete_args={"flag": True})
    assert torch.equal(gm(torch.ones(2), True), torch.ones(2))


def test_trace_refuses_non_modules():
    with pytest.raises(TypeError, match="fxprune.trace expects an nn.Module, got function"):
        fxprune.trace(lambda x: x)


class OptionalMask(nn.Module):
    """Like timm's Hiera/ViT: an optional mask and a flag that only matter when given."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x, mask=None, flip: bool = False):
        if mask is not None:
            x = x * mask
        return -self.conv(x) if flip else self.conv(x)


def test_none_and_bool_defaults_are_traced_as_their_defaults():
    model = OptionalMask()
    x = torch.randn(1, 3, 4, 4)
    assert torch.equal(fxprune.trace(model)(x), model(x))
    flipped = fxprune.trace(model, concrete_args={"flip": True})
    assert torch.equal(flipped(x, None, True), model(x, flip=True))


def test_a_pruned_model_with_a_caching_leaf_module_can_be_deep_copied():
    # timm's efficientvit attention (a leaf) caches its bias table on the first eval call; a shape
    # pass run with grad enabled left a cached tensor with a grad_fn, which deepcopy refuses
    model = create("timm:efficientvit_m0").eval()
    x = torch.randn(1, 3, 224, 224)
    small = fxprune.prune(model, x, "decompose-conv,prune-basis{energy=0.95},fold")
    torch.testing.assert_close(copy.deepcopy(small)(x), small(x))
    assert fxprune.savings(model, small, x).totals["params_after"] < sum(p.numel() for p in model.parameters())


def _clip_window(window, size):  # edits the list it is given, as torchvision's video Swin does
    for i in range(len(size)):
        if size[i] <= window[i]:
            window[i] = size[i]
    return window


torch.fx.wrap("_clip_window")


class ClipsWindow(torch.nn.Module):
    def forward(self, x):
        w = _clip_window([8, 8], [x.shape[2], x.shape[3]])
        return torch.nn.functional.avg_pool2d(x, w)


def test_shapes_propagate_through_a_wrapped_function_that_edits_its_list_argument():
    x = torch.randn(1, 3, 4, 16)
    gm = fxprune.prune(ClipsWindow(), x, "fold", verify=True)  # verify runs ShapeProp
    torch.testing.assert_close(gm(x), ClipsWindow()(x))


class CachesInEval(nn.Module):
    """Stores what its forward computes on itself in eval mode, as timm's EfficientFormer caches its
    attention bias: a traced forward would leave a proxy in the cache."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(4))
        self.cache = {}

    def forward(self, x):
        if not self.training:
            if "bias" not in self.cache:
                self.cache["bias"] = self.bias * 2
            return x + self.cache["bias"]
        return x + self.bias * 2


def test_tracing_and_pruning_leave_the_callers_model_as_it_was():
    model, x = CachesInEval().eval(), torch.randn(2, 4)
    gm = fxprune.trace(model)
    fxprune.prune(model, x, "fold")
    fxprune.prune(gm, x, "fold")
    assert model.cache == {}
    with torch.no_grad():
        torch.testing.assert_close(model(x), x + model.bias * 2)
        torch.testing.assert_close(gm(x), model(x))
    timm_model = timm.create_model("efficientformer_l1").eval()
    fxprune.trace(timm_model)
    assert all(m.attention_bias_cache == {} for m in timm_model.modules() if hasattr(m, "attention_bias_cache"))
