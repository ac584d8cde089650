"""Taylor importance averaged across pruning steps (momentum), carried on the modules with its units."""

import pytest
import torch

import fxprune
from fxprune.analysis.channels import analyse, taylor
from fxprune.analysis.importance import taylor_scores
from fxprune.core.errors import PipelineError
from fxprune.core.lowrank import find_pairs
from fxprune.core.smoothing import BASES, CHANNELS, stored

from .conftest import randomize_bn

X = torch.randn(4, 3, 16, 16)


def batches(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g))]


@pytest.fixture
def scaled(tiny):
    return fxprune.prune(randomize_bn(tiny), X, "decompose-conv,insert-scaling")


def test_basis_importance_is_averaged_across_runs(scaled):
    pairs = find_pairs(scaled)
    first, second = taylor_scores(scaled, pairs, batches(1)), taylor_scores(scaled, pairs, batches(2))
    assert all(stored(p.coef, BASES) is None for p in pairs)  # no momentum: nothing stored
    assert all(torch.equal(a, b) for a, b in zip(taylor_scores(scaled, pairs, batches(1), momentum=0.9), first))
    smoothed = taylor_scores(scaled, pairs, batches(2), momentum=0.9)
    for s, a, b in zip(smoothed, first, second):
        torch.testing.assert_close(s, 0.9 * a + 0.1 * b, rtol=1e-15, atol=0)


def test_running_basis_importance_follows_the_kept_bases(scaled):
    pairs = find_pairs(scaled)
    first = {p.source: s for p, s in zip(pairs, taylor_scores(scaled, pairs, batches(1)))}
    pruned = fxprune.prune(scaled, X, "prune-basis{criterion=taylor target-params=0.7 momentum=0.5}", data=batches(1))
    cut = [p for p in find_pairs(pruned) if p.rank < first[p.source].shape[1]]
    assert cut
    for p in cut:
        kept = first[p.source].topk(p.rank, dim=1).indices.sort(dim=1).values
        torch.testing.assert_close(stored(p.coef, BASES).view(p.groups, p.rank),
                                   torch.gather(first[p.source], 1, kept), rtol=1e-15, atol=0)


def test_channel_importance_is_averaged_across_runs_and_follows_its_channels(scaled):
    pruned = fxprune.prune(scaled, X, "prune-channels{criterion=taylor ratio=0.25 momentum=0.5}", data=batches(1))
    graph = analyse(pruned, (X,))
    owners = [m for m in graph.flow.members if m.role != "in"]
    old = {}
    for m in owners:  # every surviving channel still has the first run's estimate, on every member owning it
        history = stored(pruned.get_submodule(m.path), CHANNELS)
        assert history is not None and len(history) == len(graph.roots(m))
        for root, v in zip(graph.roots(m).tolist(), history.tolist()):
            assert old.setdefault(root, v) == v
    before = taylor(analyse(scaled, (X,)), batches(1))  # what the first run measured, before removal
    assert sorted(old.values())[-3:] == pytest.approx(sorted(before.values())[-3:], rel=1e-12)
    plain = taylor(analyse(pruned, (X,)), batches(2))
    smooth = taylor(graph, batches(2), momentum=0.5)
    assert smooth == pytest.approx({c: 0.5 * old[c] + 0.5 * plain[c] for c in plain}, rel=1e-12, abs=0)


def test_fold_drops_every_running_estimate(scaled):
    pruned = fxprune.prune(scaled, X, "prune-joint{target-params=0.6 momentum=0.9},fold", data=batches(1))
    assert not any(BASES in m.__dict__ or CHANNELS in m.__dict__ for m in pruned.modules())


def test_momentum_needs_taylor(scaled):
    with pytest.raises(PipelineError) as err:
        fxprune.prune(scaled, X, "prune-channels{criterion=l2 ratio=0.2 momentum=0.9}")
    assert str(err.value) == ("prune-channels: momentum smooths taylor importance across runs; criterion=l2 has "
                              "nothing to smooth: drop momentum or use criterion=taylor")
    with pytest.raises(PipelineError) as err:
        fxprune.prune(scaled, X, "prune-joint{target-params=0.5 momentum=1}", data=batches(1))
    assert str(err.value) == "prune-joint: option 'momentum' must be in [0, 1), got 1.0"
