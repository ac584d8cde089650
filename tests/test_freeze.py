"""Weights computed from parameters alone (weight standardisation) frozen into plain layers."""

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
from torch import nn

import fxprune
from fxprune.core.freeze import freeze_computed_weights

from .conftest import assert_same_state, state_copy

X = torch.randn(2, 3, 9, 9)


class Standardised(nn.Module):
    def __init__(self, first: nn.Module):
        super().__init__()
        self.first = first
        self.act = nn.ReLU()
        self.second = ScaledStdConv2d(first.out_channels, 6, 3, padding=1, bias=True)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.second(self.act(self.first(x))).mean((2, 3)))


def standardised(w: torch.Tensor, gain: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Weight standardisation written out: each filter to mean 0, variance 1 (biased), times gain."""
    flat = w.reshape(w.shape[0], -1)
    out = (flat - flat.mean(1, keepdim=True)) / torch.sqrt(flat.var(1, unbiased=False, keepdim=True) + eps)
    return (out if gain is None else out * gain.reshape(-1, 1)).reshape_as(w)


@pytest.mark.parametrize("first, plain", [
    (StdConv2d(3, 8, 3, stride=2), nn.Conv2d),
    (ScaledStdConv2d(3, 8, 3, stride=2), nn.Conv2d),
    (StdConv2dSame(3, 8, 3, stride=2, padding="same"), Conv2dSame),  # dynamic "same" padding: timm's Conv2dSame
    (ScaledStdConv2dSame(3, 8, 3, stride=2, padding="same"), Conv2dSame),
    (StdConv2dSame(3, 8, 3, stride=1, padding="same"), nn.Conv2d),  # static padding: a plain conv
])
def test_standardised_convs_become_plain_layers_with_the_same_outputs_bit_for_bit(first, plain):
    torch.manual_seed(0)
    model = Standardised(first).eval()
    for m in (model.first, model.second):
        if hasattr(m, "gain"):
            m.gain.data.uniform_(0.5, 2)
    before = state_copy(model)
    gm = fxprune.prune(model, X, "fold")
    assert_same_state(model, before)
    assert type(gm.get_submodule("first")) is plain and type(gm.get_submodule("second")) is nn.Conv2d
    with torch.no_grad():
        assert torch.equal(gm(X), model(X))
    for path in ("first", "second"):
        m = getattr(model, path)
        gain = m.gain * m.scale if hasattr(m, "gain") else None
        torch.testing.assert_close(gm.get_submodule(path).weight, standardised(m.weight, gain, m.eps),
                                   rtol=1e-5, atol=1e-6)
    assert gm.get_submodule("second").bias is not None
    assert not any("gain" in name for name, _ in gm.named_parameters())


def test_channels_of_standardised_convs_are_pruned():
    """Before freezing, every standardised conv was a barrier (its weight computed in the graph)."""
    torch.manual_seed(0)
    model = Standardised(ScaledStdConv2d(3, 8, 3, stride=2)).eval()
    small = fxprune.prune(model, X, "prune-channels{ratio=0.5}")
    assert small.get_submodule("first").weight.shape == (4, 3, 3, 3)
    assert small.get_submodule("second").weight.shape == (3, 4, 3, 3)


class Computed(nn.Module):
    """Weights computed from an input, a module call or a random op, or a module read elsewhere too."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.scale = nn.Linear(4, 4)

    def forward(self, x):
        y = F.conv2d(x, self.a.weight * x.mean())  # depends on the input
        y = F.conv2d(y, self.scale(self.b.weight.flatten(1)).view(4, 4, 1, 1))  # through a module call
        y = F.conv2d(y, self.c.weight * torch.rand(1))  # random
        return y + self.c.bias.view(1, -1, 1, 1)


def test_weights_that_are_not_fixed_stay_computed():
    gm = fxprune.trace(Computed().eval())
    assert freeze_computed_weights(gm) == 0
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"].count(torch.conv2d) == 3


def test_a_weight_computed_from_parameters_alone_is_frozen_where_its_module_is_read_nowhere_else():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.scale = nn.Parameter(torch.full((4, 1, 1, 1), 2.0))

        def forward(self, x):
            return F.conv2d(x, self.conv.weight * 2, self.conv.bias) + F.conv2d(x, self.conv.weight * self.scale)

    model = Scaled().eval()
    gm = fxprune.trace(model)
    assert freeze_computed_weights(gm) == 0  # conv.weight feeds two calls: neither owns the module
    with torch.no_grad():
        assert torch.equal(gm(X), model(X))
