"""A user's weights into a model: state_dicts, `{"state_dict": ...}` / `{"model": ...}` checkpoints and
safetensors, read with `torch.load(weights_only=True)`; a whole pickled module only when trusted.

A key check is strict: missing, unexpected and mis-shaped keys are listed in one error. With a new
head (`new_head=True`) every weight but the head's is loaded and the head's keys are named.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from fxprune.core.errors import FxPruneError, first_line

WRAPPERS = ("state_dict", "model", "model_state_dict")


def read_state(path: str | Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, by key (a leading `module.` of DataParallel dropped)."""
    path = Path(path)
    if not path.is_file():
        raise FxPruneError(f"--weights {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(str(path)), path)
        except Exception as e:  # noqa: BLE001 - named in one line
            raise FxPruneError(f"--weights {path}: not a readable safetensors file ({first_line(e)})") from None
    _check_format(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):
            raise FxPruneError(f"--weights {path}: not a file torch.save wrote (or a damaged one)") from None
        if not trust_pickle:
            raise FxPruneError(
                f"--weights {path}: the file holds pickled Python objects (a whole saved model?), not only tensors; "
                "loading it runs code from the file. Save model.state_dict() instead, or pass --trust-pickle "
                "if you trust where the file comes from") from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - named in one line
        raise FxPruneError(f"--weights {path}: cannot read it ({type(e).__name__}: {first_line(e)})") from None
    return _unwrap(obj, path)


LEGACY = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # torch.save before 1.6: its magic number


def _check_format(path: Path) -> None:
    """torch.save's zip archive (or its format before torch 1.6), else one line saying what the file is,
    before anything is unpickled: a raw pickle runs its code while it loads, whatever torch.load is told."""
    with path.open("rb") as f:
        head = f.read(len(LEGACY))
    if zipfile.is_zipfile(path) or head == LEGACY:
        return
    if head.startswith(b"PK\x03\x04"):
        raise FxPruneError(f"--weights {path}: a zip archive cut short or damaged (its end is missing or unreadable): "
                           "copy or save the file again")
    if head.startswith(b"\x80"):
        raise FxPruneError(f"--weights {path}: a raw pickle (pickle.dump), not a file torch.save wrote; it was not "
                           "loaded, since unpickling it would run any code it holds (--trust-pickle allows only "
                           "torch.save's files): save it with torch.save(model.state_dict(), PATH)")
    raise FxPruneError(f"--weights {path}: not a file torch.save wrote (or a damaged one)")


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    while isinstance(obj, dict) and not _is_state(obj):
        inner = next((obj[k] for k in WRAPPERS if k in obj), None)
        if inner is None:
            break
        obj = inner.state_dict() if isinstance(inner, nn.Module) else inner
    if not isinstance(obj, dict) or not obj or not _is_state(obj):
        raise FxPruneError(f"--weights {path}: holds no state_dict (a dict of tensors, or one under a key "
                           f"{', '.join(map(repr, WRAPPERS))})")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _is_state(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def head_of(model: nn.Module) -> str:
    """Module path of the classifier: timm's pretrained_cfg names it; otherwise the last conv/linear."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    names = dict(model.named_modules())
    if isinstance(name, str) and name in names:
        return name
    layers = [n for n, m in names.items() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if not layers:
        raise FxPruneError(f"{type(model).__name__} has no conv/linear layer to take as its head")
    return layers[-1]


def load_state(model: nn.Module, state: dict[str, torch.Tensor], *, new_head: bool = False,
               origin: str = "--weights") -> list[str]:
    """Load `state` into `model` (in place) with a strict key check; returns the keys left out
    (the old head's, with `new_head`, where its shape differs from the model's)."""
    target = model.state_dict()
    state = dict(state)
    left_out = []
    if new_head:
        head = head_of(model) + "."
        left_out = sorted(k for k in state if k.startswith(head) and k in target and state[k].shape != target[k].shape)
        for k in left_out:
            del state[k]
    missing = [k for k in target if k not in state and k not in left_out and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in state
              if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(v)} {what}: {', '.join(v[:4])}{', ...' if len(v) > 4 else ''}"
                 for what, v in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)) if v]
        hint = ("; a checkpoint with another number of classes loads with --num-classes N"
                if shapes and not new_head else "")
        raise FxPruneError(f"{origin} does not fit {type(model).__name__}: {'; '.join(parts)}{hint}")
    with torch.no_grad():
        model.load_state_dict(state, strict=False)  # strict above, but old files lack num_batches_tracked
    return left_out


def zero_head(model: nn.Module) -> None:
    """Set the head's weight and bias to zero (in place), for a new head before transfer: it then trains
    from the same start every run, and fast, where timm's init of a small head can leave the scales
    moving under logits that are still noise (tests/test_pretrained.py holds the two apart)."""
    with torch.no_grad():
        for p in model.get_submodule(head_of(model)).parameters(recurse=False):
            p.zero_()
