"""Run by test_transfer_scale.py under `torchrun --nproc_per_node 2` (gloo): each rank writes, under PROBE,
the channel importance of the first train batch (its share of the global batch, averaged across ranks)
and the layer shapes and history of the model `fxprune transfer` pruned on it; the transfer itself writes
to OUT/rankN/ (each rank its own --out), which only rank 0 may write. Usage: distributed_probe.py PROBE OUT DATA FACTORY [transfer flags...]"""

import json
import sys
from pathlib import Path

import torch

import fxprune
from fxprune.analysis.channels import analyse, taylor
from fxprune.core import distributed
from fxprune.runners import transfer_cli
from fxprune.runners.cli import main
from fxprune.runners.models import load_model
from fxprune.training.data import LoaderOptions, load_image_folder, normalization


def first_step_scores(data: str, factory: str, batch: int) -> dict:
    torch.manual_seed(0)
    model, _ = load_model(f"{factory}:tiny", num_classes=3)
    x = torch.randn(1, 3, 16, 16)
    gm = fxprune.prune(model, x, "decompose-conv,insert-scaling")
    loaded = load_image_folder(data, normalization(model, 16), LoaderOptions(batch_size=batch, augment="none"))
    return taylor(analyse(gm, (x,)), [next(iter(loaded.train))])


if __name__ == "__main__":
    probe, out, data, factory, *flags = sys.argv[1:]
    distributed.start(torch.device("cpu"))
    rank = distributed.rank()
    scores = first_step_scores(data, factory, 4)
    results = []
    real = transfer_cli.transfer
    transfer_cli.transfer = lambda *a, **k: results.append(real(*a, **k)) or results[-1]
    code = main(["transfer", f"{factory}:tiny", "--num-classes", "3", "--data", data, "--image-size", "16",
                 "--batch-size", "4", "--out", f"{out}/rank{rank}/small.pt2", *flags])
    result = results[0]
    shapes = {k: list(v.shape) for k, v in result.model.state_dict().items()}
    Path(probe, f"rank{rank}.json").write_text(json.dumps({"code": code, "scores": {str(k): v for k, v in scores.items()},
                                                          "shapes": shapes, "steps": result.steps}))
