"""prune-joint: bases and channels in one ranking, least Taylor importance per param saved."""

import pytest
import torch
from torch import nn

import fxprune
from fxprune.analysis.counting import total_macs, total_params
from fxprune.core.errors import PipelineError
from fxprune.core.lowrank import find_pairs

from .conftest import randomize_bn

X = torch.randn(4, 3, 8, 8)
Y = torch.tensor([0, 1, 2, 3])


class Chain(nn.Module):
    """conv 3->8 3x3, ReLU, conv 8->4 3x3, mean, Linear 4->10 (the head: insert-scaling merges its pair back)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


def scaled_with_two_free_cuts():
    """Chain decomposed and scaled, then channel 5 of conv1 made dead (its coef row and bias zero)
    and basis 3 of conv2 made unused (its coef column zero): both have Taylor importance exactly 0.
    Removing the channel saves 64 params as fold counts them (conv1 merged 8x27+8 -> 7x27+7,
    conv2 pair min(4x76, 4x72) -> min(4x67, 4x63)); cutting the basis saves 60 (4x72 -> 3x76)."""
    gm = fxprune.prune(Chain(), X, "decompose-conv,insert-scaling")
    with torch.no_grad():
        gm.conv1.coef.weight[5] = 0
        gm.conv1.coef.bias[5] = 0
        gm.conv2.coef.weight[:, 3] = 0
    return gm


def folded_params(gm):
    return total_params(fxprune.prune(gm, X, "fold"))


def joint(gm, keep: float):
    return fxprune.prune(gm, X, f"prune-joint{{target-params={keep!r}}}", data=[(X, Y)])


def test_zero_importance_cuts_go_first_in_cost_order():
    gm = scaled_with_two_free_cuts()
    start = folded_params(gm)
    one = joint(gm, (start - 0.5) / start)  # any one cut is enough: the one saving more, the channel
    assert one.conv1.coef.weight.shape[0] == 7 and one.conv2.basis.weight.shape[1] == 7
    assert {p.source: p.rank for p in find_pairs(one)} == {"conv1": 8, "conv2": 4}
    assert fxprune.history(one)[-1].stats == {"bases-before": 12, "bases-after": 12, "channels-before": 12,
                                             "channels-after": 11, "layers-changed": 2}
    two = joint(gm, (start - 64.5) / start)  # then the basis: nothing else
    assert {p.source: p.rank for p in find_pairs(two)} == {"conv1": 8, "conv2": 3}
    assert two.conv1.coef.weight.shape[0] == 7
    torch.testing.assert_close(two.conv2.coef.weight[:, :, 0, 0], gm.conv2.coef.weight[:, :3, 0, 0])
    with torch.no_grad():  # both cuts removed nothing the outputs used
        torch.testing.assert_close(two(X), gm(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("budget", ["target-params=0.5", "target-macs=0.4"])
def test_budget_holds_as_fold_counts(tiny, budget):
    gm = fxprune.prune(randomize_bn(tiny), X, "decompose-conv,insert-scaling")
    small = fxprune.prune(gm, X, f"prune-joint{{{budget}}},fold", data=[(X, Y)] * 2)
    before = fxprune.prune(gm, X, "fold")
    key, _, value = budget.partition("=")
    count = total_params if key == "target-params" else (lambda m: total_macs(m, (X,)))
    assert count(small) <= float(value) * count(before)
    assert count(small) >= (float(value) - 0.1) * count(before)  # and it does not overshoot by much
    stats = fxprune.history(small)[-2].stats
    assert stats["bases-after"] < stats["bases-before"] or stats["channels-after"] < stats["channels-before"]
    assert small(X).shape == (4, 10)


def test_keeping_everything_cuts_nothing(tiny):
    gm = fxprune.prune(tiny, X, "decompose-conv,insert-scaling")
    same = fxprune.prune(gm, X, "prune-joint{target-params=1.0}", data=[(X, Y)])
    assert not fxprune.history(same)[-1].modified
    with torch.no_grad():
        assert torch.equal(same(X), gm(X))


@pytest.mark.parametrize("pipeline, context, message", [
    ("prune-joint", {"data": [(X, Y)]},
     "prune-joint: give a budget: target-params=F, target-macs=F or target-latency=F (fraction of the model to keep)"),
    ("prune-joint{target-params=0.5 target-macs=0.5}", {"data": [(X, Y)]},
     "prune-joint: give one of target-params, target-macs, target-latency, not target-params and target-macs"),
    ("prune-joint{target-params=0.5}", {},
     "prune-joint: needs data for Taylor importance: pass batches of (inputs, targets), e.g. "
     "fxprune.prune(model, x, pipeline, data=train_loader)"),
])
def test_bad_joint_pipelines_name_the_problem(tiny, pipeline, context, message):
    gm = fxprune.prune(tiny, X, "decompose-conv,insert-scaling")
    with pytest.raises(PipelineError) as err:
        fxprune.prune(gm, X, pipeline, **context)
    assert str(err.value) == message


def test_joint_needs_the_scales(tiny):
    with pytest.raises(PipelineError) as err:
        fxprune.prune(tiny, X, "decompose-conv,prune-joint{target-params=0.5}", data=[(X, Y)])
    assert str(err.value) == ("wrong pass order: prune-joint must come after insert-scaling (bases are ranked by "
                              "the Taylor importance of their scaling factors); write 'insert-scaling,...,prune-joint'")
