"""Model ids used by the CLI and the zoo: `tv:NAME` (torchvision), `timm:NAME`, or
`path/to/file.py:factory` (a function returning an nn.Module). Random weights unless asked."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

from torch import nn

from fxprune.core.errors import FxPruneError


def create(model_id: str, *, num_classes: int | None = None, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build a model (random weights; `pretrained=True` asks timm/torchvision for theirs, which
    needs the network or their cache). `num_classes` builds it with a new head of that size."""
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if ".py:" in model_id or model_id.endswith(".py"):
        return _from_file(model_id, pretrained, kwargs)
    source, sep, name = model_id.partition(":")
    if not sep or source not in ("tv", "torchvision", "timm"):
        raise ValueError(f"model id {model_id!r}: write tv:NAME, timm:NAME or path/to/file.py:factory, "
                         "e.g. tv:resnet18 or timm:resnet50")
    _known(source, name)  # a wrong name fails here, before anything is built or downloaded
    build = _timm if source == "timm" else _torchvision
    if not pretrained:
        return build(name, False, kwargs)
    try:
        return build(name, True, kwargs)
    except Exception as e:  # noqa: BLE001 - offline: a download failure, named in one line
        raise FxPruneError(f"--pretrained: cannot get the pretrained weights of {model_id} ({type(e).__name__}; "
                           "offline?). Download them where there is a network and pass --weights PATH") from None


def _known(source: str, name: str) -> None:
    if source == "timm":
        import timm

        if name not in timm.list_models():
            close = timm.list_models(f"*{name}*")[:5]
            raise ValueError(f"timm has no model {name!r}" + (f"; close: {', '.join(close)}" if close else ""))
    else:
        import torchvision.models as tvm

        if name not in tvm.list_models():
            raise ValueError(f"torchvision has no model {name!r}; see torchvision.models.list_models()")


def _timm(name: str, pretrained: bool, kwargs: dict) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=pretrained, **kwargs)


def _torchvision(name: str, pretrained: bool, kwargs: dict) -> nn.Module:
    import torchvision.models as tvm

    if pretrained and "num_classes" in kwargs:  # torchvision refuses weights with another head size
        model = tvm.get_model(name, weights=None, **kwargs)
        reference = tvm.get_model(name, weights="DEFAULT", **{k: v for k, v in kwargs.items() if k != "num_classes"})
        from fxprune.runners.checkpoint import load_state

        load_state(model, reference.state_dict(), new_head=True, origin=f"torchvision's {name} weights")
        return model
    if not pretrained and "weights_backbone" in inspect.signature(tvm.get_model_builder(name)).parameters:
        kwargs = {"weights_backbone": None, **kwargs}  # segmentation/detection: no ImageNet backbone download
    return tvm.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)


def _from_file(model_id: str, pretrained: bool, kwargs: dict) -> nn.Module:
    file, _, factory = model_id.rpartition(":")
    path = Path(file)
    if not factory or not file.endswith(".py"):
        raise ValueError(f"model id {model_id!r}: write path/to/file.py:factory (a function returning an nn.Module)")
    if pretrained:
        raise ValueError(f"--pretrained applies to tv:/timm: models; load the weights of {model_id} with --weights")
    if not path.is_file():
        raise ValueError(f"model id {model_id!r}: no file {file}")
    spec = importlib.util.spec_from_file_location(f"fxprune_user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise ValueError(f"model id {model_id!r}: {file} defines no function {factory!r}")
    params = inspect.signature(fn).parameters
    if kwargs and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        missing = [k for k in kwargs if k not in params]
        if missing:
            raise ValueError(f"model id {model_id!r}: {factory}() takes no argument {missing[0]!r} "
                             f"(asked for by --{missing[0].replace('_', '-')})")
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model id {model_id!r}: {factory}() returned {type(model).__name__}, not an nn.Module")
    return model


def load_model(model_id: str, *, weights: str | None = None, num_classes: int | None = None,
               pretrained: bool = False, trust_pickle: bool = False) -> tuple[nn.Module, list[str]]:
    """A model in eval mode with its weights, and lines saying where they came from.

    `weights`: a state_dict file (see fxprune.runners.checkpoint), checked strictly; with `num_classes`
    every weight but the old head's is loaded. `pretrained`: timm's / torchvision's own weights."""
    if weights and pretrained:
        raise ValueError("give --weights PATH or --pretrained, not both")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"--num-classes {num_classes}: must be at least 1")
    model = create(model_id, num_classes=num_classes, pretrained=pretrained)
    if pretrained:
        return model.eval(), [f"weights: {model_id}'s pretrained weights" +
                              (f", new {num_classes}-class head" if num_classes else "")]
    if not weights:
        return model.eval(), ["weights: random (nothing is downloaded; --weights PATH loads yours)"]
    from fxprune.runners.checkpoint import load_state, read_state, zero_head

    state = read_state(weights, trust_pickle=trust_pickle)
    left_out = load_state(model, state, new_head=num_classes is not None, origin=f"--weights {weights}")
    note = f"weights: {len(state) - len(left_out)} tensors from {weights}"
    if left_out:
        zero_head(model)
        note += (f"; left out for the new {num_classes}-class head ({', '.join(left_out)}), which starts at zero "
                 "(a linear probe's init: it trains fast and the same every run)")
    return model.eval(), [note]
