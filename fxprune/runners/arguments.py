"""The `fxprune` command line's arguments: one parser for every subcommand, so the CLI, the demo and the docs
build the same one."""

from __future__ import annotations

import argparse

from fxprune.core.api import DEFAULT_PIPELINE
from fxprune.training.options import RETRAIN_HEAD_SHARE


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="tv:NAME (torchvision), timm:NAME or path/to/file.py:factory")
    parser.add_argument("--weights", help="a state_dict to load (.pt/.pth from torch.save, a {'state_dict': ...} "
                                          "or {'model': ...} checkpoint, or .safetensors)")
    parser.add_argument("--num-classes", type=int, help="build the model with a new head of N classes and load "
                                                        "every weight but the old head's")
    parser.add_argument("--pretrained", action="store_true", help="timm's / torchvision's own weights (needs the "
                                                                   "network or their cache)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow --weights to be a whole pickled model: loading it runs code from the file")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fxprune", description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="prune one model and print the savings table")
    _model_args(run)
    run.add_argument("--pipeline", default=DEFAULT_PIPELINE, help=f"pass pipeline (default: {DEFAULT_PIPELINE})")
    run.add_argument("--input-size", help="C,H,W (or C,T,H,W) of the example input (default 3,224,224; "
                                          "3,16,112,112 for a model whose first conv is 3-D)")
    run.add_argument("--batch", type=int, default=1, help="batch size of the example input (default 1)")
    run.add_argument("--verify", action="store_true", help="check the graph after every pass")
    run.add_argument("--out", help="also write the savings table (.md, .csv, .json) or the model (.pt2)")
    transfer = sub.add_parser("transfer", help="train the scales and a new head on an image folder, then prune "
                                               "until the accuracy floor, fold and save")
    _model_args(transfer)
    transfer.add_argument("--data", required=True, help="image folder: DIR/train/CLASS/*.png and DIR/val/CLASS/*.png, "
                                                        "or DIR/CLASS/*.png (split by --val-split)")
    transfer.add_argument("--test", help="a held-out folder DIR/CLASS/*.png: the transferred and the pruned model's "
                                         "accuracy on it is reported (it chooses nothing, unlike val)")
    transfer.add_argument("--image-size", type=int, help="input size (default: the model's pretrained config)")
    transfer.add_argument("--val-split", type=float, default=0.2, help="share of each class kept for validation "
                                                                        "when DIR has no train/ and val/ (0.2)")
    transfer.add_argument("--epochs", type=int, default=5, help="epochs of training the scales and head (5)")
    transfer.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (0.01)")
    transfer.add_argument("--retrain-lr", type=float, help="lr of the scales while pruning (default: --lr)")
    transfer.add_argument("--retrain-head-lr", type=float,
                          help=f"lr of the head while pruning (default: {RETRAIN_HEAD_SHARE:g} x the retraining lr; "
                               "0 keeps the head as transferred)")
    transfer.add_argument("--schedule", default="cosine", choices=["cosine", "constant"],
                          help="lr over each training run: cosine decays it to 0 (default), constant keeps it")
    transfer.add_argument("--batch-size", type=int, default=32, help="batch size per process (32)")
    transfer.add_argument("--prune", default="channels", choices=["bases", "channels", "joint", "double"],
                          help="what to prune (channels)")
    transfer.add_argument("--criterion", default="taylor", help="importance (taylor)")
    transfer.add_argument("--until", default="accuracy-drop=0.01",
                          help="stop rule: accuracy-drop=D (default 0.01: within 1 point of the transferred "
                               "model), accuracy=A, params=F, macs=F or latency=F (measured, batch 1, this machine)")
    transfer.add_argument("--margin", type=float, default=0.0,
                          help="with an accuracy stop rule, a step holds while val accuracy less this many standard "
                               "errors of its change (paired, over the val images that changed) meets the floor "
                               "(default 0: val accuracy itself)")
    transfer.add_argument("--holdout", type=float, default=0.5,
                          help="share of each val class that no decision sees: the pruned model's accuracy on it "
                               "is the claim the report makes (0.5; 0: none)")
    search = transfer.add_argument_group("the search: descend, then settle")
    search.add_argument("--step", type=float, default=0.15, help="share of what is left that each descent step "
                                                                 "prunes (0.15)")
    search.add_argument("--max-steps", type=int, default=30, help="descent steps at most (30)")
    search.add_argument("--retrain-epochs", type=int, default=2, help="epochs retraining the scales after each "
                                                                      "descent step (2)")
    search.add_argument("--retrain-schedule", default="constant", choices=["cosine", "constant"],
                        help="lr over each descent step's retraining (constant)")
    search.add_argument("--patience", type=int, default=2,
                        help="descent steps in a row below the floor before the descent stops (2)")
    search.add_argument("--probes", type=int, default=6,
                        help="settling tries at most: a longer retraining with the lr decaying, bisecting the "
                             "descent's steps, then cuts halfway between them (6)")
    search.add_argument("--settle-epochs", type=int, default=5, help="epochs of each settling try (5)")
    search.add_argument("--agreement", type=float, default=0.98,
                        help="a settled try must keep this share of the transferred model's predictions on the "
                             "train images (up to 10,000, un-augmented); then val accuracy may be one standard "
                             "error under the floor (0.98; 0: off, val alone decides)")
    transfer.add_argument("--importance-batches", type=int, default=8,
                          help="train batches that taylor importance is measured on per step (8)")
    transfer.add_argument("--momentum", type=float, help="average taylor importance across steps: momentum * "
                                                         "previous + (1 - momentum) * this step's (e.g. 0.9)")
    transfer.add_argument("--basis", default="svd", choices=["svd", "data"],
                          help="svd: each layer's SVD; data: bases fitted to the responses on the importance "
                               "batches (decompose-conv{basis=data})")
    transfer.add_argument("--distill", type=float, default=0.0, help="weight of distilling from the transferred "
                                                                     "model while retraining after each step (0)")
    transfer.add_argument("--out", default="small.pt2", help="the pruned model (.pt2); its report (.md, .png) and "
                                                            "history (.json) are written beside it, and while it "
                                                            "runs a checkpoint folder (.ckpt) after every try")
    transfer.add_argument("--resume", action="store_true",
                          help="continue the run whose checkpoint is beside --out (same arguments), from its last "
                               "try")
    transfer.add_argument("--seed", type=int, default=0, help="seed of every RNG: the train/val split, the order "
                                                               "of the batches, augmentation, torch's (0)")
    scale = transfer.add_argument_group("device and data loading (timm train.py's flags)")
    scale.add_argument("--device", default="auto", help="auto (CUDA where available), cpu, cuda or cuda:N; under "
                                                        "torchrun, cuda means each rank's cuda:LOCAL_RANK")
    scale.add_argument("--amp", default="auto", help="autocast: auto (bf16 on CUDA, off on the CPU), bf16, fp16 "
                                                     "(with a GradScaler) or off; the scales stay float32")
    scale.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="channels-last memory format (default: on CUDA only)")
    scale.add_argument("-j", "--workers", type=int, default=0,
                       help="DataLoader processes reading images (0: this process); the result does not depend on it")
    scale.add_argument("--pin-mem", action=argparse.BooleanOptionalAction, default=None,
                       help="pinned host memory for the batches (default: on CUDA only)")
    scale.add_argument("--augment", default="light", choices=["none", "light", "timm"],
                       help="train images: light = RandomResizedCrop + flip (default), timm = timm's training "
                            "transform with RandAugment (--aa), none = the eval transform; val and test always get "
                            "the model's eval transform")
    scale.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="with --augment timm: timm's RandAugment policy "
                                                                   "(rand-m9-mstd0.5-inc1)")
    zoo = sub.add_parser("zoo", help="run a pipeline over every model of a zoo config")
    zoo.add_argument("config", nargs="+", help="a zoo config (e.g. zoo_configs/smoke.toml), or model patterns "
                                               "such as 'timm:resnet*' 'tv:*' (timm's wildcard rules)")
    zoo.add_argument("--exclude", action="append", default=[], help="with patterns: drop the models matching this "
                                                                    "glob (repeatable), e.g. --exclude '*_gn'")
    zoo.add_argument("--pipeline", default=DEFAULT_PIPELINE, help="pass pipeline (entries may override it)")
    zoo.add_argument("--out", required=True, help="folder for results.jsonl, summary.md and summary.csv")
    zoo.add_argument("--resume", action="store_true", help="skip the models already in OUT/results.jsonl")
    zoo.add_argument("--jobs", type=int, default=1, help="models run in parallel processes (1 thread each)")
    zoo.add_argument("--executor", default="local", choices=["local", "ray"],
                     help="local: --jobs processes here; ray: one Ray task per model (pip install 'fxprune[ray]')")
    zoo.add_argument("--address", help="with --executor ray: the cluster to join (default: start a local one)")
    zoo.add_argument("--task-memory", type=float, help="with --executor ray: GiB of memory each model's task "
                                                       "reserves (Ray then runs fewer big models at once)")
    zoo.add_argument("--time-limit", type=float, metavar="SECONDS",
                     help="stop a model still running after this long: an error row, and the run goes on")
    zoo.add_argument("--compile", action="store_true",
                     help="also compile each pruned model (inductor, fullgraph) and compare it with eager")
    groups = sub.add_parser("groups", help="print the channel groups prune-channels sees, and why any is kept")
    _model_args(groups)
    groups.add_argument("--input-size", help="C,H,W (or C,T,H,W) of the example input (default 3,224,224; "
                                             "3,16,112,112 for a model whose first conv is 3-D)")
    groups.add_argument("--heads", default="whole", choices=["whole", "dim"],
                        help="attention as prune-channels{heads=...} sees it: whole heads, or head_dim positions")
    demo = sub.add_parser("demo", help="transfer ImageNet EfficientNet-Lite0 to MNIST digits and prune it (the "
                                       "bench extra's weights and data; a few minutes)")
    demo.add_argument("--out", default="fxprune-demo", help="folder for the data, weights, model and report")
    sub.add_parser("passes", help="list every registered pass with its options and defaults")
    return parser
