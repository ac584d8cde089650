"""Property tests on random small conv nets: lossless passes stay lossless, fold never grows a
model, and the savings totals stay exact."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fxprune
from fxprune.analysis.counting import total_macs, total_params

from .conftest import randomize_bn


@st.composite
def conv_nets(draw):
    layers, channels = [], draw(st.integers(1, 8))
    for _ in range(draw(st.integers(1, 4))):
        groups = draw(st.sampled_from([g for g in (1, 2, 4) if channels % g == 0]))
        out = groups * draw(st.integers(1, 6))
        k = draw(st.sampled_from([1, 3]))
        layers.append(nn.Conv2d(channels, out, k, stride=draw(st.sampled_from([1, 2])), padding=k // 2,
                                groups=groups, bias=draw(st.booleans())))
        if draw(st.booleans()):
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU())
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, draw(st.integers(1, 5)))]
    torch.manual_seed(draw(st.integers(0, 2**16)))
    return randomize_bn(nn.Sequential(*layers)).eval(), channels


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(conv_nets())
def test_full_rank_decompose_and_fold_are_lossless(net_and_channels):
    net, _ = net_and_channels
    x = torch.randn(2, net[0].in_channels, 9, 9)
    gm = fxprune.prune(net, x, "decompose-conv,fold")
    with torch.no_grad():
        torch.testing.assert_close(gm(x), net(x), rtol=1e-4, atol=1e-5)


@SETTINGS
@given(conv_nets(), st.floats(0.3, 1.0))
def test_fold_never_grows_a_model(net_and_channels, energy):
    net, _ = net_and_channels
    x = torch.randn(1, net[0].in_channels, 9, 9)
    gm = fxprune.prune(net, x, f"decompose-conv,prune-basis{{energy={energy}}},fold")
    assert total_params(gm) <= total_params(net)
    assert total_macs(gm, (x,)) <= total_macs(net, (x,))


@pytest.mark.filterwarnings("ignore:.*the budget cannot be reached")  # small nets: budget may be too low
@SETTINGS
@given(conv_nets(), st.sampled_from(["target-params", "target-macs"]), st.floats(0.2, 1.0))
def test_savings_totals_stay_exact(net_and_channels, option, target):
    net, _ = net_and_channels
    x = torch.randn(1, net[0].in_channels, 9, 9)
    gm = fxprune.prune(net, x, f"decompose-conv,prune-basis{{{option}={target}}},fold")
    report = fxprune.savings(net, gm, x)
    t = report.totals
    assert t["params_before"] == sum(p.numel() for p in net.parameters())
    assert t["params_after"] == sum(p.numel() for p in gm.parameters())
    for key in ("params_before", "params_after", "macs_before", "macs_after"):
        assert sum(r[key] for r in report.rows) == t[key]
    assert report.rows[-1]["macs_before"] == 0  # a conv net has no MACs outside conv/linear layers
