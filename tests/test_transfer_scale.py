"""`fxprune transfer` at scale, on the CPU: an explicit device, DataLoader workers, augmentation, two
processes under torchrun (gloo), a run killed and resumed, and one clear line for each bad option."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fxprune
from fxprune.training.data import LoaderOptions, load_image_folder, normalization
from fxprune.training.runtime import Runtime

from .test_transfer import X, batches
from .test_transfer_cli import factory, transfer, write_folder  # noqa: F401  (factory: a fixture)

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
RESULT_KEYS = ("accuracy", "params", "macs", "epochs", "steps", "until")


def record(out: Path) -> dict:
    saved = json.loads(out.with_suffix(".json").read_text())
    return {k: saved[k] for k in RESULT_KEYS}


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.export.load(str(out)).module().state_dict()


def assert_same_model(a: Path, b: Path) -> None:
    assert record(a) == record(b)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # bench/gpu/check.sh runs these on a GPU


def test_an_explicit_cpu_device_is_the_default_run(tiny):
    runs = [fxprune.transfer(tiny, X, train=batches(), val=batches(), epochs=1, lr=0.05, prune_what="bases",
                             until="params=0.7", step=0.2, progress=False, **device) for device in ({}, {"device": "cpu"})]
    assert runs[0].steps == runs[1].steps and runs[0].accuracy == runs[1].accuracy
    assert next(runs[1].model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("device", DEVICES)
def test_transfer_on_a_device_returns_cpu_models_and_leaves_the_users_alone(tiny, device):
    result = fxprune.transfer(tiny, X, train=batches(), val=batches(), epochs=1, lr=0.05, prune_what="channels",
                              until="params=0.7", step=0.2, progress=False, device=device)
    assert result.steps[-1]["params_kept"] <= 0.7
    assert {p.device.type for p in result.model.parameters()} == {p.device.type for p in result.transferred.parameters()} == {"cpu"}
    assert all(p.device.type == "cpu" for p in tiny.parameters())  # the user's model stays where it was
    with torch.no_grad():
        assert result.model(X).shape == (2, 10)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for a machine without CUDA")
@pytest.mark.parametrize("kwargs, message", [
    ({"device": "cuda"}, "--device cuda: this machine has no CUDA device torch can use (torch.cuda.is_available() "
                         "is False); use cpu or auto"),
    ({"device": "tpu"}, "--device tpu: write auto, cpu, cuda or cuda:N"),
    ({"amp": "fp8"}, "--amp fp8: write auto, off, bf16 or fp16"),
    ({"amp": "fp16"}, "--amp fp16: fp16 autocast is for CUDA; on the CPU use bf16 or off"),
])
def test_runtime_names_a_bad_device_or_amp(kwargs, message):
    with pytest.raises(ValueError) as e:
        Runtime.resolve(**kwargs, flags=True)
    assert str(e.value) == message
    assert Runtime.resolve() == Runtime(torch.device("cpu"), "off", False)  # auto here: the CPU, float32


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_trains_float32_scales(tiny, device):
    gm = fxprune.prune(tiny, X, "decompose-conv,insert-scaling").to(device)
    runtime = Runtime(torch.device(device), amp="bf16", channels_last=True)
    history = fxprune.train_scaling(gm, batches(), epochs=2, lr=0.05, device=runtime, progress=False)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(p.dtype == torch.float32 for p in gm.parameters())


@pytest.mark.parametrize("extra, message", [
    (["--device", "cuda:7"], "--device cuda:7: "),
    (["--workers", "-1"], "--workers -1: give 0 (read images in this process) or more processes"),
    (["--batch-size", "0"], "--batch-size 0: give at least 1 image per batch"),
    (["--margin", "-1"], "--margin -1: give a number of standard errors >= 0"),
    (["--retrain-epochs", "-1"], "--retrain-epochs -1: give a number of epochs >= 0"),  # the flag, not the field
    (["--agreement", "1.5"], "--agreement 1.5: give the share of predictions to keep, in [0, 1] (0: off)"),
    (["--lr", "0"], "--lr 0.0: give a learning rate above 0"),
    (["--max-steps", "0"], "--max-steps 0: give at least 1"),
    (["--val-split", "0.99"], "--val-split 0.99 leaves no image of --data {d} for training: give a smaller share"),
    (["--augment", "timm", "--aa", "nonsense"], "--aa nonsense: not a RandAugment policy timm reads (Unknown AA "
                                                "policy nonsense); e.g. rand-m9-mstd0.5-inc1"),
    (["--amp", "fp8"], "--amp fp8: write auto, off, bf16 or fp16"),
    (["--test", "nosuchdir"], "--test nosuchdir: no such folder"),  # before any training, not after it
    (["--resume"], "--resume: no checkpoint {o} beside --out (a run writes one after every kept step, and removes "
                   "it when it finishes)"),
])
def test_each_new_option_names_its_bad_value_in_one_line(factory, tmp_path, capsys, extra, message):
    data = write_folder(tmp_path / "data")
    out = tmp_path / "out" / "small.pt2"
    assert transfer(factory, data, out, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fxprune: error: {message.format(d=data, o=out.with_suffix('.ckpt'))}"), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_out_must_be_a_file_that_can_be_written(factory, tmp_path, capsys):
    data = write_folder(tmp_path / "data")
    (tmp_path / "taken.pt2").mkdir()
    assert transfer(factory, data, tmp_path / "taken.pt2") == 2
    assert capsys.readouterr().err == (f"fxprune: error: --out {tmp_path / 'taken.pt2'}: is a folder; name the .pt2 "
                                       f"file to write, e.g. {tmp_path / 'taken.pt2' / 'small.pt2'}\n")


@pytest.mark.parametrize("augment", ["light", "timm"])
def test_augmentation_changes_the_training_images_and_not_the_val_images(tmp_path, augment):
    root = tmp_path / "data"
    write_folder(root / "train", per_class=4)
    write_folder(root / "val", per_class=4)
    norm = normalization(torch.nn.Identity(), 16)
    plain, light = (load_image_folder(root, norm, LoaderOptions(batch_size=12, augment=a)) for a in ("none", augment))
    for _ in range(2):  # two passes: the same order in both loaders (one seed), new crops in each pass
        (xp, yp), (xl, yl) = next(iter(plain.train)), next(iter(light.train))
        assert torch.equal(yp, yl) and not torch.allclose(xp, xl, atol=0.1)
    first, second = next(iter(light.train)), next(iter(light.train))
    assert not torch.equal(first[0], second[0])
    for (vp, _), (vl, _) in zip(plain.val, light.val):
        assert torch.equal(vp, vl)
    # the same seed gives the same augmented batches, pass after pass
    assert all(torch.equal(a[0], b[0]) for a, b in zip(_passes(root, norm, 3), _passes(root, norm, 3)))


def _passes(root, norm, n):
    loaded = load_image_folder(root, norm, LoaderOptions(batch_size=12, augment="light"))
    return [next(iter(loaded.train)) for _ in range(n)]


def test_workers_give_the_same_pruned_model(factory, tmp_path):
    data = write_folder(tmp_path / "data")
    outs = [tmp_path / f"w{w}" / "small.pt2" for w in (0, 2)]
    for w, out in zip((0, 2), outs):
        assert transfer(factory, data, out, "--workers", str(w), "--augment", "light", "--seed", "3") == 0
    assert_same_model(*outs)


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=ONE_THREAD, capture_output=True, text=True, timeout=600, **kwargs)


FLAGS = ["--epochs", "2", "--lr", "0.05", "--batch-size", "8", "--until", "params=0.3", "--step", "0.2",
         "--max-steps", "8", "--augment", "light"]

KILLER = """
import os, signal, sys
import fxprune.runners.resume as cli
real, kept = cli.atomic_write, []
def write(path, fn):
    done = real(path, fn)
    if str(path).endswith('.ckpt/state.pt'):
        kept.append(path)
        if len(kept) == 3:  # the transferred model, then two tries
            os.kill(os.getpid(), signal.SIGKILL)
    return done
cli.atomic_write = write
from fxprune.runners.cli import main as run
sys.exit(run(sys.argv[1:]))
"""


def test_a_run_killed_after_its_second_try_resumes_to_the_same_model(factory, tmp_path):
    data = write_folder(tmp_path / "data")
    command = ["transfer", f"{factory}:tiny", "--num-classes", "3", "--data", str(data), "--image-size", "16", *FLAGS]
    whole, cut = tmp_path / "whole" / "small.pt2", tmp_path / "cut" / "small.pt2"
    done = _run([sys.executable, "-m", "fxprune", *command, "--out", str(whole)])
    assert done.returncode == 0, done.stderr
    assert len(record(whole)["steps"]) >= 4  # a start and three tries: the kill leaves work to resume
    killed = _run([sys.executable, "-c", KILLER, *command, "--out", str(cut)])
    assert killed.returncode == -9
    assert sorted(p.name for p in cut.parent.iterdir()) == ["small.ckpt"]
    assert len(torch.load(cut.with_suffix(".ckpt") / "state.pt", weights_only=False)["state"]["search"]["history"]) == 3
    resumed = _run([sys.executable, "-m", "fxprune", *command, "--out", str(cut), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from " + str(cut.with_suffix(".ckpt")) + ": 2 tries done" in resumed.stdout
    assert sorted(p.name for p in cut.parent.iterdir()) == ["small.json", "small.md", "small.png", "small.pt2"]
    assert_same_model(whole, cut)


def test_resume_refuses_other_arguments(factory, tmp_path, capsys):
    data = write_folder(tmp_path / "data")
    out = tmp_path / "small.pt2"
    settings = {"lr": 0.05}
    out.with_suffix(".ckpt").mkdir()
    torch.save({"settings": settings, "state": {}}, out.with_suffix(".ckpt") / "state.pt")
    assert transfer(factory, data, out, "--resume") == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        f"fxprune: error: --resume: {out.with_suffix('.ckpt')} was written with --model None, not ")


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun is not installed")
def test_two_processes_under_torchrun_agree_with_one(factory, tmp_path):
    from .distributed_probe import first_step_scores

    data = write_folder(tmp_path / "data")
    probe, out = tmp_path / "probe", tmp_path / "out"
    probe.mkdir()
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    done = _run([torchrun, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
                 str(Path(__file__).with_name("distributed_probe.py")), str(probe), str(out), str(data),
                 str(factory), *FLAGS[:-2]])
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = first_step_scores(str(data), str(factory), 8)  # one process, the same global batch
    for rank in ranks:
        assert rank["code"] == 0
        assert rank["scores"].keys() == {str(k) for k in single}
        for k, v in single.items():
            assert rank["scores"][str(k)] == pytest.approx(v, rel=1e-4, abs=1e-12)
    assert ranks[0]["shapes"] == ranks[1]["shapes"] and ranks[0]["steps"] == ranks[1]["steps"]
    assert len(ranks[0]["steps"]) >= 2
    assert sorted(p.name for p in out.iterdir()) == ["rank0"]  # each rank was given its own --out: rank 1 wrote none
    assert sorted(p.name for p in (out / "rank0").iterdir()) == ["small.json", "small.md", "small.png", "small.pt2"]
    assert json.loads((out / "rank0" / "small.json").read_text())["settings"]["processes"] == 2
