"""Model ids used by the CLI and the zoo: `tv:NAME` (torchvision) and `timm:NAME`, random weights."""

from __future__ import annotations

from torch import nn


def create(model_id: str, **kwargs) -> nn.Module:
    """Build a model with random weights (nothing is downloaded)."""
    source, sep, name = model_id.partition(":")
    if not sep or source not in ("tv", "torchvision", "timm"):
        raise ValueError(f"model id {model_id!r}: write tv:NAME or timm:NAME, e.g. tv:resnet18 or timm:resnet50")
    if source == "timm":
        import timm

        if name not in timm.list_models():
            close = timm.list_models(f"*{name}*")[:5]
            raise ValueError(f"timm has no model {name!r}" + (f"; close: {', '.join(close)}" if close else ""))
        return timm.create_model(name, pretrained=False, **kwargs)
    import torchvision.models as tvm

    names = tvm.list_models()
    if name not in names:
        raise ValueError(f"torchvision has no model {name!r}; see torchvision.models.list_models()")
    return tvm.get_model(name, weights=None, **kwargs)
