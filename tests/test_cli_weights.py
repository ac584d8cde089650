"""Real weights wherever a model is named: --weights, --num-classes, --pretrained, --trust-pickle,
path/to/file.py:factory models and `python -m fxprune`, through the command line."""

import pickle
import subprocess
import sys

import pytest
import torch

from fxprune.runners.cli import main

FACTORY = '''
import torch.nn as nn


def tiny(num_classes=1000):
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, num_classes))


def fixed():
    return tiny(7)


def not_a_model():
    return 3
'''


@pytest.fixture
def factory(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(FACTORY)
    return path


def tiny_state(num_classes=1000):
    torch.manual_seed(1)
    namespace = {}
    exec(FACTORY, namespace)
    return namespace["tiny"](num_classes).state_dict()


def run(argv, capsys):
    code = main(["run", *argv, "--input-size", "3,16,16", "--pipeline", "decompose-conv,fold"])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module-prefix", "safetensors"])
def test_weights_load_every_accepted_form(factory, tmp_path, capsys, wrap):
    state = tiny_state()
    path = tmp_path / ("w.safetensors" if wrap == "safetensors" else "w.pt")
    if wrap == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        obj = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3}, "model": {"model": state},
               "module-prefix": {f"module.{k}": v for k, v in state.items()}}[wrap]
        torch.save(obj, path)
    code, out, err = run([f"{factory}:tiny", "--weights", str(path)], capsys)
    assert code == 0, err
    assert f"weights: {len(state)} tensors from {path}" in out
    assert "params 38,120 -> 38,088 (0.1% fewer)" in out


def test_the_loaded_weights_are_the_ones_used(factory, tmp_path):
    from fxprune.runners.models import load_model

    state = tiny_state()
    torch.save(state, tmp_path / "w.pt")
    model, _ = load_model(f"{factory}:tiny", weights=str(tmp_path / "w.pt"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_num_classes_loads_all_but_the_head_and_names_it(factory, tmp_path, capsys):
    torch.save(tiny_state(1000), tmp_path / "w.pt")
    code, out, err = run([f"{factory}:tiny", "--weights", str(tmp_path / "w.pt"), "--num-classes", "10"], capsys)
    assert code == 0, err
    assert ("weights: 9 tensors from " + str(tmp_path / "w.pt") + "; left out for the new 10-class head (7.bias, "
            "7.weight), which starts at zero") in out


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("3.weight"), "does not fit Sequential: 1 missing: 3.weight"),
    (lambda s: s.update(extra=torch.zeros(1)), "does not fit Sequential: 1 unexpected: extra"),
    (lambda s: s.update({"7.weight": torch.zeros(10, 32), "7.bias": torch.zeros(10)}),
     "does not fit Sequential: 2 of another shape: 7.weight (10, 32) vs (1000, 32), 7.bias (10,) vs (1000,); a "
     "checkpoint with another number of classes loads with --num-classes N"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_with_every_key_named(factory, tmp_path, capsys, change, message):
    state = tiny_state()
    change(state)
    torch.save(state, tmp_path / "w.pt")
    code, _, err = run([f"{factory}:tiny", "--weights", str(tmp_path / "w.pt")], capsys)
    assert code == 2 and err == f"fxprune: error: --weights {tmp_path / 'w.pt'} {message}\n"


def test_a_pickled_module_needs_trust(factory, tmp_path, capsys):
    namespace = {}
    exec(FACTORY, namespace)
    torch.save(namespace["tiny"](), tmp_path / "whole.pt")
    code, _, err = run([f"{factory}:tiny", "--weights", str(tmp_path / "whole.pt")], capsys)
    assert code == 2 and err == (
        f"fxprune: error: --weights {tmp_path / 'whole.pt'}: the file holds pickled Python objects (a whole saved "
        "model?), not only tensors; loading it runs code from the file. Save model.state_dict() instead, or pass "
        "--trust-pickle if you trust where the file comes from\n")
    code, out, err = run([f"{factory}:tiny", "--weights", str(tmp_path / "whole.pt"), "--trust-pickle"], capsys)
    assert code == 0 and "weights: 11 tensors from" in out


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"not a checkpoint at all", "not a file torch.save wrote (or a damaged one)"),
    ("cut", "a zip archive cut short or damaged (its end is missing or unreadable): copy or save the file again"),
    ("raw pickle", "a raw pickle (pickle.dump), not a file torch.save wrote; it was not loaded, since unpickling it "
                   "would run any code it holds (--trust-pickle allows only torch.save's files): save it with "
                   "torch.save(model.state_dict(), PATH)"),
    ({"epoch": 3}, "holds no state_dict (a dict of tensors, or one under a key 'state_dict', 'model', "
                   "'model_state_dict')"),
])
def test_unreadable_weights_files_get_one_line(factory, tmp_path, capsys, content, message):
    path = tmp_path / "w.pt"
    if content == "cut":  # a checkpoint truncated by a failed copy
        torch.save(tiny_state(), path)
        path.write_bytes(path.read_bytes()[:2000])
    elif content == "raw pickle":  # one that would run a command while it is unpickled
        path.write_bytes(pickle.dumps({"w": RunsCode(tmp_path / "ran")}))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    for trust in ([], ["--trust-pickle"]):
        code, _, err = run([f"{factory}:tiny", "--weights", str(path), *trust], capsys)
        assert code == 2 and err == f"fxprune: error: --weights {path}: {message}\n"
    assert not (tmp_path / "ran").exists()


class RunsCode:
    """Unpickled, it creates the file `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pretrained_offline_points_at_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached download to find
    code, _, err = run(["tv:squeezenet1_1", "--pretrained"], capsys)
    assert code == 2 and err.endswith(
        "fxprune: error: --pretrained: cannot get the pretrained weights of tv:squeezenet1_1 (URLError; offline?). "
        "Download them where there is a network and pass --weights PATH\n")
    code, _, err = run(["tv:squeezenet1_1", "--pretrained", "--weights", "w.pt"], capsys)
    assert code == 2 and err == "fxprune: error: give --weights PATH or --pretrained, not both\n"


@pytest.mark.parametrize("spec, message", [
    ("{f}:nope", "{f} defines no function 'nope'"),
    ("{f}:not_a_model", "not_a_model() returned int, not an nn.Module"),
    ("{d}/missing.py:tiny", "no file {d}/missing.py"),
])
def test_model_files_name_what_is_wrong(factory, capsys, spec, message):
    spec = spec.format(f=factory, d=factory.parent)
    code, _, err = run([spec], capsys)
    assert code == 2 and err == f"fxprune: error: model id {spec!r}: {message.format(f=factory, d=factory.parent)}\n"


def test_num_classes_for_a_factory_without_that_argument(factory, capsys):
    code, _, err = run([f"{factory}:fixed", "--num-classes", "3"], capsys)
    assert code == 2 and err == (f"fxprune: error: model id '{factory}:fixed': fixed() takes no argument "
                                 "'num_classes' (asked for by --num-classes)\n")


def test_python_dash_m_is_the_command(factory):
    done = subprocess.run([sys.executable, "-m", "fxprune", "run", f"{factory}:tiny", "--input-size", "3,16,16",
                           "--pipeline", "decompose-conv,fold"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "params 38,120 -> 38,088 (0.1% fewer)" in done.stdout
    done = subprocess.run([sys.executable, "-m", "fxprune", "run", "resnet18"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and done.stderr.startswith("fxprune: error: model id 'resnet18'")


def test_groups_takes_weights_too(factory, tmp_path, capsys):
    state = tiny_state()
    state["1.weight"] = torch.zeros(16)
    torch.save(state, tmp_path / "w.pt")
    assert main(["groups", f"{factory}:tiny", "--weights", str(tmp_path / "w.pt"), "--input-size", "3,16,16"]) == 0
    assert "2 prunable" in capsys.readouterr().out
