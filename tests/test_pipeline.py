import pytest

import fxprune
from fxprune import Pipeline, PipelineError


@pytest.mark.parametrize("text", [
    "decompose-conv,prune-basis{energy=0.95},fold",
    "decompose-conv{linear=false},prune-basis{min-rank=4 target-params=0.3},fold",
    "decompose-conv,prune-basis{target-macs=0.5},fold",
    "fold",
])
def test_canonical_text_prints_back_exactly(text):
    pipeline = Pipeline.parse(text)
    assert str(pipeline) == text
    assert Pipeline.parse(str(pipeline)) == pipeline


def test_whitespace_and_option_order_are_normalised():
    p = Pipeline.parse(" decompose-conv , prune-basis{ target-params=0.3  min-rank=2 } ,fold ")
    assert str(p) == "decompose-conv,prune-basis{min-rank=2 target-params=0.3},fold"


def test_options_are_typed():
    p = Pipeline.parse("decompose-conv{linear=false},prune-basis{energy=0.9 min-rank=3}")
    d, b = p.passes
    assert d.linear is False
    assert (b.energy, b.min_rank) == (0.9, 3) and isinstance(b.min_rank, int)


@pytest.mark.parametrize("text, message", [
    ("decompose-conv,prun-basis,fold", "unknown pass 'prun-basis': did you mean prune-basis, prune-channels, prune-joint?"),
    ("decompose-conv,prune-basis{enrgy=0.9}", "prune-basis has no option 'enrgy'; valid options: criterion, "
                                              "energy, min-rank, target-params, target-macs"),
    ("decompose-conv,prune-basis{criterion=magic}", "prune-basis: option 'criterion' expects one of energy, scale, "
                                                    "taylor, got 'magic'"),
    ("decompose-conv,prune-basis{energy=high}", "prune-basis: option 'energy' expects a number, got 'high'"),
    ("decompose-conv,prune-basis{min-rank=1.5}", "prune-basis: option 'min-rank' expects an integer, got '1.5'"),
    ("decompose-conv{linear=yes}", "decompose-conv: option 'linear' expects true or false, got 'yes'"),
    ("decompose-conv,prune-basis{energy=1.5}", "prune-basis: option 'energy' must be in (0, 1], got 1.5"),
    ("decompose-conv,prune-basis{energy=0}", "prune-basis: option 'energy' must be in (0, 1], got 0.0"),
    ("decompose-conv,prune-basis{target-params=0}", "option 'target-params' must be in (0, 1]"),
    ("decompose-conv,prune-basis{energy=0.9 target-macs=0.5}", "give one of energy, target-params, target-macs, target-latency, not energy and "
                                                                "target-macs"),
    ("decompose-conv,prune-basis{min-rank=0}", "option 'min-rank' must be at least 1, got 0"),
    ("decompose-conv,prune-basis{energy=0.9 energy=0.8}", "option 'energy' is given twice"),
    ("decompose-conv,,fold", "cannot parse pipeline 'decompose-conv,,fold' at column 16"),
    ("decompose-conv,fold,", "ends with a comma"),
    ("", "empty pipeline"),
    ("decompose-conv{linear}", "cannot parse option 'linear': write key=value"),
])
def test_bad_text_is_refused_with_an_exact_message(text, message):
    with pytest.raises(PipelineError) as e:
        fxprune.PassManager(text)
    assert message in str(e.value)


def test_wrong_order_is_refused_with_the_reason():
    with pytest.raises(PipelineError, match=r"wrong pass order: prune-basis must come after decompose-conv "
                                            r"\(it prunes the bases that decompose-conv creates\)"):
        Pipeline.parse("prune-basis,decompose-conv,fold").check_order()
    Pipeline.parse("prune-basis,fold").check_order(["decompose-conv"])  # ran in an earlier prune() call


def test_pass_objects_form_a_pipeline():
    from fxprune.passes import DecomposeConv, Fold, PruneBasis

    p = Pipeline([DecomposeConv(), PruneBasis(energy=0.9), Fold()])
    assert str(p) == "decompose-conv,prune-basis{energy=0.9},fold"
    with pytest.raises(PipelineError, match="prune-basis: option 'energy' must be in"):
        PruneBasis(energy=2.0)


def test_every_option_of_every_pass_is_documented():
    for name, cls in fxprune.core.pass_base.registered().items():
        for opt in cls.options():
            assert opt.help, f"{name}: option {opt.name} has no help text"
