"""A conv along the channel axis (ECA's gate, flow_spread): it keeps the width it was made for, removed
channels read as 0 by their neighbours; later removals rewrite the same widen/narrow nodes."""

import io

import pytest
import torch
from torch import nn

import fxprune
from fxprune.analysis.channels import analyse, as_removed, remove, zero
from fxprune.analysis.counting import total_params
from fxprune.analysis.flow_spread import narrow, widen
from fxprune.runners.models import create

from .conftest import randomize_bn
from .test_channels import check_zeroed_channels_are_removed_losslessly

X = torch.randn(2, 3, 5, 5)


class Eca(nn.Module):
    """timm's EcaModule after a conv and BatchNorm: a Conv1d(1, 1, 3) over the pooled channels gates them."""

    def __init__(self, c: int = 6):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c)
        self.gate = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        x = self.bn(self.conv(x)).relu()
        y = self.gate(x.mean((2, 3)).view(x.shape[0], 1, -1)).sigmoid().view(x.shape[0], -1, 1, 1)
        return self.head(x * y.expand_as(x))


def test_an_eca_gate_passes_its_channels_through_and_prunes_losslessly():
    graph = analyse(fxprune.trace(Eca()), (X,))
    assert [(g.size, g.blocked) for g in graph.groups] == [(6, None), (2, "reaches the model output")]
    assert [name for name, _ in graph.flow.spreads] == ["gate"]
    check_zeroed_channels_are_removed_losslessly(randomize_bn(Eca()), X)


def test_removal_spreads_the_gates_input_back_to_its_width_and_again_after_a_second_removal():
    torch.manual_seed(0)
    gm = fxprune.trace(randomize_bn(Eca()).eval())
    graph = analyse(gm, (X,))
    six = graph.groups[0].classes
    zero(graph, {six[1], six[4]})
    with torch.no_grad():
        want = as_removed(graph, {six[1], six[4]})(X)
    remove(graph, {six[1], six[4]})
    spread = [n for n in gm.graph.nodes if n.target in (widen, narrow)]
    assert [getattr(gm, n.args[1].target).tolist() for n in spread] == [[0, 4, 1, 2, 4, 3], [0, 2, 3, 5]]
    torch.testing.assert_close(gm(X), want, rtol=0, atol=1e-6)
    # the second removal: position 3 of the four left (channel 5); positions 1 and 4 stay zeros
    graph = analyse(gm, (X,))
    four = graph.groups[0].classes
    zero(graph, {four[3]})
    with torch.no_grad():
        want = as_removed(graph, {four[3]})(X)
    remove(graph, {four[3]})
    spread = [n for n in gm.graph.nodes if n.target in (widen, narrow)]
    assert [getattr(gm, n.args[1].target).tolist() for n in spread] == [[0, 3, 1, 2, 3, 3], [0, 2, 3]]
    torch.testing.assert_close(gm(X), want, rtol=0, atol=1e-6)
    assert gm.get_submodule("gate").weight.shape == (1, 1, 3)


def test_a_saved_model_keeps_its_widen_and_narrow_nodes_and_prunes_again():
    small = fxprune.prune(randomize_bn(Eca()), (X,), "prune-channels{ratio=0.5}")
    buffer = io.BytesIO()
    torch.save(small, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert [n.target for n in loaded.graph.nodes if n.op == "call_function" and n.target in (widen, narrow)] == [
        widen, narrow]
    torch.testing.assert_close(loaded(X), small(X), rtol=0, atol=0)
    check_zeroed_channels_are_removed_losslessly(loaded, X, random_weights=False)


def test_expand_as_onto_a_tensor_without_the_same_channels_is_a_named_barrier():
    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Conv2d(3, 1, 1), nn.Conv2d(3, 2, 1), nn.Conv2d(2, 2, 1)

        def forward(self, x):  # a's one channel broadcast over b's two
            return self.head(self.a(x).expand_as(self.b(x)))

    blocked = {g.blocked for g in analyse(fxprune.trace(Other()), (X,)).groups}
    assert "expand_as (expand_as) onto a tensor without the same channels" in blocked


@pytest.mark.parametrize("name, kept", [("timm:nf_ecaresnet26", 0.516)])  # ecaresnetlight: test_channels_registry
def test_eca_families_prune_deep_and_exactly(name, kept):
    torch.manual_seed(0)
    model, x = create(name).eval(), torch.randn(1, 3, 64, 64)
    small = fxprune.prune(model, x, "prune-channels{ratio=0.3},fold")
    assert total_params(small) / total_params(model) == pytest.approx(kept, abs=5e-4)
    check_zeroed_channels_are_removed_losslessly(model, x)
