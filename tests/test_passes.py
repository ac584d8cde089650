import pytest
import torch
from torch import nn

import fxprune
from fxprune.analysis.counting import total_macs, total_params
from fxprune.core.lowrank import find_pairs
from fxprune.core.meta import ROLE, SOURCE

from .conftest import assert_same_state, randomize_bn, state_copy

X = torch.randn(2, 3, 16, 16)


def test_decompose_conv_splits_every_layer_that_can_gain(tiny):
    gm = fxprune.prune(tiny, X, "decompose-conv")
    stats = fxprune.history(gm)[-1].stats
    assert stats == {"convs-decomposed": 3, "linears-decomposed": 1, "depthwise-skipped": 1,
                     "no-gain-skipped": 0, "weights-read-skipped": 0, "tied-skipped": 0}
    pairs = {p.source: p for p in find_pairs(gm)}
    assert sorted(pairs) == ["grouped", "head", "pw", "stem"]
    assert isinstance(gm.get_submodule("dw"), nn.Conv2d)  # depthwise: rank 1 per group, left alone
    g = pairs["grouped"]
    assert (g.groups, g.m, g.n, g.rank) == (4, 8, 36, 8)
    assert gm.get_submodule("grouped.basis").groups == 4 and gm.get_submodule("grouped.coef").groups == 4
    for p in pairs.values():  # the basis filters are orthonormal rows of V^T, per group
        v = p.basis_matrix()
        torch.testing.assert_close(v @ v.transpose(1, 2), torch.eye(p.rank).expand(p.groups, -1, -1),
                                   rtol=0, atol=1e-6)
        assert p.basis.bias is None
    assert gm.get_submodule("stem.coef").bias is None and gm.get_submodule("pw.coef").bias is not None
    with torch.no_grad():
        torch.testing.assert_close(gm(X), tiny(X), rtol=1e-5, atol=1e-6)


def test_decompose_conv_can_leave_linear_layers(tiny):
    gm = fxprune.prune(tiny, X, "decompose-conv{linear=false}")
    assert fxprune.history(gm)[-1].stats["linears-decomposed"] == 0
    assert type(gm.get_submodule("head")) is nn.Linear


def test_nodes_record_role_and_original_path(tiny):
    gm = fxprune.prune(tiny, X, "decompose-conv")
    roles = {n.target: (n.meta[ROLE], n.meta[SOURCE]) for n in gm.graph.nodes if ROLE in n.meta}
    assert roles["stem.basis"] == ("basis", "stem") and roles["stem.coef"] == ("coef", "stem")


def test_decompose_twice_leaves_pairs_alone(tiny):
    gm = fxprune.prune(tiny, X, "decompose-conv,decompose-conv")
    assert fxprune.history(gm)[-1].stats["convs-decomposed"] == 0
    assert len(find_pairs(gm)) == 4


class LowRank(nn.Module):
    """One conv with singular values 10, 1, 0.1, 0.01 (and zeros): the kept rank is predictable."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 6, 3, padding=1)
        u, _ = torch.linalg.qr(torch.randn(6, 6))
        v, _ = torch.linalg.qr(torch.randn(72, 6))
        s = torch.tensor([10.0, 1.0, 0.1, 0.01, 0.0, 0.0])
        self.conv.weight.data = (u @ torch.diag(s) @ v.T).reshape(6, 8, 3, 3)

    def forward(self, x):
        return self.conv(x)


# energy=1 still drops the two zero singular values: they carry no energy at all
@pytest.mark.parametrize("energy, rank", [(0.95, 1), (0.995, 2), (0.99999, 3), (1.0, 4)])
def test_prune_basis_keeps_the_smallest_rank_reaching_the_energy(energy, rank):
    model = LowRank()
    gm = fxprune.prune(model, torch.randn(1, 8, 8, 8), f"decompose-conv,prune-basis{{energy={energy}}}")
    assert find_pairs(gm)[0].rank == rank


def test_prune_basis_equals_the_truncated_svd():
    model = LowRank()
    x = torch.randn(1, 8, 8, 8)
    gm = fxprune.prune(model, x, "decompose-conv,prune-basis{energy=0.995}")
    w = model.conv.weight.detach().reshape(6, -1)
    u, s, vh = torch.linalg.svd(w.double())
    truncated = nn.Conv2d(8, 6, 3, padding=1)
    truncated.weight.data = (u[:, :2] * s[:2] @ vh[:2]).float().reshape(6, 8, 3, 3)
    truncated.bias.data = model.conv.bias.data
    with torch.no_grad():
        torch.testing.assert_close(gm(x), truncated(x), rtol=1e-5, atol=1e-5)


def test_prune_basis_respects_min_rank():
    gm = fxprune.prune(LowRank(), torch.randn(1, 8, 8, 8), "decompose-conv,prune-basis{energy=0.5 min-rank=3}")
    assert find_pairs(gm)[0].rank == 3


@pytest.mark.parametrize("option, count", [("target-params", total_params), ("target-macs", total_macs)])
@pytest.mark.parametrize("target", [0.3, 0.6])
def test_global_budget_is_met_after_fold(option, count, target):
    from fxprune.runners.models import create

    model = create("tv:resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    gm = fxprune.prune(model, x, f"decompose-conv,prune-basis{{{option}={target}}},fold")
    measure = (lambda m: count(m)) if count is total_params else (lambda m: count(m, (x,)))
    # fold also removes the BatchNorm parameters, so the budget is met with a little room
    assert measure(gm) <= target * measure(model)
    assert measure(gm) >= (target - 0.05) * measure(model)


def test_unreachable_budget_warns_and_prunes_to_min_rank(tiny):
    with pytest.warns(UserWarning, match="the budget cannot be reached with min-rank=1"):
        gm = fxprune.prune(tiny, X, "decompose-conv,prune-basis{target-params=0.01}")
    assert fxprune.history(gm)[-1].stats["budget-reached"] is False
    assert all(p.rank == 1 for p in find_pairs(gm))


def test_fold_at_full_rank_is_lossless_and_plain(tiny):
    gm = fxprune.prune(tiny, X, "decompose-conv,fold", verify=True)
    assert fxprune.history(gm)[-1].stats == {"scales-folded": 0, "bn-folded": 1, "pairs-merged": 4,
                                                "pairs-kept": 0}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    assert {type(m).__module__.split(".")[0] for m in gm.modules()} == {"torch"}
    with torch.no_grad():
        torch.testing.assert_close(gm(X), tiny(X), rtol=1e-5, atol=1e-5)


def test_fold_keeps_pairs_that_pay_and_merges_the_others():
    model = LowRank()
    x = torch.randn(1, 8, 8, 8)
    gm = fxprune.prune(model, x, "decompose-conv,prune-basis{energy=0.995},fold")
    assert fxprune.history(gm)[-1].stats["pairs-kept"] == 1  # rank 2: 2*(72+6) < 6*72
    gm = fxprune.prune(model, x, "decompose-conv,fold")  # rank 6: 6*(72+6) >= 6*72
    assert fxprune.history(gm)[-1].stats["pairs-merged"] == 1
    assert type(gm.get_submodule("conv")) is nn.Conv2d


def test_fold_folds_timm_batchnormact_and_keeps_its_activation():
    from fxprune.runners.models import create

    model = randomize_bn(create("timm:efficientnet_b0")).eval()
    x = torch.randn(1, 3, 64, 64)
    gm = fxprune.prune(model, x, "fold")
    assert fxprune.history(gm)[-1].stats["bn-folded"] == 49
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in gm.modules())
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-5)


def test_fold_computes_batchnorm_in_float64_and_rounds_once():
    """BatchNorm's scale and shift come from float64: the bias is the float64 fold rounded once, each
    weight its float32 weight times its channel's rounded scale (within 2 float32 roundings of the
    exact fold); torch's float32 fold rounds at each step and lands further off."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16)).eval()
    bn = model[1]
    bn.running_var.copy_(torch.logspace(-6, 3, 16))
    bn.running_mean.normal_(0, 10)
    bn.weight.data.normal_(0, 3)
    gm = fxprune.prune(model, torch.randn(1, 8, 8, 8), "fold")
    folded = gm.get_submodule("0")
    wide = [None if t is None else t.detach().double()
            for t in (model[0].weight, model[0].bias, bn.running_mean, bn.running_var, bn.weight, bn.bias)]
    w64, b64 = fuse_conv_bn_weights(*wide[:4], bn.eps, *wide[4:])
    assert torch.equal(folded.bias, b64.float())
    assert ((folded.weight.double() - w64).abs() <= 2 * 2**-24 * w64.abs()).all()
    w32, _ = fuse_conv_bn_weights(model[0].weight, model[0].bias, bn.running_mean, bn.running_var, bn.eps,
                                  bn.weight, bn.bias)
    assert (w32.double() - w64).norm() > (folded.weight.double() - w64).norm()


def test_fold_leaves_training_mode_batchnorm_alone(tiny):
    gm = fxprune.trace(tiny).train()
    from fxprune.core.manager import PassManager
    from fxprune.core.pass_base import PassContext

    out = PassManager("fold").run(gm, PassContext((X,)))
    assert fxprune.history(out)[-1].stats["bn-folded"] == 0


def test_the_users_model_is_never_changed(tiny):
    before = state_copy(tiny)
    gm = fxprune.prune(tiny, X, "decompose-conv,prune-basis{energy=0.8},fold")
    assert_same_state(tiny, before)
    assert type(tiny.stem) is nn.Conv2d and tiny.training is False
    gm2 = fxprune.prune(gm, X, "decompose-conv,fold")  # a GraphModule input is not changed either
    assert len(fxprune.history(gm)) == 3 and len(fxprune.history(gm2)) == 5


def test_prune_continues_from_an_earlier_call(tiny):
    gm = fxprune.prune(tiny, X, "decompose-conv")
    small = fxprune.prune(gm, X, "prune-basis{energy=0.9},fold")
    assert [r.name for r in fxprune.history(small)] == ["decompose-conv", "prune-basis", "fold"]
    with pytest.raises(fxprune.PipelineError, match="prune-basis must come after decompose-conv"):
        fxprune.prune(tiny, X, "prune-basis,fold")


def test_verify_names_the_pass_that_broke_equivalence(tiny):
    from fxprune.core.pass_base import FxPass, PassResult

    class Breaks(FxPass):
        name, summary, lossless = "breaks", "test pass", True

        def run(self, gm, ctx):
            gm.get_submodule("head").bias.data += 1
            return PassResult(gm, True)

    with pytest.raises(fxprune.VerificationError, match=r"after pass breaks: outputs changed \(max abs error"):
        fxprune.prune(tiny, X, [Breaks()], verify=True)


def test_a_failing_pass_is_named_with_the_passes_before_it(tiny):
    from fxprune.core.pass_base import FxPass

    class Crashes(FxPass):
        name, summary, lossless = "crashes", "test pass", True

        def run(self, gm, ctx):
            raise RuntimeError("boom")

    with pytest.raises(fxprune.PassError, match=r"pass crashes failed: RuntimeError: boom \(passes before it: "
                                               r"decompose-conv\)"):
        fxprune.prune(tiny, X, [fxprune.Pipeline.parse("decompose-conv").passes[0], Crashes()])


def test_unknown_context_is_refused(tiny):
    with pytest.raises(fxprune.PipelineError, match="unknown context 'data': the passes of 'decompose-conv,fold' "
                                                    "read no context"):
        fxprune.prune(tiny, X, "decompose-conv,fold", data=[1])


def test_bad_example_inputs_are_refused(tiny):
    with pytest.raises(TypeError, match="example_inputs must be a tensor or a tuple of tensors, got dict"):
        fxprune.prune(tiny, {"x": X})


def test_global_budget_cuts_where_least_importance_is_lost_per_param():
    net = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64)).eval()
    with torch.no_grad():  # layer 0 is rank 4 plus noise; layer 1 has a flat spectrum
        net[0].weight.copy_(torch.randn(64, 4) @ torch.randn(4, 64) + 1e-3 * torch.randn(64, 64))
    x = torch.randn(2, 64)
    small = fxprune.prune(net, x, "decompose-conv,prune-basis{target-params=0.75},fold")
    # 8,320 params -> at most 6,240: layer 0 as a pair of rank r costs 128 r + 64, so r <= 15
    assert total_params(small) <= 0.75 * total_params(net)
    assert type(small.get_submodule("1")) is nn.Linear  # the flat layer is left whole
    assert 4 <= small.get_submodule("0.basis").weight.shape[0] <= 15  # the finishing cut keeps the most
