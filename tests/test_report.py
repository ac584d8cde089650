import csv
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import fxprune
from fxprune.runners.models import create


def flop_counter_macs(model, x) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def resnet50_case():
    torch.manual_seed(0)
    model = create("tv:resnet50").eval()
    x = torch.randn(1, 3, 96, 96)
    small = fxprune.prune(model, x, "decompose-conv,prune-basis{energy=0.9},fold")
    return model, small, x, fxprune.savings(model, small, x)


def test_resnet50_gets_smaller_and_totals_equal_independent_counts(resnet50_case):
    model, small, x, report = resnet50_case
    t = report.totals
    assert t["params_before"] == params(model) and t["params_after"] == params(small)
    assert t["macs_before"] == flop_counter_macs(model, x) and t["macs_after"] == flop_counter_macs(small, x)
    assert t["params_after"] < t["params_before"] and t["macs_after"] < t["macs_before"]


def test_per_layer_macs_add_up_to_the_flop_counter_on_a_cnn(resnet50_case):
    model, small, x, report = resnet50_case
    layers, other = report.rows[:-1], report.rows[-1]
    assert len(layers) == 54  # 53 convs and the fc layer, by original module path
    assert layers[0]["layer"] == "conv1" and layers[-1]["layer"] == "fc"
    assert other["macs_before"] == other["macs_after"] == 0  # conv/linear are all the MACs of a CNN
    assert sum(r["macs_before"] for r in layers) == report.totals["macs_before"]
    assert other["params_after"] == 0  # BatchNorm was folded into the convs
    assert {r["form"] for r in layers} <= {"pair", "merged"}


def test_ranks_are_reported_per_layer(resnet50_case):
    _, small, _, report = resnet50_case
    row = next(r for r in report.rows if r["layer"] == "layer1.0.conv2")
    kept, full = map(int, row["rank"].split("/"))
    assert full == 64 and 0 < kept < 64


def test_attention_matmuls_are_counted_in_the_other_row():
    model = create("timm:vit_tiny_patch16_224").eval()
    x = torch.randn(1, 3, 224, 224)
    report = fxprune.savings(model, fxprune.prune(model, x, "decompose-conv,fold"), x)
    other = report.rows[-1]
    assert other["macs_before"] > 0 and other["macs_before"] == other["macs_after"]
    # torch's FlopCounterMode counts nothing for CPU attention; fxprune adds QK^T and AV:
    # 12 blocks x 3 heads x 197 x 197 x (64 + 64)
    assert other["macs_before"] == 12 * 3 * 197 * 197 * 128
    assert report.totals["macs_before"] == flop_counter_macs(model, x) + other["macs_before"]


def test_outputs_csv_markdown_json(resnet50_case, tmp_path):
    _, _, _, report = resnet50_case
    report.to_csv(tmp_path / "r.csv")
    with open(tmp_path / "r.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(report.rows) + 1 and rows[-1]["layer"] == "total"
    assert int(rows[-1]["params_after"]) == report.totals["params_after"]
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]  # no temporary file left behind
    data = json.loads(report.to_json())
    assert data["totals"] == report.totals and data["units"]["macs"] == "multiply-accumulates"
    md = report.to_markdown()
    assert md.splitlines()[1].startswith("|--") and "layer1.0.conv2" in md
    assert "params saved" in str(report)


def test_training_only_heads_are_named_and_left_out_of_the_totals():
    # googlenet's aux1/aux2 run only in training: the eval graph drops them, and counting them as
    # "saved" would credit pruning with 49% of the model
    torch.manual_seed(0)
    model = create("tv:googlenet").eval()
    x = torch.randn(1, 3, 64, 64)
    small = fxprune.prune(model, x, "decompose-conv,fold")
    report = fxprune.savings(model, small, x)
    aux = {name: params(getattr(model, name)) for name in ("aux1", "aux2")}
    assert report.unused == aux == {"aux1": 3_188_968, "aux2": 3_191_016}
    assert report.totals["params_before"] == params(model) - sum(aux.values()) == 6_624_904
    assert sum(r["params_before"] for r in report.rows) == report.totals["params_before"]
    assert str(report).endswith("tracing drops them: aux1 (3,188,968), aux2 (3,191,016).")
    assert json.loads(report.to_json())["unused"] == aux


def test_unused_parameters_are_grouped_by_their_outermost_wholly_unused_module():
    from torch import nn

    from fxprune.analysis.counting import unused_params

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.extra = nn.Parameter(torch.ones(3))  # unused beside a used layer

        def forward(self, x):
            return self.lin(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()
            self.aux = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2))

        def forward(self, x):
            return self.block(x)

    net = Net()
    assert unused_params(net, fxprune.trace(net)) == {"aux": 10 + 6, "block.extra": 3}
