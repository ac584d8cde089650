"""prune-channels: the channel groups on hand-made graphs (exact members and reasons), the lossless
removal of zeroed channels over the smoke zoo, budgets, round-to, double pruning in both orders."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.analysis.counting import total_macs, total_params
from fxprune.analysis.channels import analyse, as_removed, zero
from fxprune.core.api import traced_for_passes
from fxprune.runners.models import create
from fxprune.runners import zoo
from fxprune.runners.zoo import wake

from .conftest import assert_same_state, randomize_bn, state_copy
from .test_zoo import entries

X = torch.randn(2, 3, 8, 8)


def groups_of(model, x=X):
    graph = analyse(fxprune.trace(model.eval()), (x,))
    return {frozenset(g.members): (g.size, g.blocked) for g in graph.groups}


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.b, self.c = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(6 * 8 * 8, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.a(x)))
        x = x + self.b(x)
        return self.head(torch.flatten(self.c(x), 1))


def test_residual_add_couples_layers_and_flatten_feeds_linear():
    assert groups_of(Residual()) == {
        frozenset({("a", "out"), ("bn", "bn"), ("b", "in"), ("b", "out"), ("c", "in")}): (8, None),
        frozenset({("c", "out"), ("head", "in")}): (6, None),
        frozenset({("head", "out")}): (4, "reaches the model output"),
    }


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 5, 1)
        self.dw = nn.Conv2d(9, 9, 3, padding=1, groups=9)
        self.c = nn.Conv2d(18, 2, 1)

    def forward(self, x):
        y = self.dw(torch.cat([self.a(x), self.b(x)], 1))
        return self.c(torch.cat([y, y], 1))  # self-concat: each channel read twice


def test_concat_and_self_concat_and_depthwise():
    assert groups_of(Concat()) == {
        frozenset({("a", "out"), ("dw", "dw"), ("c", "in")}): (4, None),
        frozenset({("b", "out"), ("dw", "dw"), ("c", "in")}): (5, None),
        frozenset({("c", "out")}): (2, "reaches the model output"),
    }


class Gate(nn.Module):
    """An SE gate, a grouped conv (position j of both groups goes together, on its inputs (so a's
    channels pair up) and its outputs, which a chunk pairs the same way) and a LayerNorm over channels
    moved last."""

    def __init__(self):
        super().__init__()
        self.a, self.se1, self.se2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
        self.g, self.n = nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Conv2d(8, 4, 1)
        self.norm, self.d = nn.LayerNorm(4), nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = self.a(x)
        x = x * torch.sigmoid(self.se2(F.relu(self.se1(x.mean((2, 3), keepdim=True)))))
        z = self.norm(self.n(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.d(torch.cat([self.g(x).chunk(2, dim=1)[0], z], 1))


def test_se_gate_grouped_conv_and_layer_norm_couple_channels():
    assert groups_of(Gate()) == {
        frozenset({("a", "out"), ("se1", "in"), ("se2", "out"), ("n", "in"), ("g", "in")}): (4, None),
        frozenset({("se1", "out"), ("se2", "in")}): (2, None),
        frozenset({("g", "out"), ("d", "in")}): (4, None),
        frozenset({("n", "out"), ("norm", "norm"), ("d", "in")}): (4, None),
        frozenset({("d", "out")}): (3, "reaches the model output"),
    }


class SpatialGate(nn.Module):
    """A one-channel attention map broadcast over all channels: not a coupling."""

    def __init__(self):
        super().__init__()
        self.a, self.att, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 1, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        x = self.a(x)
        return self.b(x * torch.sigmoid(self.att(x)))


def test_a_broadcast_channel_is_a_barrier_not_a_coupling():
    assert groups_of(SpatialGate()) == {
        frozenset({("a", "out"), ("att", "in"), ("b", "in")}): (6, None),
        frozenset({("att", "out")}): (1, "mul (mul) broadcasts this one channel over many"),
        frozenset({("b", "out")}): (2, "reaches the model output"),
    }


class Glu(nn.Module):
    """A gated MLP (fc1 -> chunk -> silu(g) * v -> fc2) on channels-last, and a 3-way chunk of
    which one part is used: chunks couple position j of every part."""

    def __init__(self):
        super().__init__()
        self.a, self.fc1, self.fc2 = nn.Conv2d(3, 8, 1), nn.Linear(8, 2 * 6), nn.Linear(6, 8)
        self.odd, self.head = nn.Linear(8, 9), nn.Linear(3, 4)

    def forward(self, x):
        x = self.a(x).permute(0, 2, 3, 1)
        g, v = self.fc1(x).chunk(2, dim=-1)
        x = x + self.fc2(F.silu(g) * v)
        return self.head(self.odd(x).chunk(3, -1)[1].mean((1, 2)))


def test_chunk_couples_position_j_of_every_part():
    assert groups_of(Glu()) == {
        frozenset({("a", "out"), ("fc1", "in"), ("fc2", "out"), ("odd", "in")}): (8, None),
        frozenset({("fc1", "out"), ("fc2", "in")}): (6, None),
        frozenset({("odd", "out"), ("head", "in")}): (3, None),
        frozenset({("head", "out")}): (4, "reaches the model output"),
    }
    small = fxprune.prune(Glu().eval(), X, "prune-channels{ratio=0.5}")
    assert small.get_submodule("fc1").weight.shape == (6, 4)  # 3 of 6 pairs, 4 of 8
    assert small.get_submodule("odd").weight.shape == (3, 4)  # 1 of 3 triples: floor((1 - 0.5) * 3) kept
    assert small.get_submodule("head").weight.shape == (4, 1) and small(X).shape == (2, 4)


def check_zeroed_channels_are_removed_losslessly(model, x, random_weights=True, heads="whole"):
    """Zero half the channels of every prunable group; prune-channels{criterion=l1 ratio=0.5} must
    remove exactly those and leave the outputs as they were, norms over channels computing their
    statistics without them and a conv along channels reading them as 0 (channels.as_removed; the
    model itself where there is neither)."""
    inputs = x if isinstance(x, tuple) else (x,)
    gm = traced_for_passes(model)  # a copy (zeroing must not touch the caller's model), as prune() sees it
    if random_weights:
        wake(gm)
    graph = analyse(gm, inputs, heads)
    chosen = {c for g in graph.prunable for c in g.classes[:g.size - max(1, g.size // 2)]}
    zero(graph, chosen)
    with torch.no_grad():
        reference = as_removed(graph, chosen)(*inputs)
    small = fxprune.prune(gm, inputs, f"prune-channels{{criterion=l1 ratio=0.5 heads={heads}}}", verify=True)
    stats = fxprune.history(small)[-1].stats
    assert stats["channels-before"] - stats["channels-after"] == len(chosen) > 0
    assert total_params(small) < total_params(gm)
    with torch.no_grad():
        torch.testing.assert_close(small(*inputs), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model", [Residual, Concat, Gate, SpatialGate, Glu])
def test_zeroed_channels_are_removed_losslessly_on_hand_made_graphs(model):
    check_zeroed_channels_are_removed_losslessly(randomize_bn(model()), X)


# vit_tiny is checked too: its MLP hidden channels are the groups there
@pytest.mark.parametrize("entry", entries("smoke.toml"))
def test_zeroed_channels_are_removed_losslessly_on_the_smoke_zoo(entry):
    torch.manual_seed(0)
    check_zeroed_channels_are_removed_losslessly(*zoo.example(entry, create(entry.id).eval()))


@pytest.mark.zoo
@pytest.mark.parametrize("entry", entries("torchvision.toml") + entries("timm.toml"))
def test_zeroed_channels_are_removed_losslessly_on_the_full_zoo(entry):
    torch.manual_seed(0)
    check_zeroed_channels_are_removed_losslessly(create(entry.id), torch.randn(1, *entry.input_size))


def test_ratio_round_to_and_the_model_is_not_modified():
    model = randomize_bn(Residual()).eval()
    before = state_copy(model)
    small = fxprune.prune(model, X, "prune-channels{ratio=0.5 round-to=3}")
    assert_same_state(model, before)
    # 8 channels, keep 4 -> rounded up to 6; 6 channels, keep 3
    assert small.get_submodule("b").weight.shape == (6, 6, 3, 3)
    assert small.get_submodule("head").weight.shape == (4, 3 * 64)
    assert small(X).shape == (2, 4)


def test_target_params_is_met_exactly_counted():
    model = create("tv:resnet18").eval()
    x = torch.randn(1, 3, 32, 32)
    small = fxprune.prune(model, x, "prune-channels{target-params=0.5 criterion=l2}")
    assert 0.45 * total_params(model) < total_params(small) <= 0.5 * total_params(model)


@pytest.mark.parametrize("model_id", ["tv:resnet18", "tv:mobilenet_v3_small"])
@pytest.mark.parametrize("before", ["", "decompose-conv,prune-basis{energy=0.9},"])
def test_target_macs_is_met_exactly_counted(model_id, before):
    model = create(model_id).eval()
    x = torch.randn(1, 3, 64, 64)
    start = fxprune.prune(model, x, before + "fold") if before else model
    small = fxprune.prune(model, x, before + "prune-channels{target-macs=0.5 criterion=l2},fold")
    assert 0.4 * total_macs(start, (x,)) < total_macs(small, (x,)) <= 0.5 * total_macs(start, (x,))


@pytest.mark.parametrize("pipeline", [
    "decompose-conv,prune-basis{energy=0.9},prune-channels{ratio=0.3},fold",
    "prune-channels{ratio=0.3},decompose-conv,prune-basis{energy=0.9},fold",
])
def test_double_pruning_in_either_order(pipeline):
    model = create("tv:mobilenet_v3_small").eval()
    x = torch.randn(1, 3, 64, 64)
    channels_only = fxprune.prune(model, x, "prune-channels{ratio=0.3}")
    small = fxprune.prune(model, x, pipeline, verify=True)
    assert small(x).shape == (1, 1000)
    assert total_params(small) < total_params(channels_only) < total_params(model)


def test_taylor_ranks_a_channel_the_loss_ignores_last():
    model = randomize_bn(Residual()).eval()
    with torch.no_grad():
        model.head.weight.view(4, 6, 64)[:, 2] = 0  # c's channel 2 never reaches the loss
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))) for _ in range(3)]
    small = fxprune.prune(model, X, "prune-channels{criterion=taylor ratio=0.15}", data=data)
    kept = small.get_submodule("c").weight[:, :, 0, 0]
    assert kept.shape[0] == 5  # floor(0.85 * 6) kept
    assert not any(torch.equal(row, model.c.weight[2, :, 0, 0]) for row in kept)


@pytest.mark.parametrize("text, message", [
    ("prune-channels{ratio=1}", "option 'ratio' must be in [0, 1), got 1.0"),
    ("prune-channels{ratio=0.2 target-params=0.5}",
     "give one of ratio, target-params, target-macs, target-latency, not ratio and target-params"),
    ("prune-channels{round-to=0}", "option 'round-to' must be at least 1, got 0"),
    ("prune-channels{criterion=taylor}", "criterion=taylor needs data"),
])
def test_bad_options_are_named(text, message):
    with pytest.raises(fxprune.PipelineError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        fxprune.prune(Residual(), X, text)


def test_bases_of_decomposed_layers_are_left_to_prune_basis():
    gm = fxprune.prune(randomize_bn(Residual()), X, "decompose-conv,insert-scaling")
    groups = analyse(gm, (X,)).groups
    bases = [g for g in groups if any(path.endswith(".basis") and role == "out" for path, role in g.members)]
    # the head trains, so insert-scaling merged its full-rank pair back into one Linear
    assert {path for g in bases for path, _ in g.members if path.endswith(".basis")} == {"a.basis", "b.basis", "c.basis"}
    assert {g.blocked for g in bases} == {"bases of a decomposed layer (prune-basis prunes them)"}



class Shared(nn.Module):
    """A conv used twice, and a Linear whose weight the forward also reads directly."""

    def __init__(self):
        super().__init__()
        self.a, self.twice, self.fc = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Linear(4, 4)

    def forward(self, x):
        y = self.twice(self.twice(self.a(x))).mean((2, 3))
        return self.fc(y) + self.fc.weight.sum()


def test_shared_modules_and_weights_read_directly_are_kept():
    # twice's input and output channels are one class (call 2 reads what call 1 wrote): fc's input blocks it
    reason = "the graph reads the weights of fc directly"
    assert groups_of(Shared()) == {frozenset({("a", "out"), ("twice", "in"), ("twice", "out")}): (4, reason),
                                   frozenset({("fc", "out")}): (4, reason)}


class SharedBranches(nn.Module):
    """CoaT's shared MLP: one conv (and BN) applied to two branches, whose channels become one class."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 3, padding=1)
        self.shared, self.bn, self.head = nn.Conv2d(6, 5, 1), nn.BatchNorm2d(5), nn.Linear(5, 2)

    def forward(self, x):
        return self.head((self.bn(self.shared(self.a(x))) + self.bn(self.shared(self.b(x)))).mean((2, 3)))


class SharedOnTheImage(nn.Module):
    """A conv applied to the image and to a layer's output: the layer's channels cannot go."""

    def __init__(self):
        super().__init__()
        self.a, self.shared, self.head = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 4, 1), nn.Linear(4, 2)

    def forward(self, x):
        return self.head((self.shared(x) + self.shared(self.a(x))).mean((2, 3)))


def test_a_module_called_on_several_branches_unites_their_channels_and_prunes_losslessly():
    x = torch.randn(2, 3, 5, 5)
    assert groups_of(SharedBranches(), x) == {
        frozenset({("a", "out"), ("b", "out"), ("shared", "in")}): (6, None),
        frozenset({("shared", "out"), ("bn", "bn"), ("head", "in")}): (5, None),
        frozenset({("head", "out")}): (2, "reaches the model output")}
    check_zeroed_channels_are_removed_losslessly(randomize_bn(SharedBranches()), x)
    assert groups_of(SharedOnTheImage(), x)[frozenset({("a", "out")})] == (
        3, "module shared is called 2 times, not always on channels the analysis follows")


class Video(nn.Module):
    """r3d-style: torchvision's Conv3DSimple (a Conv3d subclass with torch's forward), BatchNorm3d, a residual."""

    def __init__(self):
        super().__init__()
        from torchvision.models.video.resnet import Conv3DSimple

        self.stem = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU())
        self.a, self.bn = Conv3DSimple(8, 12, 12), nn.BatchNorm3d(12)
        self.b = Conv3DSimple(12, 8, 12)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.b(torch.relu(self.bn(self.a(x))))
        return self.fc(nn.functional.adaptive_avg_pool3d(x, 1).flatten(1))


def test_video_nets_have_channel_groups_and_prune_losslessly_where_zeroed():
    model = randomize_bn(Video()).eval()
    x = torch.randn(1, 3, 4, 8, 8)
    graph = analyse(fxprune.trace(model), (x,))
    assert sorted(g.size for g in graph.prunable) == [8, 12]
    check_zeroed_channels_are_removed_losslessly(model, x, random_weights=False)
    small = fxprune.prune(model, x, "prune-channels{ratio=0.5},decompose-conv,fold", verify=True)
    assert small.a.out_channels == 6 and small(x).shape == (1, 5)


def test_groups_asks_for_the_input_rank_in_one_line(capsys):
    from fxprune.runners.cli import main

    assert main(["groups", "tv:r3d_18", "--input-size", "3,64,64"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxprune: error: tv:r3d_18 does not run on an input of shape (1, 3, 64, 64) (RuntimeError: ")
    assert err.endswith("give --input-size, e.g. 3,224,224 for images or 3,16,112,112 for video (C,T,H,W)\n")
