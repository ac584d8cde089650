"""prune_submodule: prune the traceable part of a model that does not trace whole, and put it back."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

import fxprune
from fxprune.core.errors import PipelineError, TraceError

X = torch.randn(2, 3, 16, 16)


class Backbone(nn.Module):
    """Two stages; returns both feature maps in a dict (as torchvision's BackboneWithFPN does)."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                    nn.Conv2d(32, 24, 1))

    def forward(self, x):
        a = self.stage1(x)
        return OrderedDict(low=a, high=self.stage2(a))


class Detector(nn.Module):
    """A backbone, then a head with data-dependent control flow: the whole does not trace."""

    def __init__(self):
        super().__init__()
        self.backbone = Backbone()
        self.head = nn.Conv2d(24, 4, 1)

    def forward(self, images):
        feats = self.backbone(images)
        out = self.head(feats["high"])
        if out.mean() > 0:  # data-dependent: symbolic tracing fails here
            out = out * 2
        return {"boxes": out, "low": feats["low"].mean((2, 3))}


def detector():
    torch.manual_seed(0)
    m = Detector().eval()
    for bn in (m.backbone.stage1[1], m.backbone.stage2[1]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2)
    return m


def test_the_whole_model_does_not_trace():
    with pytest.raises(TraceError):
        fxprune.prune(detector(), X, "fold")


def test_lossless_on_the_backbone_and_the_model_is_not_modified():
    model = detector()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    small = fxprune.prune_submodule(model, "backbone", X, "decompose-conv,fold", verify=True)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert isinstance(model.backbone, Backbone) and isinstance(small.backbone, torch.fx.GraphModule)
    with torch.no_grad():
        want, got = model(X), small(X)
    assert list(got) == ["boxes", "low"]
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5)


def test_channels_reaching_the_submodule_outputs_are_kept():
    model = detector()
    small = fxprune.prune_submodule(model, "backbone", X, "prune-channels{ratio=0.5},fold")
    # stage1's 16 channels and the 1x1 conv's 24 leave the backbone: kept; the 32 inside stage2: halved
    layers = dict(small.backbone.named_modules())
    assert layers["stage2.0"].weight.shape[:2] == (16, 16) and layers["stage2.3"].weight.shape[:2] == (24, 16)
    with torch.no_grad():
        assert {k: v.shape for k, v in small(X).items()} == {k: v.shape for k, v in model(X).items()}


def test_bad_submodules_are_named():
    with pytest.raises(PipelineError, match=r"the model has no submodule 'neck': its children are backbone, head"):
        fxprune.prune_submodule(detector(), "neck", X, "fold")
    model = detector()
    model.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(PipelineError, match=r"submodule 'unused' was never called by the model's forward"):
        fxprune.prune_submodule(model, "unused", X, "fold")
