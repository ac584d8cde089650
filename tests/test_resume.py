"""The transfer checkpoint: a folder of state.pt and one file per model, each model written once."""

import pytest
import torch
from torch import nn

import fxprune
from fxprune.core.errors import FxPruneError
from fxprune.runners.resume import Checkpoint


def scaled(width: int):
    model = nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.Conv2d(width, 4, 1))
    return fxprune.prune(model, torch.randn(1, 3, 8, 8), "decompose-conv,insert-scaling")


def test_each_model_is_written_once_and_removed_when_the_state_drops_it(tmp_path, monkeypatch):
    import fxprune.runners.resume as resume

    written = []
    real = resume.atomic_write
    monkeypatch.setattr(resume, "atomic_write", lambda path, fn: written.append(path.name) or real(path, fn))
    a, b, c = scaled(6), scaled(5), scaled(4)
    ckpt = Checkpoint(tmp_path / "small.ckpt", {"lr": 0.1})
    ckpt.write({"search": {"models": {0: a}, "history": [1]}})
    ckpt.write({"search": {"models": {0: a, 1: b}, "history": [1, 2]}})
    ckpt.write({"search": {"models": {0: None, 1: b, 2: c}, "history": [1, 2, 3]}, "teacher": b})
    assert written == ["model-0.pt", "state.pt", "model-1.pt", "state.pt", "model-2.pt", "state.pt"]
    assert sorted(p.name for p in ckpt.path.iterdir()) == ["model-1.pt", "model-2.pt", "state.pt"]

    again = Checkpoint(tmp_path / "small.ckpt", {"lr": 0.1})
    state = again.read(torch.device("cpu"))
    models = state["search"]["models"]
    assert models[0] is None and state["teacher"] is models[1] and state["search"]["history"] == [1, 2, 3]
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(models[2](x), c(x), rtol=0, atol=0)
    assert [n.meta.get("fxprune.role") for n in models[2].graph.nodes] == \
        [n.meta.get("fxprune.role") for n in c.graph.nodes]
    assert again.count == 3  # a resumed run numbers its new models after the ones there
    again.write({"search": {"models": {1: models[1], 2: models[2], 3: a}}})
    assert sorted(p.name for p in again.path.iterdir()) == ["model-1.pt", "model-2.pt", "model-3.pt", "state.pt"]


def test_a_fresh_run_replaces_an_old_checkpoint_and_resume_names_a_missing_model(tmp_path):
    path = tmp_path / "small.ckpt"
    path.write_bytes(b"an older fxprune's single-file checkpoint")
    ckpt = Checkpoint(path, {})
    assert not ckpt.exists()
    ckpt.write({"models": {0: scaled(3)}})
    assert sorted(p.name for p in path.iterdir()) == ["model-0.pt", "state.pt"]
    (path / "model-0.pt").unlink()
    with pytest.raises(FxPruneError) as e:
        Checkpoint(path, {}).read(torch.device("cpu"))
    assert str(e.value) == (f"--resume: cannot read {path / 'model-0.pt'} (FileNotFoundError); delete {path} "
                            "to start over")
