"""Random small nets (groups, depthwise, residual adds, concat, self-concat, SE gates, chunk, flatten
-> linear) through random valid pipelines with verify=True. Nothing but an fxprune error may be
raised (none is expected), lossless pipelines keep the outputs, fold never grows a model, savings
totals are exact. CI runs a bounded sample; `-m fuzz` runs thousands (bench/results/fuzz.md)."""

import os
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fxprune
from fxprune.analysis.counting import total_macs, total_params

from .conftest import randomize_bn

BLOCKS = ("conv", "grouped", "depthwise", "residual", "concat", "self-concat", "se", "chunk")


class RandomNet(nn.Module):
    """A stack of `kinds` blocks on `channels` channels, then a flatten (or pool + flatten) -> Linear."""

    def __init__(self, kinds: list[str], widths: list[int], channels: int, pool: bool, classes: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.kinds, self.pool = kinds, pool
        self.blocks = nn.ModuleList()
        for kind, width in zip(kinds, widths):
            block, channels = _block(kind, channels, width)
            self.blocks.append(block)
        self.head = nn.Linear(channels * (1 if pool else 16), classes)

    def forward(self, x):
        for kind, block in zip(self.kinds, self.blocks):
            if kind == "residual":
                x = x + block[1](torch.relu(block[0](x)))
            elif kind == "concat":
                x = torch.cat([block[0](x), block[1](x)], 1)
            elif kind == "self-concat":
                y = block(x)
                x = torch.cat([y, y], 1)
            elif kind == "se":
                x = x * torch.sigmoid(block[1](torch.relu(block[0](x.mean((2, 3), keepdim=True)))))
            elif kind == "chunk":
                a, b = block(x).chunk(2, 1)
                x = a * torch.sigmoid(b)
            else:
                x = block(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1 if self.pool else 4)
        return self.head(torch.flatten(x, 1))


def _block(kind: str, c: int, w: int) -> tuple[nn.Module, int]:
    if kind == "conv":
        return nn.Sequential(nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()), w
    if kind == "grouped":
        g = 2 if c % 2 == 0 else 1
        return nn.Sequential(nn.Conv2d(c, 2 * w, 3, padding=1, groups=g), nn.ReLU()), 2 * w
    if kind == "depthwise":
        return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c), nn.ReLU()), c
    if kind == "residual":
        return nn.ModuleList([nn.Conv2d(c, w, 3, padding=1), nn.Conv2d(w, c, 1)]), c
    if kind == "concat":
        return nn.ModuleList([nn.Conv2d(c, w, 1), nn.Conv2d(c, w + 1, 3, padding=1)]), 2 * w + 1
    if kind == "self-concat":
        return nn.Conv2d(c, w, 1), 2 * w
    if kind == "se":
        return nn.ModuleList([nn.Conv2d(c, max(1, c // 2), 1), nn.Conv2d(max(1, c // 2), c, 1)]), c
    return nn.Conv2d(c, 2 * w, 1), w  # chunk: a gated half


@st.composite
def nets(draw):
    n = draw(st.integers(1, 5))
    kinds = draw(st.lists(st.sampled_from(BLOCKS), min_size=n, max_size=n))
    widths = draw(st.lists(st.integers(2, 12), min_size=n, max_size=n))
    net = RandomNet(kinds, widths, draw(st.integers(2, 6)), draw(st.booleans()), draw(st.integers(2, 6)),
                    draw(st.integers(0, 2**16)))
    return randomize_bn(net).eval()


LOSSLESS = ["decompose-conv,fold", "decompose-conv,insert-scaling,fold", "insert-channel-scaling,fold",
            "decompose-conv,insert-scaling,insert-channel-scaling,fold", "fold"]


@st.composite
def pipelines(draw):
    """A valid pipeline text and whether every pass in it is lossless."""
    if draw(st.booleans()):
        return draw(st.sampled_from(LOSSLESS)), True
    e = draw(st.sampled_from([0.3, 0.6, 0.9, 0.99]))
    t = draw(st.sampled_from([0.2, 0.5, 0.8]))
    r = draw(st.sampled_from([0.0, 0.3, 0.6]))
    k = draw(st.sampled_from([1, 2, 4, 100]))
    return draw(st.sampled_from([
        f"decompose-conv,insert-channel-scaling,prune-basis{{energy={e}}},fold",
        f"decompose-conv,insert-scaling,insert-channel-scaling,prune-basis{{target-params={t}}},"
        f"prune-channels{{criterion=scale ratio={r}}},fold",
        f"prune-channels{{ratio={r} round-to={k}}},fold",
        f"decompose-conv,prune-basis{{target-macs={t}}},prune-channels{{target-params={t}}},fold",
        f"insert-channel-scaling,prune-channels{{criterion=scale target-macs={t}}},decompose-conv,"
        f"prune-basis{{energy={e}}},fold",
        f"prune-channels{{criterion=l1 target-params={t} round-to={k}}},decompose-conv,"
        f"prune-basis{{criterion=energy target-params={t}}},fold",
    ])), False


def check(net: nn.Module, pipeline: str, lossless: bool) -> None:
    x = torch.randn(2, _in_channels(net), 8, 8)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*the budget cannot be reached")
        small = fxprune.prune(net, x, pipeline, verify=True)
    with torch.no_grad():
        out, ref = small(x), net(x)
    if lossless:
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert total_params(small) <= total_params(net) and total_macs(small, (x,)) <= total_macs(net, (x,))
    report = fxprune.savings(net, small, x)
    for key in ("params_before", "params_after", "macs_before", "macs_after"):
        assert sum(r[key] for r in report.rows) == report.totals[key]
    assert report.totals["params_after"] == total_params(small)


def _in_channels(net: RandomNet) -> int:
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels


SHORT = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=int(os.environ.get("FXPRUNE_FUZZ_EXAMPLES", 2000)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@SHORT
@given(nets(), pipelines())
def test_random_nets_through_random_pipelines(net, pipeline):
    check(net, *pipeline)


@pytest.mark.fuzz
@LONG
@given(nets(), pipelines())
def test_random_nets_through_random_pipelines_long(net, pipeline):
    check(net, *pipeline)
