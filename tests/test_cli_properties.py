"""A property of `fxprune transfer`'s command line: whatever the folders and option values, a run either
reaches training with every input checked, or stops first with one line naming the option or the file
(rc 2): never a traceback, never a file written."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from PIL import Image

from fxprune.runners import transfer_cli
from fxprune.runners.cli import main

from .test_cli_weights import FACTORY


class Reached(BaseException):
    """Raised where training would start: every input was accepted."""


def _image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (12, 12), shade).save(path)


def folder(root: Path, kind: str) -> Path:
    """A data folder of one of the shapes a user's can have."""
    data = root / "data"
    counts = {"empty": {}, "one image": {"a": 1}, "one class": {"a": 6}, "one per class": {"a": 1, "b": 1},
              "ok": {"a": 10, "b": 10}, "corrupt": {"a": 10, "b": 10}}
    if kind == "missing":
        return data
    data.mkdir()
    if kind == "train/val differ":
        for split, classes in (("train", "ab"), ("val", "a")):
            for c in classes:
                for i in range(3):
                    _image(data / split / c / f"{i}.png", 40 * i)
        return data
    for c, n in counts[kind].items():
        for i in range(n):
            _image(data / c / f"{i}.png", 20 * i + (100 if c == "b" else 0))
    if kind == "corrupt":
        (data / "b" / "3.png").write_bytes(b"not a png")
    return data


def held_out(root: Path, kind: str) -> list[str]:
    test = root / "test"
    if kind == "none":
        return []
    if kind != "missing":
        for c in ("a", "c") if kind == "other classes" else ("a", "b"):
            _image(test / c / "0.png", 50)
        if kind == "corrupt":
            (test / "a" / "0.png").write_bytes(b"\x89PNG broken")
    return ["--test", str(test)]


def out_path(root: Path, kind: str) -> Path:
    if kind == "folder":
        (root / "outdir").mkdir()
        return root / "outdir"
    if kind == "under a file":
        (root / "file").write_text("")
        return root / "file" / "small.pt2"
    return root / "out" / ("small.onnx" if kind == "not .pt2" else "small.pt2")


NUMBERS = {
    "--batch-size": ["-1", "0", "1", "4"], "--val-split": ["-0.2", "0", "0.3", "0.99", "1"],
    "--holdout": ["-0.1", "0", "0.5", "0.99", "1"], "--epochs": ["-1", "0", "1"], "--lr": ["-0.1", "0", "0.01"],
    "--step": ["-0.1", "0", "0.15", "1"], "--max-steps": ["-1", "0", "1"], "--patience": ["0", "1"],
    "--probes": ["0", "1", "6"], "--settle-epochs": ["-1", "0", "1"], "--retrain-epochs": ["-1", "0", "2"],
    "--agreement": ["-0.1", "0", "0.98", "1.5"], "--margin": ["-1", "0", "1"], "--workers": ["-1", "0"],
    "--importance-batches": ["0", "1"], "--retrain-lr": ["-1", "0.01"], "--distill": ["-0.5", "0", "1.5"],
}


@settings(max_examples=150, deadline=None)
@given(data_kind=st.sampled_from(["missing", "empty", "one image", "one class", "one per class", "corrupt",
                                  "train/val differ"] + ["ok"] * 7),
       test_kind=st.sampled_from(["missing", "corrupt", "other classes"] + ["none", "ok"] * 3),
       out_kind=st.sampled_from(["ok"] * 5 + ["folder", "under a file", "not .pt2"]),
       numbers=st.dictionaries(st.sampled_from(sorted(NUMBERS)), st.integers(0, 4), max_size=3))
def test_every_outcome_is_training_or_one_line_naming_the_cause(data_kind, test_kind, out_kind, numbers):
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        root = Path(tmp)
        (root / "nets.py").write_text(FACTORY)
        options = [x for flag, i in numbers.items() for x in (flag, NUMBERS[flag][i % len(NUMBERS[flag])])]
        argv = ["transfer", f"{root / 'nets.py'}:tiny", "--num-classes", "2", "--data", str(folder(root, data_kind)),
                *held_out(root, test_kind), "--image-size", "16", "--out", str(out_path(root, out_kind)),
                "--device", "cpu", *options]
        mp.setattr(transfer_cli, "transfer", lambda *a, **k: (_ for _ in ()).throw(Reached()))
        before = sorted(p for p in root.rglob("*"))
        errors = []
        mp.setattr("sys.stderr", type("Err", (), {"write": lambda _, s: errors.append(s), "flush": lambda _: 0})())
        try:
            rc = main(argv)
        except Reached:
            event("reached training")
            return
        assert sorted(p for p in root.rglob("*")) == before  # nothing written on the way out
        text = "".join(errors)
        event(text.removeprefix("fxprune: error: ").split(" ")[0])
        assert rc == 2 and text.startswith("fxprune: error: ") and text.count("\n") == 1, (argv, text)
        assert "--" in text or str(root) in text, (argv, text)  # names the option or the file
