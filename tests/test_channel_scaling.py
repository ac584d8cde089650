"""insert-channel-scaling and prune-channels{criterion=scale}: scales are inserted where channels
can be pruned (exact places and sizes), change nothing until trained, are the only backbone
weights train_scaling moves, rank channels for pruning, and fold away exactly."""

import pytest
import torch

import fxprune
from fxprune.runners.models import create
from fxprune.nn import ChannelScaling
from fxprune.core.verify import output_error
from fxprune.runners import zoo
from fxprune.runners.zoo import wake

from .conftest import randomize_bn
from .test_channels import X, Residual
from .test_zoo import entries


def scaled(model, x=X):
    return fxprune.prune(randomize_bn(model).eval(), x, "insert-channel-scaling", verify=True)


def scales(gm) -> dict[str, torch.Tensor]:
    return {name: m.weight for name, m in gm.named_modules() if isinstance(m, ChannelScaling)}


def test_scales_sit_after_every_prunable_producer_and_only_they_and_the_head_train():
    model = randomize_bn(Residual()).eval()
    gm = scaled(model)
    # groups: {a, bn, b, c-in} (8 channels, produced by a and b), {c, head-in} (6); head reaches the output
    assert {k: v.numel() for k, v in scales(gm).items()} == {"a_channel_scale": 8, "b_channel_scale": 8,
                                                             "c_channel_scale": 6}
    trainable = {n for n, p in gm.named_parameters() if p.requires_grad}
    assert trainable == {"a_channel_scale.weight", "b_channel_scale.weight", "c_channel_scale.weight",
                         "head.weight", "head.bias"}
    assert fxprune.history(gm)[-1].stats == {"channel-scales-inserted": 3, "trained-pairs-merged": 0,
                                             "trainable-params": 22 + 6 * 64 * 4 + 4}
    with torch.no_grad():
        torch.testing.assert_close(gm(X), model(X), rtol=0, atol=0)


def test_scale_criterion_removes_the_smallest_scales_and_fold_folds_them_exactly():
    gm = scaled(Residual())
    with torch.no_grad():
        s = scales(gm)
        s["c_channel_scale"].copy_(torch.tensor([0.1, 2.0, 0.05, 3.0, 1.0, 0.2]))
        s["a_channel_scale"].copy_(torch.tensor([1.0, 0.0, 1.0, 0.1, 1.0, 1.0, 0.3, 1.0]))
        s["b_channel_scale"].copy_(torch.tensor([1.0, 0.2, 1.0, 0.1, 1.0, 0.9, 0.1, 1.0]))  # means: 1, .1, ...
    pruned = fxprune.prune(gm, X, "prune-channels{criterion=scale ratio=0.5}")
    small = fxprune.prune(pruned, X, "fold")
    assert not scales(small)
    c = gm.get_submodule("c")
    keep_c, keep_ab = [1, 3, 4], [0, 2, 4, 7]  # the larger half of |s| (a and b averaged)
    torch.testing.assert_close(small.get_submodule("c").weight,
                               (c.weight * s["c_channel_scale"].view(-1, 1, 1, 1))[keep_c][:, keep_ab])
    with torch.no_grad():
        torch.testing.assert_close(small(X), pruned(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("entry", entries("smoke.toml"))
def test_trained_scales_fold_away_exactly_on_the_smoke_zoo(entry):
    model, x = zoo.example(entry, wake(create(entry.id)).eval())
    gm = fxprune.prune(model, x, "insert-channel-scaling")
    assert fxprune.history(gm)[-1].stats["channel-scales-inserted"] > 0
    with torch.no_grad():
        for s in scales(gm).values():
            s.uniform_(0.0, 2.0)  # as training might leave them
        reference = gm(*x)
    small = fxprune.prune(gm, x, "fold")
    assert not scales(small)
    with torch.no_grad():
        assert output_error(small(*x), reference).rel_l2 < 1e-5


def test_train_scaling_moves_channel_scales_and_head_only_and_l1_shrinks_the_scales():
    gm = scaled(Residual())
    frozen = gm.get_submodule("a").weight.clone()
    data = [(torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))) for _ in range(4)]
    fxprune.train_scaling(gm, data, epochs=3, lr=0.05, l1=1.0, progress=False)
    torch.testing.assert_close(gm.get_submodule("a").weight, frozen, rtol=0, atol=0)
    assert all(s.detach().abs().mean() < 0.9 for s in scales(gm).values())


def test_scale_criterion_without_scales_says_what_to_run():
    with pytest.raises(fxprune.PipelineError, match=r"prune-channels: criterion=scale needs channel scales: run "
                                                r"insert-channel-scaling"):
        fxprune.prune(Residual().eval(), X, "prune-channels{criterion=scale}")
