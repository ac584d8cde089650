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
@pytest.mark.parametrize("entry", entries("torchvision.toml") + entries("timm.toml"))
def test_full_zoo_is_lossless(entry):
    check_lossless(entry)


def test_every_zoo_config_loads():
    assert len(zoo.load(CONFIGS / "torchvision.toml")) == 80
    assert len(zoo.load(CONFIGS / "timm.toml")) >= 90


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
])
def test_config_values_are_checked_up_front_naming_file_entry_and_key(tmp_path, text, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ValueError) as e:
        zoo.load(bad)
    assert str(e.value).startswith(f"zoo config {bad}") and message in str(e.value)
