"""The checkpoint `fxprune transfer` keeps beside --out: written atomically after every try, read
back by --resume. GraphModules are pickled with their nodes' metadata, which fx's own pickling drops
(it regenerates the graph from code) and the passes read (which layer a node came from, its role)."""

from __future__ import annotations

import io
from pathlib import Path

import torch
import torch.fx as fx

from fxprune.core.errors import FxPruneError
from fxprune.core.io import atomic_write


def write_checkpoint(path: Path, settings: dict, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save({"settings": settings, "state": _pack(state)}, tmp))


def read_checkpoint(path: Path, settings: dict, device: torch.device) -> dict:
    """The state a checkpoint holds, where the run that wrote it had these `settings` (--workers may differ)."""
    try:
        saved = torch.load(path, map_location=device, weights_only=False)  # our own file: GraphModules
    except Exception as e:  # noqa: BLE001 - named in one line
        raise FxPruneError(f"--resume: cannot read {path} ({type(e).__name__}); delete it to start over") from None
    differ = [k for k in settings if k != "workers" and saved["settings"].get(k) != settings[k]]
    if differ:
        k = differ[0]
        raise FxPruneError(f"--resume: {path} was written with --{k.replace('_', '-')} {saved['settings'].get(k)}, "
                           f"not {settings[k]}: give the same arguments, or delete it to start over")
    return _unpack(saved["state"])


class _Graph:
    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.meta = {n.name: {k: v for k, v in n.meta.items() if _picklable(v)} for n in gm.graph.nodes}


def _picklable(value) -> bool:
    """Whether torch.save takes a node's metadata value (fake tensors and ShapeProp's tensor_meta do not;
    the passes that need them recompute them)."""
    try:
        torch.save(value, io.BytesIO())
    except Exception:  # noqa: BLE001 - anything that does not save is left out
        return False
    return True


def _pack(obj):
    if isinstance(obj, fx.GraphModule):
        return _Graph(obj)
    if isinstance(obj, dict):
        return {k: _pack(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_pack(v) for v in obj)
    return obj


def _unpack(obj):
    if isinstance(obj, _Graph):
        for node in obj.gm.graph.nodes:
            node.meta.update(obj.meta.get(node.name, {}))
        return obj.gm
    if isinstance(obj, dict):
        return {k: _unpack(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unpack(v) for v in obj)
    return obj
