import subprocess
import sys
import textwrap

import torch

import fxprune
from fxprune.runners.models import create


def test_a_folded_model_loads_and_runs_where_fxprune_was_never_imported(tmp_path):
    model = create("tv:resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    small = fxprune.prune(model, x, "decompose-conv,prune-basis{energy=0.9},fold")
    torch.save(small, tmp_path / "small.pt")
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(small(x), tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        m = torch.load({str(tmp_path / 'small.pt')!r}, weights_only=False)
        x = torch.load({str(tmp_path / 'x.pt')!r})
        with torch.no_grad():
            torch.testing.assert_close(m(x), torch.load({str(tmp_path / 'expected.pt')!r}), rtol=0, atol=0)
        assert not any(k.startswith("fxprune") for k in sys.modules), "fxprune was imported"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_cli_saves_an_exported_program_that_loads_with_torch_alone(tmp_path):
    from fxprune.runners.cli import main

    path = tmp_path / "small.pt2"
    assert main(["run", "tv:resnet18", "--input-size", "3,64,64", "--out", str(path)]) == 0
    script = textwrap.dedent(f"""
        import sys, torch
        m = torch.export.load({str(path)!r}).module()
        y = m(torch.randn(1, 3, 64, 64))
        assert y.shape == (1, 1000) and not any(k.startswith("fxprune") for k in sys.modules)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.pt2"]


def test_a_pruned_model_exports_to_onnx_and_runs_in_onnx_runtime(tmp_path):
    import pytest

    pytest.importorskip("onnxscript", reason="install the [onnx] extra")
    ort = pytest.importorskip("onnxruntime", reason="install the [onnx] extra")
    model = create("tv:resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    small = fxprune.prune(model, x, "decompose-conv,prune-basis{target-params=0.6},prune-channels{ratio=0.3},fold")
    torch.onnx.export(small, (x,), tmp_path / "small.onnx", dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    session = ort.InferenceSession(str(tmp_path / "small.onnx"))
    for batch in (1, 3):
        xb = torch.randn(batch, 3, 64, 64)
        out = session.run(None, {session.get_inputs()[0].name: xb.numpy()})[0]
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), small(xb), rtol=1e-5, atol=1e-5)
