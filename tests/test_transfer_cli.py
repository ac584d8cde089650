"""`fxprune transfer` end to end on an image folder made here: PNG files of three classes in mixed
image modes, a corrupt file, and the errors a user's folder can give."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from fxprune.core.errors import FxPruneError
from fxprune.runners.cli import main
from fxprune.training.data import LoaderOptions, load_image_folder, normalization

from .test_cli_weights import FACTORY

MODES = ("L", "RGB", "RGBA", "P")


def write_folder(root, per_class=12, classes=("circle", "cross", "stripes")):
    """Three classes a small net tells apart: a bright disc, a cross, horizontal stripes; noisy."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(20), torch.arange(20), indexing="ij")
    shapes = {"circle": ((yy - 10) ** 2 + (xx - 10) ** 2 < 36).float(),
              "cross": ((yy - 10).abs() < 2).float().maximum(((xx - 10).abs() < 2).float()),
              "stripes": (yy % 4 < 2).float()}
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            img = (shapes[c] * 200 + torch.rand(20, 20, generator=g) * 55).to(torch.uint8).numpy()
            Image.fromarray(img, mode="L").convert(MODES[i % 4]).save(root / c / f"{i}.png")
    return root


@pytest.fixture
def factory(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(FACTORY)
    return path


def transfer(factory, data, out, *extra):
    return main(["transfer", f"{factory}:tiny", "--num-classes", "3", "--data", str(data), "--image-size", "16",
                 "--epochs", "3", "--lr", "0.05", "--batch-size", "8", "--until", "params=0.6", "--step", "0.25",
                 "--out", str(out), *extra])


def test_transfer_end_to_end(factory, tmp_path, capsys):
    data = write_folder(tmp_path / "shapes")
    (data / "cross" / "broken.png").write_bytes(b"\x89PNG not really")
    assert transfer(factory, data, tmp_path / "out" / "small.pt2") == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar of reading the images
    assert err == f"fxprune: error: --data: cannot read image {data / 'cross' / 'broken.png'}: cannot identify " \
                  f"image file '{data / 'cross' / 'broken.png'}'"
    (data / "cross" / "broken.png").unlink()

    out = tmp_path / "out" / "small.pt2"
    assert transfer(factory, data, out) == 0
    text = capsys.readouterr().out
    assert "data: " + str(data) + ": 3 classes, 30 train / 3 + 3 held out val images at 16x16" in text
    search = ("descent steps of 0.25 of what is left, each retrained 2 epochs at lr 0.05 (constant; the head at "
              "0.005), at most 30, stopping after 2 in a row below the floor; then at most 6 settling tries of 5 "
              "epochs (lr decaying to 0) bisecting for the deepest step that holds")
    assert ("training the basis scales and the head: 3 epochs, lr 0.05 (cosine); then pruning channels (taylor) "
            f"until params=0.6: {search}\n") in text
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["settings"]["classes"] == ["circle", "cross", "stripes"]
    before, after = record["params"]
    assert after <= 0.6 * before and record["steps"][-1]["params"] == after
    report = out.with_suffix(".md").read_text()
    assert "3 epochs of Adam (lr 0.05, cosine schedule)" in report
    assert f"until params=0.6 (params=0.6): {search}." in report
    assert record["settings"]["retrain_lr"] == 0.05 and record["settings"]["retrain_head_lr"] == pytest.approx(0.005)
    assert f"Params {before:,} -> {after:,}" in report and "![accuracy against params kept](small.png)" in report
    (a0, a1), se = record["accuracy"], record["steps"][-1]["val_se"]
    assert f"val accuracy {a0:.3f} -> {a1:.3f} ({100 * (a1 - a0):+.1f} ± {100 * se:.1f} points (1 standard error); " \
           "it took the decisions)\n" in text
    (c0, c1), cse = record["check_accuracy"], record["check_se"]
    assert record["check_images"] == 3 and f"check accuracy (3 val images no decision saw) {c0:.3f} -> {c1:.3f} (" \
        f"{100 * (c1 - c0):+.1f} ± {100 * cse:.1f} points)\n" in text
    assert f"search: {record['search']}\n" in text and record["search"].endswith("the descent stopped: params=0.6 reached")
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.parent.iterdir()) == ["small.json", "small.md", "small.png", "small.pt2"]

    # the model loads with torch alone, in a process that never imports fxprune, and gives the reported accuracy
    norm = normalization(torch.nn.Identity(), 16)
    val = load_image_folder(data, norm, LoaderOptions(batch_size=100), holdout=0.5).val
    x, y = next(iter(val))
    torch.save({"x": x, "y": y}, tmp_path / "val.pt")
    code = ("import sys, torch; m = torch.export.load(sys.argv[1]).module(); d = torch.load(sys.argv[2]); "
            "assert 'fxprune' not in sys.modules; print((m(d['x']).argmax(1) == d['y']).float().mean().item())")
    done = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "val.pt")], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == pytest.approx(record["accuracy"][1], abs=1e-6)


@pytest.mark.parametrize("setup, extra, message", [
    (lambda d: None, [], "--data {d}: no such folder"),
    (lambda d: d.mkdir(), [], "--data {d}: no class folders (write DIR/CLASS/image.png, or DIR/train/CLASS/... and "
                              "DIR/val/CLASS/...)"),
    (lambda d: (write_folder(d), (d / "empty").mkdir()), ["--num-classes", "4"],
     "--data {d}: class folder empty holds no images"),
    (lambda d: write_folder(d, classes=("circle", "cross")), [],
     "--num-classes 3, but --data {d} has 2 class folders (circle, cross)"),
    (lambda d: write_folder(d), ["--val-split", "1.5"],
     "--val-split 1.5: the share of each class kept for validation must be in (0, 1)"),
    (lambda d: write_folder(d), ["--out", "small.onnx"],
     "--out small.onnx: write a .pt2 file (the model, torch.export); the report goes beside it"),
])
def test_bad_folders_get_one_clear_line(factory, tmp_path, capsys, setup, extra, message):
    data = tmp_path / "data"
    setup(data)
    argv = ["transfer", f"{factory}:tiny", "--data", str(data), "--image-size", "16",
            *(["--num-classes", "3"] if "--num-classes" not in extra else []), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fxprune: error: {message.format(d=data)}") and "Traceback" not in err


def test_a_head_of_the_wrong_size_asks_for_num_classes(factory, tmp_path, capsys):
    data = write_folder(tmp_path / "data")
    assert main(["transfer", f"{factory}:tiny", "--data", str(data), "--image-size", "16"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"fxprune: error: {factory}:tiny outputs 1000 classes but --data {data} has 3 class folders: pass "
        "--num-classes 3 for a new head")


def test_train_and_val_folders_and_every_image_mode(tmp_path):
    root = tmp_path / "data"
    write_folder(root / "train", per_class=4)
    write_folder(root / "val", per_class=4)
    norm = normalization(torch.nn.Identity(), 16)
    data = load_image_folder(root, norm, LoaderOptions(batch_size=5))
    assert data.classes == ["circle", "cross", "stripes"] and data.train.images == data.val.images == 12
    x, y = next(iter(data.val))
    assert x.shape == (5, 3, 16, 16) and y.tolist() == [0, 0, 0, 0, 1]
    # L, RGB, RGBA, P of the same kind of grey image: three equal channels once the config's statistics
    # (ImageNet's for a model without one) are undone
    pixels = x[:4] * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    torch.testing.assert_close(pixels[:, 0], pixels[:, 1], rtol=0, atol=1e-6)
    torch.testing.assert_close(pixels[:, 1], pixels[:, 2], rtol=0, atol=1e-6)
    assert -1e-6 <= pixels.min() and pixels.max() <= 1 + 1e-6


def test_transfer_prunes_jointly_on_data_bases_with_averaged_importance_and_distillation(factory, tmp_path):
    data = write_folder(tmp_path / "shapes")
    out = tmp_path / "small.pt2"
    assert transfer(factory, data, out, "--prune", "joint", "--momentum", "0.9", "--basis", "data", "--distill",
                    "0.5") == 0
    record = json.loads(out.with_suffix(".json").read_text())
    settings = record["settings"]
    assert (settings["prune"], settings["momentum"], settings["basis"], settings["distill"]) == ("joint", 0.9, "data", 0.5)
    before, after = record["params"]
    assert after <= 0.6 * before


def test_the_margin_is_named_once_for_banner_and_report():
    from fxprune.runners.transfer_report import margin_text

    assert margin_text(1.0, "accuracy-drop=0.01") == ", judged on val accuracy less 1 standard error of its change"
    assert margin_text(0.5, "accuracy=0.918000") == ", judged on val accuracy less 0.5 standard errors of its change"
    assert margin_text(0.0, "accuracy=0.918000") == "" and margin_text(1.0, "params=0.5") == ""


def test_holdout_keeps_a_share_of_each_val_class_from_every_decision(tmp_path):
    """--holdout 0.5 of 6 val images per class (val-split 0.5 of 12): 3 per class checked, 3 decide, disjoint;
    0 gives no check set; a share that leaves no image to hold out is one line naming the option."""
    data = write_folder(tmp_path / "shapes")
    norm = normalization(torch.nn.Identity(), 16)
    split = load_image_folder(data, norm, val_split=0.5, holdout=0.5)
    val, check = split.val.loader.dataset.samples, split.check.loader.dataset.samples
    assert [sum(label == c for _, label in val) for c in range(3)] == [3, 3, 3]
    assert [sum(label == c for _, label in check) for c in range(3)] == [3, 3, 3]
    assert not set(val) & set(check) and len(split.train.loader.dataset.samples) == 18
    assert load_image_folder(data, norm, val_split=0.5).check is None
    with pytest.raises(FxPruneError, match=r"^--holdout 1.0: the share of each val class kept from every decision "
                                           r"must be in \[0, 1\)$"):
        load_image_folder(data, norm, holdout=1.0)
    with pytest.raises(FxPruneError, match=r"^--holdout 0.5: --data .* has too few val images to hold any out \(a "
                                           r"class needs 2\): add val images, or give --holdout 0$"):
        load_image_folder(data, norm, val_split=0.05, holdout=0.5)
    with pytest.raises(FxPruneError) as e:  # 2 val images per class, both held out: none left to decide on
        load_image_folder(data, norm, val_split=0.2, holdout=0.99)
    assert str(e.value) == f"--holdout 0.99 leaves no val image of --data {data} to take the decisions: give a smaller share"
