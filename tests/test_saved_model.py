import subprocess
import sys
import textwrap

import torch

import fxprune
from fxprune.models import create


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
