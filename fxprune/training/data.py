"""Image folders for transfer learning, in torchvision's ImageFolder layout: DIR/train/CLASS/*.png and
DIR/val/CLASS/*.png, or DIR/CLASS/*.png split into train and val per class.

Images are read from disk per batch through torch's DataLoader (workers, pinned memory on CUDA), so
memory does not grow with the dataset; every file is first opened and decoded once, in the workers,
so a bad one is named before any training. Train images are augmented (`augment`); val and test get
the model's eval transform (timm's resolve_data_config). Each sample's augmentation is seeded by
(seed, epoch, index), so the batches are the same whatever the number of workers or ranks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fxprune.core import distributed
from fxprune.core.errors import FxPruneError, first_line

AUGMENTS = ("none", "light", "timm")
AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"  # timm train.py's RandAugment policy for --augment timm


@dataclass(frozen=True)
class Normalization:
    """The model's input config: size, interpolation, crop share and normalisation."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    def transform(self, augment: str = "none", auto_augment: str = AUTO_AUGMENT):
        """timm's eval transform for "none"; RandomResizedCrop + flip for "light"; timm's training
        transform with RandAugment `auto_augment` for "timm"."""
        from timm.data import create_transform

        common = dict(input_size=(3, self.size, self.size), interpolation=self.interpolation, mean=self.mean,
                      std=self.std)
        if augment == "none":
            return create_transform(**common, crop_pct=self.crop_pct, is_training=False)
        if augment == "light":
            return create_transform(**common, is_training=True, color_jitter=None)
        return create_transform(**common, is_training=True, auto_augment=auto_augment)


def normalization(model: nn.Module, image_size: int | None = None) -> Normalization:
    """The model's pretrained input config (timm's resolve_data_config; ImageNet statistics for
    models without one); `image_size` overrides its size."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return Normalization(image_size or int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]),
                         cfg.get("interpolation", "bilinear"), float(cfg.get("crop_pct", 0.875)))


@dataclass(frozen=True)
class LoaderOptions:
    """How batches are made: size (per process, as in timm's train.py), order seed, workers, augmentation."""

    batch_size: int = 32
    seed: int = 0
    workers: int = 0
    augment: str = "light"
    auto_augment: str = AUTO_AUGMENT
    pin_memory: bool = False

    def check(self) -> None:
        if not self.batch_size >= 1:
            raise FxPruneError(f"--batch-size {self.batch_size}: give at least 1 image per batch")
        if not self.workers >= 0:
            raise FxPruneError(f"--workers {self.workers}: give 0 (read images in this process) or more processes")
        if self.augment not in AUGMENTS:
            raise FxPruneError(f"--augment {self.augment}: write none, light or timm")


class Images(Dataset):
    """(image tensor, label) per (path, label) sample; an index given with a seed is transformed under
    that seed (torch's and Python's RNGs, restored after), so it does not matter which worker reads it."""

    def __init__(self, samples: list[tuple[str, int]], transform, option: str = "--data"):
        self.samples, self.transform, self.option = samples, transform, option

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        image = _read(path, self.option)
        if seed is None:
            return self.transform(image), label
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                return self.transform(image), label
            finally:
                random.setstate(state)


class SeededBatches:
    """Batches of (index, seed) for one process: with `shuffle`, a new order each pass seeded by (seed,
    pass); under torchrun each global batch (batch_size x ranks) is split across the ranks, the data
    padded by its first images to a multiple of the ranks (as DistributedSampler does)."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int = 0, shard: bool = False):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.ranks, self.rank = (distributed.world(), distributed.rank()) if shard else (1, 0)
        self.epoch = 0  # set by the Loader: DataLoader may call iter() more than once per pass

    def __len__(self) -> int:
        total = -(-self.n // self.ranks) * self.ranks
        return -(-total // (self.batch_size * self.ranks))

    def __iter__(self):
        epoch = self.epoch
        order = list(range(self.n))
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)).tolist()
        order += order[:(-len(order)) % self.ranks]
        batches, step = [], self.batch_size * self.ranks
        for i in range(0, len(order), step):
            part = order[i:i + step]
            share = len(part) // self.ranks
            mine = part[self.rank * share:(self.rank + 1) * share]
            batches.append([(j, (self.seed * 1_000_003 + epoch) * 10_000_019 + j) for j in mine])
        return iter(batches)


class Loader:
    """Batches of (images, labels) from `dataset` through torch's DataLoader; `epoch` counts the passes
    begun (a resumed run sets it back)."""

    def __init__(self, dataset: Images, options: LoaderOptions, *, shuffle: bool, shard: bool):
        self.sampler = SeededBatches(len(dataset), options.batch_size, shuffle=shuffle, seed=options.seed, shard=shard)
        self.images = len(dataset)
        self.epoch = 0
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=options.workers,
                                 pin_memory=options.pin_memory, persistent_workers=options.workers > 0,
                                 generator=torch.Generator())  # the global RNG is left alone

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        self.sampler.epoch = self.epoch
        self.epoch += 1
        return iter(self.loader)


AGREEMENT_IMAGES = 10_000
"""Train images (a seeded sample where there are more) whose predictions a settled try must keep: enough
to measure a 1-point change to a tenth of a point, at the cost of a third of an epoch of 30,000 images."""


@dataclass
class ImageFolderData:
    classes: list[str]
    train: Loader
    val: Loader
    check: Loader | None = None
    agreement: Loader | None = None  # train images with the eval transform, in a fixed order


def load_image_folder(root: str | Path, norm: Normalization, options: LoaderOptions | None = None, *,
                      val_split: float = 0.2, holdout: float = 0.0, num_classes: int | None = None) -> ImageFolderData:
    """Train (augmented, shuffled, split across torchrun's ranks) and val (eval transform, in order)
    loaders over DIR, and a `holdout` share of each val class (seeded) as a check set that no decision
    sees; every image checked first."""
    options = options or LoaderOptions()
    options.check()
    root = Path(root)
    if not root.is_dir():
        raise FxPruneError(f"--data {root}: no such folder")
    parts = [root / "train", root / "val"]
    split = not all(p.is_dir() for p in parts)
    folders = [root] if split else parts
    classes = [_classes(f, "--data") for f in folders]
    if len(classes) == 2 and classes[0] != classes[1]:
        raise FxPruneError(f"--data {root}: train/ and val/ have different class folders "
                           f"({', '.join(sorted(set(classes[0]) ^ set(classes[1])))} in one only)")
    names = classes[0]
    if num_classes is not None and num_classes != len(names):
        raise FxPruneError(f"--num-classes {num_classes}, but --data {root} has {len(names)} class folders "
                           f"({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})")
    if not 0 < val_split < 1:
        raise FxPruneError(f"--val-split {val_split}: the share of each class kept for validation must be in (0, 1)")
    found = [_samples(f, names) for f in folders]
    train, val = _split(found[0], val_split, options.seed) if split else found
    if not val:
        raise FxPruneError(f"--data {root}: no image is left for validation (a class needs 2 images for one to "
                           "go to val): add images, or give DIR/train/ and DIR/val/")
    if not train:
        raise FxPruneError(f"--val-split {val_split} leaves no image of --data {root} for training: give a smaller "
                           "share")
    if not 0 <= holdout < 1:
        raise FxPruneError(f"--holdout {holdout}: the share of each val class kept from every decision must be in "
                           "[0, 1)")
    val, check = _split(val, holdout, options.seed + 1) if holdout else (val, [])
    if holdout and not check:
        raise FxPruneError(f"--holdout {holdout}: --data {root} has too few val images to hold any out (a class "
                           "needs 2): add val images, or give --holdout 0")
    if not val:
        raise FxPruneError(f"--holdout {holdout} leaves no val image of --data {root} to take the decisions: give a "
                           "smaller share")
    try:
        augment = norm.transform(options.augment, options.auto_augment)
    except (AssertionError, ValueError, KeyError) as e:
        raise FxPruneError(f"--aa {options.auto_augment}: not a RandAugment policy timm reads ({first_line(e)}); "
                           f"e.g. {AUTO_AUGMENT}") from None
    check_images(train + val + check, "--data", options.workers)
    fixed = lambda samples: Loader(Images(samples, norm.transform()), options, shuffle=False, shard=False)  # noqa: E731
    sample = train if len(train) <= AGREEMENT_IMAGES else random.Random(options.seed).sample(train, AGREEMENT_IMAGES)
    return ImageFolderData(names, Loader(Images(train, augment), options, shuffle=True, shard=True), fixed(val),
                           fixed(check) if check else None, fixed(sample))


def load_test_folder(root: str | Path, classes: list[str], norm: Normalization,
                     options: LoaderOptions | None = None) -> Loader:
    """A held-out folder DIR/CLASS/*.png with the same class folders as the training data; checked now."""
    options = options or LoaderOptions()
    root = Path(root)
    if not root.is_dir():
        raise FxPruneError(f"--test {root}: no such folder")
    found = _classes(root, "--test")
    if found != classes:
        raise FxPruneError(f"--test {root}: its class folders ({', '.join(found[:10])}) are not those of --data "
                           f"({', '.join(classes[:10])})")
    samples = _samples(root, classes)
    check_images(samples, "--test", options.workers)
    return Loader(Images(samples, norm.transform(), "--test"), options, shuffle=False, shard=False)


def check_images(samples: list[tuple[str, int]], option: str, workers: int = 0) -> None:
    """Open and decode every image once (in `workers` processes), naming the first that fails."""
    checks = DataLoader(_Check(samples), batch_size=64, num_workers=workers, collate_fn=_as_list)
    for errors in checks:
        bad = next((e for e in errors if e), None)
        if bad:
            raise FxPruneError(f"{option}: cannot read image {bad}")


class _Check(Dataset):
    def __init__(self, samples):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> str | None:
        from PIL import Image

        path = self.samples[i][0]
        try:
            with Image.open(path) as image:
                image.draft("RGB", (64, 64))  # JPEGs decode at a reduced scale: a check, not the image
                image.convert("RGB")
        except Exception as e:  # noqa: BLE001 - the file is named in one line
            return f"{path}: {first_line(e) or type(e).__name__}"
        return None


def _as_list(batch: list) -> list:
    return batch


def _read(path: str, option: str):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as e:  # noqa: BLE001 - a file changed after the check is named in one line
        raise FxPruneError(f"{option}: cannot read image {path}: {first_line(e) or type(e).__name__}") from None


def _classes(folder: Path, option: str) -> list[str]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, is_image_file

    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise FxPruneError(f"{option} {folder}: no class folders (write DIR/CLASS/image.png, or DIR/train/CLASS/... "
                           "and DIR/val/CLASS/...)")
    empty = [n for n in names if not any(is_image_file(str(f)) for f in (folder / n).rglob("*"))]
    if empty:
        raise FxPruneError(f"{option} {folder}: class folder {empty[0]} holds no images "
                           f"({', '.join(IMG_EXTENSIONS)})")
    return names


def _samples(folder: Path, classes: list[str]) -> list[tuple[str, int]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    return make_dataset(str(folder), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS)


def _split(samples: list[tuple[str, int]], val_split: float, seed: int):
    """Per class, a seeded `val_split` share (at least one image) for validation."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([label for _, label in samples])
    train, val = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        k = max(1, round(val_split * len(idx))) if len(idx) > 1 else 0
        val += idx[:k]
        train += idx[k:]
    return [samples[i] for i in sorted(train)], [samples[i] for i in sorted(val)]
