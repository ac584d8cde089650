"""Latency budgets: layer shapes as fold leaves them, the on-disk table, target-latency with a fake timer."""

import json

import pytest
import torch
from torch import nn

import fxprune
from fxprune.analysis.counting import propagate_shapes
from fxprune.analysis.latency import LatencyTable
from fxprune.analysis.layer_shapes import Layer, folded_layers
from fxprune.core.errors import PipelineError
from fxprune.core.lowrank import find_pairs
from fxprune.nn import BasisScalingConv

X = torch.randn(1, 3, 8, 8)


class Net(nn.Module):
    """conv 3->16 3x3, depthwise 16 3x3 stride 2, conv 16->32 1x1, mean, Linear 32->10."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.stem(x))))
        return self.fc(torch.relu(self.pw(x)).mean((2, 3)))


def fake_timer(calls: list | None = None, per_layer: float = 0.0):
    """Seconds = 1e-6 per weight of every conv/linear in the module (+ `per_layer` each), plus 1e-4
    for a whole model."""
    def timer(module, inputs):
        if calls is not None:
            calls.append(module)
        layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear, BasisScalingConv))]
        whole = not isinstance(module, (nn.Conv2d, nn.Linear))
        return sum(1e-6 * m.weight.numel() + per_layer for m in layers) + (1e-4 if whole else 0.0)
    return timer


def test_layers_are_listed_as_fold_leaves_them():
    gm = fxprune.prune(Net(), X, "decompose-conv")
    propagate_shapes(gm, (X,))
    keys = [layer.key() for layer in folded_layers(gm)]
    assert keys == [  # at full rank no pair pays (r(m + n) >= mn): each is listed merged back
        "Conv2d in=1x3x8x8 out=16 k=(3, 3) s=(1, 1) p=(1, 1) d=(1, 1) g=1 bias=1",
        "Conv2d in=1x16x8x8 out=16 k=(3, 3) s=(2, 2) p=(1, 1) d=(1, 1) g=16 bias=1",  # not decomposed
        "Conv2d in=1x16x4x4 out=32 k=(1, 1) s=(1, 1) p=(0, 0) d=(1, 1) g=1 bias=1",
        "Linear in=1x32 out=10 k=() s=() p=() d=() g=1 bias=1"]
    half = {"dw": {"out": 0.5}, "pw.basis": {"in": 0.5}}  # as channels.kept_shares gives a depthwise conv
    cut = folded_layers(gm, half, {"pw": 4})  # pw at rank 4 pays: 4 x (32 + 8) < 32 x 8
    assert [(layer.kind, layer.channels, layer.out, layer.groups, layer.inp[2:]) for layer in cut] == [
        ("Conv2d", 3, 16, 1, (8, 8)), ("Conv2d", 8, 8, 8, (8, 8)), ("Conv2d", 8, 4, 1, (4, 4)),
        ("Conv2d", 4, 32, 1, (4, 4)), ("Linear", 32, 10, 1, ())]


@pytest.mark.parametrize("layer", [
    Layer("Conv2d", (2, 6, 9, 7), 4, (3, 3), (2, 1), (1, 0), (1, 2), 2, True),
    Layer("Conv1d", (1, 5, 11), 3, (2,), (3,), "valid", (1,), 1, False),
    Layer("Linear", (2, 7, 5), 3)])
def test_output_shape_is_what_the_layer_computes(layer):
    module, x = layer.build()
    assert tuple(module(x).shape) == layer.output_shape()


def test_table_is_cached_on_disk_per_torch_version(tmp_path, monkeypatch):
    layer = Layer("Linear", (1, 32), 10)
    calls = []
    table = LatencyTable(timer=fake_timer(calls), cache_dir=tmp_path)
    assert table.layer(layer) == pytest.approx(320e-6) and len(calls) == 1
    table.layer(layer)
    assert len(calls) == 1  # measured once
    table.save()
    saved = json.loads(table.path.read_text())
    assert saved["header"]["torch"] == torch.__version__ and list(saved["times"]) == [layer.key()]
    again = LatencyTable(timer=fake_timer(calls), cache_dir=tmp_path)
    assert again.layer(layer) == pytest.approx(320e-6) and len(calls) == 1  # read from disk, not timed
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    other = LatencyTable(timer=fake_timer(calls), cache_dir=tmp_path)
    assert other.path != table.path and other.times == {}
    other.path = table.path  # even a file of the same name written under another torch is not read
    assert other._load() == {}
    other.layer(layer)
    assert len(calls) == 2


def test_target_latency_is_met_as_the_timer_measures_it(tmp_path):
    table = LatencyTable(timer=fake_timer(), cache_dir=tmp_path)
    model = Net()
    small = fxprune.prune(model, X, "prune-channels{target-latency=0.5},fold", latency=table)
    before, after = table.model(fxprune.trace(model), (X,)), table.model(small, (X,))
    assert after <= 0.5 * before
    stats = fxprune.history(small)[-2].stats
    assert stats["latency-ms"] == pytest.approx(before * 1e3, abs=1e-3)
    assert stats["latency-ms-after"] == pytest.approx(after * 1e3, abs=1e-3)
    assert table.path.exists()


def test_latency_options_are_checked():
    with pytest.raises(PipelineError, match=r"give one of ratio, target-params, target-macs, target-latency, "
                                            r"not target-params and target-latency"):
        fxprune.prune(Net(), X, "prune-channels{target-params=0.5 target-latency=0.5}")
    with pytest.raises(PipelineError, match=r"unknown context 'latency'"):
        fxprune.prune(Net(), X, "prune-channels{target-params=0.5}", latency=LatencyTable(persist=False))


@pytest.mark.parametrize("per_layer, merged", [(0.0, 0), (5e-3, 1)])
def test_fold_merges_a_pair_that_is_slower_than_one_layer(per_layer, merged):
    """conv 16->32 3x3 cut to rank 13: 13 x (144 + 32) weights < 32 x 144, so it pays in params; with
    5 ms per layer its two layers (2.3 + 10 ms) are slower than one (4.6 + 5 ms) and fold merges it."""
    x = torch.randn(1, 16, 8, 8)
    gm = fxprune.prune(nn.Sequential(nn.Conv2d(16, 32, 3)), x, "decompose-conv,prune-basis{target-params=0.5}")
    assert [p.rank for p in find_pairs(gm)] == [13]
    table = LatencyTable(timer=fake_timer(per_layer=per_layer), persist=False)
    out = fxprune.prune(gm, x, "fold{merge=latency}", latency=table)
    assert fxprune.history(out)[-1].stats == {"scales-folded": 0, "bn-folded": 0, "pairs-merged": merged,
                                             "pairs-kept": 1 - merged, "pairs-merged-slower": merged}
    torch.testing.assert_close(out(x), gm(x), rtol=1e-5, atol=1e-5)


def test_prune_basis_meets_a_latency_budget_on_candidate_ranks():
    """One conv 16->32 3x3 decomposed (rank 32, 16 candidate ranks: multiples of 2; the budget counts it merged
    back, as fold would leave it at full rank, not as the slower pair it is now). Fake seconds = 1e-6 per
    weight: merged 4608; a pair pays below rank 26 (r x 176 < 4608). Keeping 0.3 of the time
    (0.1 ms whole-model overhead + 4.608 ms of layers: 1.4124 ms) needs r x 176 <= 1312, rank 6 on
    the grid (1056 weights: 1.156 ms)."""
    x = torch.randn(1, 16, 8, 8)
    gm = fxprune.prune(nn.Sequential(nn.Conv2d(16, 32, 3)), x, "decompose-conv")
    table = LatencyTable(timer=fake_timer(), persist=False)
    out = fxprune.prune(gm, x, "prune-basis{target-latency=0.3},fold", latency=table)
    assert [p.rank for p in find_pairs(out)] == [6]
    stats = fxprune.history(out)[-2].stats
    assert stats["latency-ms"] == pytest.approx(4.708) and stats["latency-ms-after"] == pytest.approx(1.156)


def test_prune_joint_meets_a_latency_budget():
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    gm = fxprune.prune(Net(), x, "decompose-conv,insert-scaling")
    table = LatencyTable(timer=fake_timer(), persist=False)
    before = table.model(fxprune.prune(gm, x, "fold"), (x,))
    out = fxprune.prune(gm, x, "prune-joint{target-latency=0.5},fold", data=[(x, y)], latency=table)
    after = table.model(out, (x,))
    assert after <= 0.5 * before
    stats = fxprune.history(out)[-2].stats  # both kinds of cut were taken
    assert stats["channels-after"] < stats["channels-before"] and stats["bases-after"] < stats["bases-before"]


def test_measured_copies_correct_a_prediction_that_holds_the_rest_fixed():
    """The timer charges the whole model 20 us per channel a conv writes (activations), which the
    layer table cannot see: held fixed, that rest (1.28 of 2.69 ms) would force every group to its
    minimum for half the time. The measured search stops at half the time instead."""
    def timer(module, inputs):
        layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        t = sum(1e-6 * m.weight.numel() for m in layers)
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            t += sum(2e-5 * m.out_channels for m in layers if isinstance(m, nn.Conv2d))
        return t
    table = LatencyTable(timer=timer, persist=False)
    model = Net()
    before = table.model(fxprune.trace(model), (X,))
    small = fxprune.prune(model, X, "prune-channels{target-latency=0.5},fold", latency=table)
    assert 0.45 * before <= table.model(small, (X,)) <= 0.5 * before
    assert fxprune.history(small)[-2].stats["channels-after"] > 2 + 1  # stem/dw and pw groups above 1 each


def test_a_model_without_weights_gets_the_cpu_table(tmp_path, monkeypatch):
    from fxprune.analysis.latency import table_for

    monkeypatch.setenv("FXPRUNE_CACHE", str(tmp_path))
    table = table_for(None, nn.ReLU())
    assert table.device == torch.device("cpu") and table.path.parent == tmp_path / "latency"
    given = LatencyTable(persist=False)
    assert table_for(given, nn.ReLU()) is given


def test_prune_iteratively_until_latency_steps_by_measured_time():
    """until='latency=0.5', step 0.2: every step keeps at most 0.8 of the time the step before took,
    as the timer measures the model folded, and the run stops at the first step within half."""
    table = LatencyTable(timer=fake_timer(), persist=False)
    torch.manual_seed(0)
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))) for _ in range(2)]
    gm = fxprune.prune(Net(), X, "decompose-conv,insert-scaling")
    search = fxprune.prune_iteratively(gm, X, data=data, prune_what="channels", step=0.2,
                                       until="latency=0.5", latency=table, progress=False)
    small, history = search.model, search.history
    kept = [row["latency_kept"] for row in history]
    assert history[-1]["phase"] == "settle" and history[-1]["latency_ms"] == history[-2]["latency_ms"]
    kept = kept[:-1]  # the settling try retrains the last step: the same architecture
    assert kept[0] == 1.0 and kept[-1] <= 0.5 < kept[-2]
    assert all(b <= 0.8 * a + 1e-9 for a, b in zip(kept, kept[1:]))
    folded = fxprune.prune(small, X, "fold")
    assert history[-1]["latency_ms"] == pytest.approx(table.model(folded, (X,)) * 1e3)
    assert history[-1]["latency_ms"] == pytest.approx(kept[-1] * history[0]["latency_ms"])
