import copy
import math

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

import fxprune
from fxprune.analysis.counting import is_counted
from fxprune.core.lowrank import find_pairs
from fxprune.core.verify import output_error
from fxprune.runners import zoo
from fxprune.runners.models import create
from fxprune.nn import BasisScalingConv

from .conftest import assert_same_state, randomize_bn, state_copy
from .test_zoo import entries

X = torch.randn(2, 3, 16, 16)


def batches(n=4, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(size, 3, 16, 16, generator=g)
        out.append((x, (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()))
    return out


@pytest.mark.parametrize("entry", entries("smoke.toml"))
def test_insert_scaling_is_lossless_and_leaves_only_scales_and_head_trainable(entry):
    model, x = zoo.example(entry, create(entry.id).eval())
    gm = fxprune.prune(model, x, "decompose-conv,insert-scaling", verify=True)
    with torch.no_grad():
        assert output_error(gm(*x), model(*x)).rel_l2 < 1e-5
    traced = fxprune.trace(model)
    head = [n.target for n in traced.graph.nodes
            if n.op == "call_module" and is_counted(traced.get_submodule(n.target))][-1]
    trainable = {n for n, p in gm.named_parameters() if p.requires_grad}
    scales = {n for n in trainable if n.endswith(".scale")}
    assert len(scales) == len(find_pairs(gm)) > 0
    assert trainable - scales == {n for n, _ in gm.get_submodule(head).named_parameters(prefix=head)} - scales


def test_insert_scaling_train_option(tiny):
    gm = fxprune.prune(tiny, X, "decompose-conv,insert-scaling{train=none}")
    assert all(n.endswith(".scale") for n, p in gm.named_parameters() if p.requires_grad)
    gm = fxprune.prune(tiny, X, "decompose-conv,insert-scaling{train=dw,bn}")
    assert {n for n, p in gm.named_parameters() if p.requires_grad and not n.endswith(".scale")} == {
        "dw.weight", "dw.bias", "bn.weight", "bn.bias"}
    with pytest.raises(fxprune.PipelineError, match="insert-scaling: option 'train' names 'nope', which is not a "
                                                    "module of this model"):
        fxprune.prune(tiny, X, "decompose-conv,insert-scaling{train=nope}")


def test_train_scaling_moves_only_scales_and_head_and_not_bn_statistics(tiny):
    gm = fxprune.prune(tiny, X, "decompose-conv,insert-scaling")
    frozen = {k: v.clone() for k, v in gm.state_dict().items() if not k.endswith(".scale") and "head" not in k}
    data = batches()
    hist = fxprune.train_scaling(gm, data, epochs=4, lr=0.05, val_data=data, progress=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert 0 <= hist[-1]["val_accuracy"] <= 1
    for k, v in frozen.items():
        assert torch.equal(gm.state_dict()[k], v), f"{k} moved"
    assert any(not torch.all(m.scale == 1) for m in gm.modules() if isinstance(m, BasisScalingConv))
    small = fxprune.prune(gm, X, "fold")  # the trained scales fold into plain weights
    assert not any(isinstance(m, BasisScalingConv) for m in small.modules())
    with torch.no_grad():
        torch.testing.assert_close(small(X), gm(X), rtol=1e-4, atol=1e-5)


def test_train_scaling_needs_something_to_train(tiny):
    with pytest.raises(ValueError, match="nothing requires grad; run the 'decompose-conv,insert-scaling'"):
        fxprune.train_scaling(fxprune.prune(tiny, X, "fold").requires_grad_(False), batches())


def _lrs_of_each_step(run) -> list[float]:
    """The learning rate of every optimizer step `run()` takes."""
    seen = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    try:
        run()
    finally:
        hook.remove()
    return seen


def test_train_scaling_schedules(tiny):
    gm = fxprune.prune(tiny, X, "decompose-conv,insert-scaling")
    data = batches(3)  # 3 batches a pass, 2 passes: a cosine step per batch, 6 in all, the last at lr * 0.067
    lrs = _lrs_of_each_step(lambda: fxprune.train_scaling(gm, data, epochs=2, lr=0.1, progress=False))
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * k / 6)) for k in range(6)], rel=1e-12)
    lrs = _lrs_of_each_step(lambda: fxprune.train_scaling(gm, data, epochs=2, lr=0.1, schedule="constant",
                                                          progress=False))
    assert lrs == [0.1] * 6

    class Unsized:  # batches without len(): the cosine steps once per pass
        def __iter__(self):
            return iter(data)

    lrs = _lrs_of_each_step(lambda: fxprune.train_scaling(gm, Unsized(), epochs=2, lr=0.1, progress=False))
    assert lrs == pytest.approx([0.1] * 3 + [0.05] * 3, rel=1e-12)
    with pytest.raises(ValueError, match="^train_scaling: schedule='linear': give 'constant' or 'cosine'$"):
        fxprune.train_scaling(gm, data, schedule="linear")


class DeadDirection(nn.Module):
    """A Linear layer whose largest singular direction is orthogonal to all the data."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4, bias=False)
        u, _ = torch.linalg.qr(torch.randn(4, 4))
        v, _ = torch.linalg.qr(torch.randn(6, 6))
        self.v = v
        self.fc.weight.data = u[:, :3] @ torch.diag(torch.tensor([10.0, 1.0, 0.5])) @ v[:, :3].T

    def forward(self, x):
        return self.fc(x)


def test_taylor_ranks_a_basis_that_cannot_affect_the_loss_last():
    torch.manual_seed(3)
    model = DeadDirection()
    data = []
    for _ in range(3):
        x = torch.randn(16, 6)
        x = x - (x @ model.v[:, :1]) @ model.v[:, :1].T  # no component along the top direction
        data.append((x, torch.randint(0, 4, (16,))))
    gm = fxprune.prune(model, data[0][0], "decompose-conv,insert-scaling{train=none}")
    pair = find_pairs(gm)[0]
    assert pair.rank == 4
    from fxprune.analysis.importance import taylor_scores

    scores = taylor_scores(gm, [pair], data)[0][0]
    top = int(pair.importance()[0].argmax())  # the basis with singular value 10
    assert scores[top] < 1e-12 < scores.max() and int(scores.argmin()) in (top, 3)
    # energy keeps the dead basis (it carries 99% of the energy); taylor removes it first
    by_energy = fxprune.prune(gm, data[0][0], "prune-basis{energy=0.9}")
    assert find_pairs(by_energy)[0].rank == 1
    by_taylor = fxprune.prune(gm, data[0][0], "prune-basis{criterion=taylor min-rank=2 energy=0.5}", data=data)
    kept = find_pairs(by_taylor)[0]
    assert kept.rank == 2 and kept.importance().max() < 5  # the singular-value-10 basis is gone
    with torch.no_grad():  # and on the data nothing changed beyond the smallest basis
        assert (by_taylor(data[0][0]) - gm(data[0][0])).abs().max() < 1.0


def test_taylor_without_data_fails_before_any_work(tiny):
    with pytest.raises(fxprune.PipelineError, match=r"prune-basis: criterion=taylor needs data: pass batches of "
                                                    r"\(inputs, targets\)"):
        fxprune.prune(tiny, X, "decompose-conv,insert-scaling,prune-basis{criterion=taylor},fold")


def test_scale_criterion_needs_insert_scaling(tiny):
    with pytest.raises(fxprune.PipelineError, match="criterion=scale needs the scaling factors of insert-scaling"):
        fxprune.prune(tiny, X, "decompose-conv,prune-basis{criterion=scale}")


@pytest.mark.parametrize("criterion", ["energy", "scale", "taylor"])
@pytest.mark.parametrize("form", ["energy=0.5", "target-params=0.7", "target-macs=0.7"])
def test_every_criterion_works_with_every_form(tiny, criterion, form):
    gm = fxprune.prune(tiny, X, "decompose-conv,insert-scaling")
    fxprune.train_scaling(gm, batches(2), lr=0.05, progress=False)
    before = sum(p.rank * p.groups for p in find_pairs(gm))
    small = fxprune.prune(gm, X, f"prune-basis{{criterion={criterion} {form}}},fold", data=batches(2))
    assert fxprune.history(small)[-2].stats["bases-after"] < before
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in tiny.parameters())


def test_prune_iteratively_reaches_the_budget_step_by_step(tiny):
    before = state_copy(tiny)
    gm = fxprune.prune(tiny, X, "decompose-conv,insert-scaling")
    data = batches()
    search = fxprune.prune_iteratively(gm, X, data=data, val_data=data, criterion="taylor", step=0.15,
                                       until="params=0.6", lr=0.05, progress=False)
    hist = search.history
    kept = [h["params_kept"] for h in hist if h["phase"] != "settle"]
    assert kept[0] == pytest.approx(1.0, abs=0.01) and kept[-1] <= 0.6
    assert all(a > b for a, b in zip(kept, kept[1:])) and len(kept) >= 3
    assert all("val_accuracy" in h for h in hist) and search.stop == "params=0.6 reached"
    # one settling try of the last step, no decision: it is the model returned
    assert [h["phase"] for h in hist][-2:] == ["descent", "settle"] and search.chosen is hist[-1]
    assert hist[-1]["step"] == hist[-2]["step"] and all(h["kept"] for h in hist)
    assert_same_state(tiny, before)
    with pytest.raises(ValueError, match="until='size=0.5': write params=F, macs=F or latency=F"):
        fxprune.prune_iteratively(gm, X, data=data, until="size=0.5")


class Plain(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width)
        self.b, self.head = nn.Conv2d(width, width, 3, padding=1), nn.Linear(width, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.a(x)))
        return self.head((x + torch.relu(self.b(x))).mean((2, 3)))


@pytest.mark.parametrize("key", ["params", "macs"])
@pytest.mark.parametrize("prune_what", ["channels", "double", "joint"])
def test_prune_iteratively_prunes_channels_or_both(prune_what, key):
    model = randomize_bn(Plain()).eval()
    gm = fxprune.prune(model, X, "decompose-conv,insert-scaling")
    data = batches()
    search = fxprune.prune_iteratively(gm, X, data=data, val_data=data, prune_what=prune_what, step=0.2,
                                       until=f"{key}=0.7", lr=0.05, progress=False)
    small, hist = search.model, [h for h in search.history if h["phase"] != "settle"]
    kept = [h[f"{key}_kept"] for h in hist]
    assert kept[-1] <= 0.7 and all(a > b for a, b in zip(kept, kept[1:]))
    bases = [h["bases"] for h in hist]
    if prune_what != "joint":  # joint cuts whatever its ranking says (tests/test_joint.py)
        assert small.get_submodule("b.coef").weight.shape[0] < 16
        assert (bases[-1] < bases[0]) == (prune_what == "double")
    assert small(X).shape == (2, 4)


def test_prune_iteratively_names_bad_choices(tiny):
    gm = fxprune.prune(tiny, X, "decompose-conv,insert-scaling")
    with pytest.raises(ValueError, match="prune_what='weights': write 'bases', 'channels', 'joint' or 'double'"):
        fxprune.prune_iteratively(gm, X, data=batches(), prune_what="weights")
    with pytest.raises(ValueError, match="prune_what='joint' ranks bases and channels by Taylor importance only; "
                                         "criterion='l2' is not one it takes"):
        fxprune.prune_iteratively(gm, X, data=batches(), prune_what="joint", criterion="l2")
    with pytest.raises(fxprune.PipelineError, match="criterion"):
        fxprune.prune_iteratively(gm, X, data=batches(), prune_what="channels", criterion="energy")


def test_transfer_with_data_bases_joint_pruning_and_momentum():
    model = randomize_bn(Plain()).eval()
    data = batches()
    result = fxprune.transfer(model, X, train=data, val=data, epochs=1, lr=0.05, prune_what="joint", step=0.2,
                              until="params=0.7", momentum=0.9, basis="data", importance_batches=2, progress=False)
    assert result.params[1] <= 0.7 * result.params[0]
    assert [r.text for r in fxprune.history(result.transferred)] == ["decompose-conv{basis=data}", "insert-scaling",
                                                                     "fold"]
    steps = [r.text for r in fxprune.history(result.model) if r.name == "prune-joint"]
    assert steps and all(t.endswith(" momentum=0.9}") for t in steps)


def test_transfer_keeps_the_head_as_transferred_unless_told(tiny):
    """retrain_head_lr=0 leaves the head bit for bit as the transfer made it while pruning (basis pruning
    does not reshape it); by default it is retrained at a tenth of the scales' lr."""
    heads = {}
    for name, kwargs in (("kept", {"retrain_head_lr": 0.0}), ("retrained", {})):
        result = fxprune.transfer(tiny, X, train=batches(), val=batches(), epochs=1, lr=0.05, prune_what="bases",
                                  step=0.2, until="params=0.9", progress=False, **kwargs)
        assert result.params[1] <= 0.9 * result.params[0]
        heads[name] = (result.transferred.head.weight, result.model.head.weight)
    assert torch.equal(*heads["kept"])
    assert not torch.equal(*heads["retrained"])


def test_distillation_loss_is_the_weighted_kl_to_the_teacher():
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[4 * torch.log(torch.tensor(3.0)).item(), 0.0]])
    hard = torch.tensor(2.0)
    # at T = 4 the teacher says (0.75, 0.25): KL((.75, .25) || (.5, .5)) = .75 ln 1.5 + .25 ln .5, times T^2 = 16
    kl = 0.75 * torch.log(torch.tensor(1.5)) + 0.25 * torch.log(torch.tensor(0.5))
    loss = fxprune.training.scales.distillation_loss(student, teacher, hard, weight=0.25)
    torch.testing.assert_close(loss, 0.75 * hard + 0.25 * 16 * kl, rtol=1e-6, atol=0)


def test_a_student_equal_to_its_teacher_has_nothing_to_learn():
    model = randomize_bn(Plain()).eval()
    gm = fxprune.prune(model, X, "decompose-conv,insert-scaling")
    teacher = fxprune.prune(gm, X, "fold")
    before = {n: p.detach().clone() for n, p in gm.named_parameters() if p.requires_grad}
    # SGD: a step is the gradient itself (Adam would blow float noise up to full-size steps)
    fxprune.train_scaling(gm, batches(), epochs=1, optimizer="sgd", teacher=teacher, distill=1.0, progress=False)
    after = dict(gm.named_parameters())
    for name, value in before.items():  # the KL gradient is zero to float precision: nothing moves
        torch.testing.assert_close(after[name].detach(), value, rtol=0, atol=1e-6)
    fxprune.train_scaling(gm, batches(), epochs=1, optimizer="sgd", progress=False)  # without the teacher: it does
    assert any((after[n].detach() - v).abs().max() > 1e-4 for n, v in before.items())
    with pytest.raises(ValueError, match=r"^train_scaling: distill=1.5: give the weight of the teacher's term, in \[0, 1\]$"):
        fxprune.train_scaling(gm, batches(), teacher=teacher, distill=1.5, progress=False)


def scripted_search(monkeypatch, accuracies, agreements=None, width=16, **options):
    """prune_iteratively on Plain with val accuracies (of 20 examples: the first k right) taken in order from
    `accuracies` and, where given, the top-1 classes on 20 agreement examples from `agreements` (of 20:
    the first k class 0, the rest class 1), training skipped; returns (search, the pruning pipelines run)."""
    from fxprune.training import search

    script = iter(accuracies)
    agreeing = iter(agreements or [])
    monkeypatch.setattr(search, "top1", lambda *a, **k: ((torch.arange(20) >= next(agreeing)).long(), None))
    tried = []
    real_prune = search.prune

    def prune(gm, inputs, pipeline, **context):
        if pipeline.startswith("prune-"):
            tried.append(pipeline)
        return real_prune(gm, inputs, pipeline, **context)

    monkeypatch.setattr(search, "prune", prune)
    monkeypatch.setattr(search, "hits", lambda *a, **k: torch.arange(20) < round(20 * next(script)))
    monkeypatch.setattr(search, "train_scaling", lambda *a, **k: [])
    gm = fxprune.prune(randomize_bn(Plain(width)).eval(), X, "decompose-conv,insert-scaling")
    result = fxprune.prune_iteratively(gm, X, data=batches(), val_data=batches(), prune_what="channels",
                                       criterion="l2", progress=False,
                                       agreement_data=batches() if agreements else None, **options)
    assert next(script, None) is None and next(agreeing, None) is None  # every scripted evaluation was used
    return result, tried


def test_the_descent_pauses_after_patience_misses_settles_goes_on_and_bisects_below_a_failed_settle(monkeypatch):
    """Floor 0.9. Descent: steps 1-3 hold, 4 misses, 5 holds, 6 and 7 miss (patience 2): settle 7, which
    holds, so the descent goes on from it: 8 and 9 miss; settle 9 fails; bisect between 7 and 9: settle 8
    holds and is chosen (3 settling tries). Its path: the descent to 8 through settled 7."""
    search, tried = scripted_search(monkeypatch, [0.95, 0.95, 0.9, 0.9, 0.85, 0.9, 0.8, 0.85, 0.9, 0.85, 0.85, 0.85,
                                                  0.9], step=0.2, until="accuracy=0.9", probes=3)
    assert tried == ["prune-channels{criterion=l2 target-params=0.8}"] * 9
    assert [(h["phase"], h["step"], h["holds"]) for h in search.history] == [
        ("start", 0, True), ("descent", 1, True), ("descent", 2, True), ("descent", 3, True), ("descent", 4, False),
        ("descent", 5, True), ("descent", 6, False), ("descent", 7, False), ("settle", 7, True), ("descent", 8, False),
        ("descent", 9, False), ("settle", 9, False), ("settle", 8, True)]
    assert search.stop == "step 9 stayed below the floor after settling"
    assert [h["try"] for h in search.history if h["kept"]] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12]
    assert search.chosen["try"] == 12 and search.chosen["params"] == search.history[9]["params"]
    assert search.summary() == ("12 tries (9 descent steps, 3 settling); the descent stopped: step 9 stayed below "
                                "the floor after settling")


def test_the_bisection_goes_on_below_a_step_with_a_cut_halfway_in_params(monkeypatch):
    """Floor 0.9. Descent: 1 holds, 2 and 3 miss; settle 3 fails; bisect: settle 1 holds, settle 2 fails; the
    last of 4 probes cuts from settled 1 halfway (in params) to 2 and holds: it is chosen, its path going
    through settled 1."""
    import fxprune.training.search as module

    folds, real = [], module.folded_size
    monkeypatch.setattr(module, "folded_size", lambda gm, x: folds.append(1) or real(gm, x))
    search, tried = scripted_search(monkeypatch, [0.95, 0.95, 0.85, 0.85, 0.85, 0.9, 0.85, 0.9], step=0.2,
                                    until="accuracy=0.9", probes=4, width=64)
    assert len(folds) == 5  # the start, 3 descent steps, the halfway cut: a settle reuses its step's counts
    assert [(h["phase"], h["step"], h["holds"]) for h in search.history] == [
        ("start", 0, True), ("descent", 1, True), ("descent", 2, False), ("descent", 3, False), ("settle", 3, False),
        ("settle", 1, True), ("settle", 2, False), ("settle", 1.5, True)]
    p1, p2 = search.history[1]["params"], search.history[2]["params"]
    assert tried == ["prune-channels{criterion=l2 target-params=0.8}"] * 3 + [
        f"prune-channels{{criterion=l2 target-params={round((p2 / p1) ** 0.5, 9)}}}"]
    assert [h["try"] for h in search.history if h["kept"]] == [0, 1, 5, 7]
    assert search.chosen["try"] == 7 and p2 < search.chosen["params"] < p1
    assert fxprune.prune(search.model, X, "fold").get_submodule("b").weight.shape[0] == 53  # of 64
    assert search.summary() == ("7 tries (3 descent steps, 4 settling); the descent stopped: step 3 stayed below "
                                "the floor after settling")


def test_settling_bisects_down_where_the_deepest_step_fails_and_returns_the_start_where_none_holds(monkeypatch):
    """Descent: 1 holds, 2 and 3 miss; settling 3 fails, then 1 (the bisection's middle): the start is returned."""
    search, _ = scripted_search(monkeypatch, [0.95, 0.9, 0.85, 0.85, 0.85, 0.85], step=0.2, until="accuracy=0.9",
                                probes=2)
    assert [(h["phase"], h["step"]) for h in search.history][-1] == ("settle", 1)
    assert [(h["phase"], h["step"]) for h in search.history][-2] == ("settle", 3)
    assert search.chosen["try"] == 0 and [h["kept"] for h in search.history] == [True] + [False] * 5
    assert search.model.get_submodule("b.coef").weight.shape[0] == 16  # nothing cut


def test_the_descent_stops_when_its_steps_run_out(monkeypatch):
    search, _ = scripted_search(monkeypatch, [0.95] * 5, step=0.2, until="accuracy=0.9", max_steps=3, probes=1)
    assert search.stop == "3 descent steps used (max_steps)" and search.chosen == search.history[-1]
    assert search.history[-1]["phase"] == "settle" and search.history[-1]["step"] == 3


def test_paired_standard_error_counts_the_examples_that_changed():
    before = torch.tensor([True] * 16 + [False] * 4)
    after = torch.tensor([True] * 13 + [False] * 3 + [True] * 2 + [False] * 2)  # 3 lost, 2 gained of 20
    # sqrt(discordant - (gained - lost)^2 / n) / n = sqrt(5 - 1/20) / 20
    assert fxprune.training.scales.paired_se(before, after) == pytest.approx((5 - 1 / 20) ** 0.5 / 20, rel=1e-12)
    assert fxprune.training.scales.paired_se(before, before) == 0.0


@pytest.mark.parametrize("margin, holds", [(0.0, True), (1.0, False)])
def test_a_try_holds_by_its_accuracy_less_margin_standard_errors(monkeypatch, margin, holds):
    """Floor 0.9 on 20 val examples, the start getting the first 19 right, the step the first 18: 0.9 with
    se sqrt(1 - 1/20) / 20 = 0.049, which holds with margin 0 and not with margin 1."""
    search, _ = scripted_search(monkeypatch, [0.95, 0.9, 0.9], step=0.2, until="accuracy=0.9", margin=margin,
                                max_steps=1, probes=1)
    assert [h["holds"] for h in search.history] == [True, holds, holds]
    assert [h["val_se"] for h in search.history] == pytest.approx([0.0] + [0.95 ** 0.5 / 20] * 2, rel=1e-12)
    assert search.chosen["try"] == (2 if holds else 0)


@pytest.mark.parametrize("val, agree, holds", [(0.85, 20, True), (0.8, 20, False), (0.95, 19, False)])
def test_a_settled_try_must_keep_the_predictions_and_then_may_sit_one_se_under_the_floor(monkeypatch, val, agree,
                                                                                         holds):
    """Floor 0.9, agreement 0.98, the start 19 of 20 right. Settled at 0.85 (2 lost, se sqrt(2 - 4/20) / 20 =
    0.067) with every prediction kept: within one se of the floor, it holds; at 0.8 (se 0.080) it does not;
    at 0.95 with one of 20 predictions changed (agreement 0.95) it does not. Descent steps are judged on val
    alone and never score the agreement images."""
    search, _ = scripted_search(monkeypatch, [0.95, 0.95, val], [20, agree], step=0.2, until="accuracy=0.9",
                                max_steps=1, probes=1)
    assert [h["holds"] for h in search.history] == [True, True, holds]
    assert [h.get("agreement") for h in search.history] == [1.0, None, agree / 20]
    assert search.chosen["try"] == (2 if holds else 0)


def test_without_agreement_images_val_alone_decides_a_settled_try(monkeypatch):
    search, _ = scripted_search(monkeypatch, [0.95, 0.95, 0.85], step=0.2, until="accuracy=0.9", max_steps=1,
                                probes=1)
    assert [h["holds"] for h in search.history] == [True, True, False] and "agreement" not in search.history[2]


def test_the_val_change_names_its_error_and_a_floor_it_cannot_resolve():
    from fxprune.training.recipe import TransferResult, resolution_note, val_change

    def result(until, se):
        return TransferResult(None, None, (10, 5), (10, 5), (0.94, 0.93), until, steps=[{"val_se": se, "kept": True}])

    assert val_change(result("accuracy=0.930000", 0.014)) == "-1.0 ± 1.4 points (1 standard error)"
    assert resolution_note(result("accuracy=0.930000", 0.008)) is None
    assert resolution_note(result("params=0.5", 0.014)) is None
    assert resolution_note(result("accuracy=0.930000", 0.014)) == (
        "val measures this change only to ±1.4 points, more than the 1.0-point floor allows: on new data the drop "
        "can differ by as much; hold out more val images to trust a floor this tight")
    assert resolution_note(result("accuracy=0.930000", 0.01038)).startswith(
        "val measures this change only to ±1.04 points, more than the 1.0-point floor allows:")


def test_radam_takes_a_plain_gradient_step_first_and_other_optimizers_are_named():
    """RAdam's first steps are not rescaled by the second moment (its variance is not yet known): one
    batch of RAdam moves every trainable parameter exactly as SGD with momentum does, -lr * gradient."""
    gm = fxprune.prune(randomize_bn(Plain()).eval(), X, "decompose-conv,insert-scaling")
    moved = {}
    for optimizer in ("radam", "sgd"):
        model = copy.deepcopy(gm)
        fxprune.train_scaling(model, batches(n=1), epochs=1, lr=0.01, optimizer=optimizer, schedule="constant",
                              progress=False)
        moved[optimizer] = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    for name, value in moved["sgd"].items():
        torch.testing.assert_close(moved["radam"][name], value, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"^train_scaling: optimizer='lamb': give 'adam', 'radam' or 'sgd'$"):
        fxprune.train_scaling(gm, batches(), optimizer="lamb", progress=False)


def test_head_lr_moves_the_head_at_its_own_rate_and_zero_keeps_it(tiny):
    """head_lr=0 trains the scales exactly as if the head were frozen and leaves it bit for bit; head_lr
    equal to lr is the same run as no head_lr."""
    gm = fxprune.prune(tiny, X, "decompose-conv,insert-scaling")
    runs = {}
    for name, head_lr, freeze in (("zero", 0.0, False), ("frozen", None, True), ("same", 0.05, False),
                                  ("none", None, False)):
        model = copy.deepcopy(gm)
        if freeze:
            for p in model.head.parameters():
                p.requires_grad_(False)
        fxprune.train_scaling(model, batches(), epochs=2, lr=0.05, head_lr=head_lr, progress=False)
        runs[name] = model.state_dict()
    for a, b in (("zero", "frozen"), ("same", "none")):
        assert runs[a].keys() == runs[b].keys() and all(torch.equal(runs[a][k], runs[b][k]) for k in runs[a]), (a, b)
    head = [k for k in runs["zero"] if k.startswith("head.")]
    assert head and all(torch.equal(runs["zero"][k], gm.state_dict()[k]) for k in head)
    assert not all(torch.equal(runs["none"][k], gm.state_dict()[k]) for k in head)
    with pytest.raises(ValueError, match=r"^train_scaling: head_lr=-0.1: the lr of the head \(what is trainable "
                                         r"besides the scales\): give a value >= 0 \(0 keeps the head as it is\) or "
                                         r"None for lr$"):
        fxprune.train_scaling(gm, batches(), head_lr=-0.1, progress=False)


def test_transfer_options_name_their_own_fields():
    """The search's retraining is checked as PruneOptions' epochs and lr; the error names the field that set it."""
    with pytest.raises(ValueError) as e:
        fxprune.TransferOptions(retrain_epochs=-1).check("transfer")
    assert str(e.value) == "transfer: retrain_epochs=-1: give a number of epochs >= 0"
    with pytest.raises(ValueError) as e:
        fxprune.TransferOptions(retrain_lr=-0.5).check("transfer")
    assert str(e.value) == "transfer: retrain_lr=-0.5: give a learning rate above 0"
    assert (e.value.field, e.value.value, e.value.text) == ("retrain_lr", -0.5, "give a learning rate above 0")
