"""Image folders for transfer learning, in torchvision's ImageFolder layout: DIR/train/CLASS/*.png and
DIR/val/CLASS/*.png, or DIR/CLASS/*.png split into train and val per class.

Every image is decoded once, up front (a bad one is named before any training), converted to RGB
from any mode (L, RGB, RGBA, P, ...), its short side resized to the model's input size and centre
cropped, and kept as uint8; batches are normalised with the model's mean and std. Small datasets,
the ones transfer learning on scales is for, fit in memory this way and epochs cost no decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fxprune.core.errors import FxPruneError, first_line
from fxprune.core.progress import bar as progress_bar


@dataclass(frozen=True)
class Normalization:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def normalization(model: nn.Module, image_size: int | None = None) -> Normalization:
    """The model's pretrained input config (timm's resolve_data_config; ImageNet statistics for
    models without one); `image_size` overrides its size."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return Normalization(image_size or int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]))


class Batches:
    """(inputs, targets) batches over uint8 images, normalised on the fly; with `shuffle`, a new
    seeded order each pass."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, norm: Normalization, batch_size: int,
                 shuffle: bool = False, seed: int = 0):
        self.images, self.labels, self.batch_size, self.shuffle, self.seed = images, labels, batch_size, shuffle, seed
        self.mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(norm.std).view(1, 3, 1, 1)
        self.passes = 0

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        order = torch.arange(len(self.labels))
        if self.shuffle:
            order = torch.randperm(len(order), generator=torch.Generator().manual_seed(self.seed + self.passes))
        self.passes += 1
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield (self.images[idx].float().div(255) - self.mean) / self.std, self.labels[idx]


@dataclass
class ImageFolderData:
    classes: list[str]
    train: Batches
    val: Batches


def load_image_folder(root: str | Path, norm: Normalization, *, batch_size: int = 32, val_split: float = 0.2,
                      num_classes: int | None = None, seed: int = 0, progress: bool = True) -> ImageFolderData:
    root = Path(root)
    if not root.is_dir():
        raise FxPruneError(f"--data {root}: no such folder")
    parts = [root / "train", root / "val"]
    split = not all(p.is_dir() for p in parts)
    folders = [root] if split else parts
    classes = [_classes(f) for f in folders]
    if len(classes) == 2 and classes[0] != classes[1]:
        raise FxPruneError(f"--data {root}: train/ and val/ have different class folders "
                           f"({', '.join(sorted(set(classes[0]) ^ set(classes[1])))} in one only)")
    names = classes[0]
    if num_classes is not None and num_classes != len(names):
        raise FxPruneError(f"--num-classes {num_classes}, but --data {root} has {len(names)} class folders "
                           f"({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})")
    if not 0 < val_split < 1:
        raise FxPruneError(f"--val-split {val_split}: the share of each class kept for validation must be in (0, 1)")
    loaded = [_decode(f, names, norm.size, progress) for f in folders]
    if split:
        train, val = _split(*loaded[0], val_split, seed)
    else:
        train, val = loaded
    return ImageFolderData(names, Batches(*train, norm, batch_size, shuffle=True, seed=seed),
                           Batches(*val, norm, batch_size))


def load_test_folder(root: str | Path, classes: list[str], norm: Normalization, *, batch_size: int = 100,
                     progress: bool = True) -> Batches:
    """A held-out folder DIR/CLASS/*.png with the same class folders as the training data."""
    root = Path(root)
    if not root.is_dir():
        raise FxPruneError(f"--test {root}: no such folder")
    found = _classes(root)
    if found != classes:
        raise FxPruneError(f"--test {root}: its class folders ({', '.join(found[:10])}) are not those of --data "
                           f"({', '.join(classes[:10])})")
    return Batches(*_decode(root, classes, norm.size, progress), norm, batch_size)


def _classes(folder: Path) -> list[str]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, is_image_file

    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise FxPruneError(f"--data {folder}: no class folders (write DIR/CLASS/image.png, or DIR/train/CLASS/... "
                           "and DIR/val/CLASS/...)")
    empty = [n for n in names if not any(is_image_file(str(f)) for f in (folder / n).rglob("*"))]
    if empty:
        raise FxPruneError(f"--data {folder}: class folder {empty[0]} holds no images "
                           f"({', '.join(IMG_EXTENSIONS)})")
    return names


def _decode(folder: Path, classes: list[str], size: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
    from torchvision.transforms import CenterCrop, Compose, PILToTensor, Resize

    transform = Compose([Resize(size), CenterCrop(size), PILToTensor()])
    samples = make_dataset(str(folder), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS)
    images = torch.empty(len(samples), 3, size, size, dtype=torch.uint8)
    for i, (path, _) in enumerate(progress_bar(samples, desc=f"reading {folder}", show=progress, leave=False)):
        try:
            with Image.open(path) as image:
                images[i] = transform(image.convert("RGB"))
        except Exception as e:  # noqa: BLE001 - the file is named in one line
            raise FxPruneError(f"--data: cannot read image {path}: {first_line(e) or type(e).__name__}") from None
    return images, torch.tensor([label for _, label in samples], dtype=torch.long)


def _split(images: torch.Tensor, labels: torch.Tensor, val_split: float, seed: int):
    """Per class, a seeded `val_split` share (at least one image) for validation."""
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = max(1, round(val_split * len(idx))) if len(idx) > 1 else 0
        val.append(idx[:k])
        train.append(idx[k:])
    tr, va = torch.cat(train), torch.cat(val)
    return (images[tr], labels[tr]), (images[va], labels[va])
