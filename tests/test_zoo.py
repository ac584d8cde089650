"""The lossless check over the zoo: `decompose-conv,fold` at full rank reproduces the logits.

The smoke set runs in CI; torchvision.toml (all 80 classification models) and timm.toml (one
model per timm family) run with `pytest -m zoo`. Exclusions live in the toml files, each with its
reason (`skip = "..."`).
"""

from pathlib import Path

import pytest

from fxprune.runners import zoo

CONFIGS = Path(__file__).resolve().parent.parent / "zoo_configs"
LOSSLESS = "decompose-conv,fold"


def entries(name: str):
    return [pytest.param(e, id=e.id, marks=[pytest.mark.skip(reason=e.skip)] if e.skip else [])
            for e in zoo.load(CONFIGS / name)]


def check_lossless(entry: zoo.ZooEntry) -> None:
    row = zoo.check(entry, LOSSLESS)
    assert row["status"] == "ok", row
    assert row["params_after"] <= row["params_before"] and row["macs_after"] <= row["macs_before"], row


@pytest.mark.parametrize("entry", entries("smoke.toml"))
def test_smoke_zoo_is_lossless(entry):
    check_lossless(entry)


@pytest.mark.zoo
@pytest.mark.parametrize("entry", entries("torchvision.toml") + entries("timm.toml") + entries("torchvision_dense.toml")
                         + entries("torchvision_detection.toml"))
def test_full_zoo_is_lossless(entry):
    check_lossless(entry)


def test_every_zoo_config_loads():
    assert len(zoo.load(CONFIGS / "torchvision.toml")) == 80
    assert len(zoo.load(CONFIGS / "timm.toml")) >= 90
    assert len(zoo.load(CONFIGS / "torchvision_dense.toml")) == 17  # 6 segmentation, 9 video, 2 optical flow
    detection = zoo.load(CONFIGS / "torchvision_detection.toml")
    assert len(detection) == 12 and {e.submodule for e in detection} == {"backbone"}


MODELS = '''
import torch
from torch import nn


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1))

    def forward(self, x):
        a = self.a(x)
        return {"0": a, "1": self.b(a)}


class Detector(nn.Module):
    """Takes a list of images, as torchvision's detectors do; its head does not trace."""

    def __init__(self):
        super().__init__()
        self.backbone = Backbone()

    def forward(self, images):
        feats = self.backbone(torch.stack(images))
        score = feats["1"].mean()
        return [{"boxes": feats["1"].flatten(1)[:, :4] * (2 if score > 0 else 1)}]


class Flow(nn.Module):
    """Two frames in, one map out."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, padding=1)
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x1, x2):
        return self.out(torch.cat([torch.relu(self.enc(x1)), torch.relu(self.enc(x2))], 1))


def detector():
    return Detector()


def flow():
    return Flow()
'''


@pytest.mark.parametrize("pipeline, status", [(LOSSLESS, "ok"), ("prune-channels{ratio=0.5},fold", "ok")])
def test_a_submodule_entry_prunes_that_part_and_the_whole_still_runs(tmp_path, pipeline, status):
    (tmp_path / "models.py").write_text(MODELS)
    entry = zoo.ZooEntry(f"{tmp_path}/models.py:detector", (3, 12, 12), submodule="backbone")
    row = zoo.check(entry, pipeline)
    assert row["status"] == status and row["submodule"] == "backbone", row
    if pipeline == LOSSLESS:
        assert row["rel_l2_error"] < 1e-6 and row["params_after"] == row["params_before"] - 48, row  # BN folded
    else:  # the 16 channels inside stage b can go; the 8 + 8 that leave the backbone stay
        assert row["params_after"] < row["params_before"], row


def test_an_entry_with_two_inputs(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    row = zoo.check(zoo.ZooEntry(f"{tmp_path}/models.py:flow", (3, 8, 8), inputs=2), LOSSLESS)
    assert row["status"] == "ok" and row["rel_l2_error"] < 1e-6, row


def test_bad_zoo_config_names_the_entry(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[model]]\nid = "tv:resnet18"\n\n[[model]]\nname = "x"\n')
    with pytest.raises(ValueError, match=r"bad.toml, model #2: unknown keys \['name'\]"):
        zoo.load(bad)


@pytest.mark.parametrize("text, message", [
    ('[[model]]\nid = 5\n', "model #1: 'id' must be a string, got 5"),
    ('[[model]]\nid = "tv:a"\ninput-size = "3,abc"\n', "model #1 (tv:a): 'input-size' must be positive integers "
                                                       "separated by commas, e.g. \"3,224,224\", got '3,abc'"),
    ('[[model]]\nid = "tv:a"\nrel-l2 = "tight"\n', "model #1 (tv:a): 'rel-l2' must be a positive number such as "
                                                   "1e-5, got 'tight'"),
    ('[[model]]\nid = "tv:a"\npipeline = "fold,"\n', "model #1 (tv:a): 'pipeline': pipeline 'fold,' ends with a "
                                                     "comma"),
    ('[[model]]\nid = "tv:a"\n\n[[model]]\nid = "tv:a"\n', "model #2 (tv:a): the same id as model #1"),
    ('modle = 3\n[[model]]\nid = "tv:a"\n', "unknown top-level keys ['modle']"),
    ('[[model]]\nid = "tv:a"\ninputs = 0\n', "model #1 (tv:a): 'inputs' must be a positive integer (the number of "
                                              "model inputs), got 0"),
    ('[[model]]\nid = "tv:a"\nsubmodule = 1\n', "model #1: 'submodule' must be a string, got 1"),
])
def test_config_values_are_checked_up_front_naming_file_entry_and_key(tmp_path, text, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ValueError) as e:
        zoo.load(bad)
    assert str(e.value).startswith(f"zoo config {bad}") and message in str(e.value)


def test_a_mismatch_row_says_how_far_float32_itself_takes_the_model(tmp_path):
    """Beside a mismatch, the model's own float32 error against float64: the precision a lossless
    rewrite can be held to (a limit of 1e-12 makes this model's exact round trip a mismatch)."""
    import torch

    from fxprune.core.verify import output_error
    from fxprune.runners.models import create

    (tmp_path / "models.py").write_text(MODELS)
    entry = zoo.ZooEntry(f"{tmp_path}/models.py:flow", (3, 8, 8), inputs=2, rel_l2=1e-12)
    row = zoo.check(entry, LOSSLESS)
    assert row["status"] == "mismatch", row
    torch.manual_seed(0)  # the model and inputs check() made
    model, x = zoo.example(entry, zoo.wake(create(entry.id)).eval())
    with torch.no_grad():
        expected = output_error(model(*x), model.double()(*(t.double() for t in x))).rel_l2
    assert row["float32_rel_l2_error"] == pytest.approx(expected) and 0 < expected < 1e-5
    assert row["float64_rel_l2_error"] >= 1e-12  # the rewrite is no closer to float64 than that limit


ROUNDING = '''
import torch
from torch import nn


class Rounding(nn.Module):
    """A linear layer whose float32 forward loses its low bits: (y + 1e4) - 1e4 is y only in float64."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 16)

    def forward(self, x):
        return (self.lin(x) + 1e4) - 1e4


def rounding():
    return Rounding()
'''


@pytest.mark.parametrize("offset, status", [(0.0, "ok"), (1e-3, "mismatch")])
def test_a_rewrite_within_the_limit_of_the_float64_outputs_is_ok(tmp_path, monkeypatch, offset, status):
    """Against its own float32 outputs a rewrite that computes y exactly misses the limit (the original
    rounds y to 1e4's float32 spacing, ~1e-4 relative); against the float64 outputs it is within it, so
    its row is ok, with both errors. A rewrite 1e-3 off stays a mismatch."""
    import torch

    import fxprune.core.api
    from fxprune.core.verify import output_error
    from fxprune.runners.models import create

    class Rewritten(torch.nn.Module):
        def __init__(self, lin):
            super().__init__()
            self.lin = lin

        def forward(self, t):
            return self.lin(t) * (1 + offset)

    def rewrite(model, x, pipeline):
        return Rewritten(model.lin)

    monkeypatch.setattr(fxprune.core.api, "prune", rewrite)
    (tmp_path / "models.py").write_text(ROUNDING)
    entry = zoo.ZooEntry(f"{tmp_path}/models.py:rounding", (4, 16))
    row = zoo.check(entry, "fold")
    torch.manual_seed(0)  # the model and inputs check() made
    model, x = zoo.example(entry, zoo.wake(create(entry.id)).eval())
    with torch.no_grad():
        rewritten = model.lin(x[0]) * (1 + offset)
        exact = model.double()(x[0].double())
    assert row["status"] == status and row["rel_l2_error"] > 1e-5, row
    assert row["float64_rel_l2_error"] == pytest.approx(output_error(rewritten, exact).rel_l2)
    assert row["float32_rel_l2_error"] > 1e-5
