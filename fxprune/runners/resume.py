"""The checkpoint `fxprune transfer` keeps beside --out, read back by --resume: a folder holding
state.pt (the run's settings and state, replaced atomically after every try) and one file per model
that state holds. A model's file is written once, when the model first appears, and removed once the
state no longer holds it: the search keeps every descent step's model, so rewriting them all after
each try would cost time that grows with the depth of the search. GraphModules are pickled with
their nodes' metadata, which fx's own pickling drops (it regenerates the graph from code) and the
passes read (which layer a node came from, its role)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import torch
import torch.fx as fx

from fxprune.core.errors import FxPruneError
from fxprune.core.io import atomic_write

STATE = "state.pt"


class Checkpoint:
    def __init__(self, path: Path, settings: dict):
        self.path, self.settings = path, dict(settings)
        self.files: dict[str, fx.GraphModule] = {}  # model file name -> the model it holds
        self.count = 0  # the next model file's number

    def exists(self) -> bool:
        return (self.path / STATE).is_file()

    def write(self, state: dict) -> None:
        """Write the models that are new since the last write, then state.pt, then drop stale model files
        (so a run killed at any point leaves a state.pt whose models are all there)."""
        if not self.files and self.path.exists():  # a previous run's: this run starts over
            self.remove()
        self.path.mkdir(parents=True, exist_ok=True)
        held: dict[str, fx.GraphModule] = {}
        packed = self._pack(state, held)
        atomic_write(self.path / STATE, lambda tmp: torch.save({"settings": self.settings, "state": packed}, tmp))
        for name in set(self.files) - set(held):
            (self.path / name).unlink(missing_ok=True)
        self.files = held

    def read(self, device: torch.device) -> dict:
        """The state the checkpoint holds, where the run that wrote it had these settings (--workers may differ)."""
        try:
            saved = torch.load(self.path / STATE, map_location=device, weights_only=False)  # our own files
        except Exception as e:  # noqa: BLE001 - named in one line
            raise FxPruneError(f"--resume: cannot read {self.path / STATE} ({type(e).__name__}); delete "
                               f"{self.path} to start over") from None
        differ = [k for k in self.settings if k != "workers" and saved["settings"].get(k) != self.settings[k]]
        if differ:
            k = differ[0]
            raise FxPruneError(f"--resume: {self.path} was written with --{k.replace('_', '-')} "
                               f"{saved['settings'].get(k)}, not {self.settings[k]}: give the same arguments, "
                               "or delete it to start over")
        state = self._unpack(saved["state"], device)
        self.count = 1 + max((int(name.split("-")[1].split(".")[0]) for name in self.files), default=-1)
        return state

    def remove(self) -> None:
        if self.path.is_dir():
            shutil.rmtree(self.path)
        else:
            self.path.unlink(missing_ok=True)

    def _pack(self, obj, held: dict):
        if isinstance(obj, fx.GraphModule):
            name = next((n for n, m in self.files.items() if m is obj), None)
            if name is None:
                name, self.count = f"model-{self.count}.pt", self.count + 1
                atomic_write(self.path / name, lambda tmp: torch.save(_Graph(obj), tmp))
            held[name] = obj
            return _File(name)
        if isinstance(obj, dict):
            return {k: self._pack(v, held) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._pack(v, held) for v in obj)
        return obj

    def _unpack(self, obj, device: torch.device):
        if isinstance(obj, _File):
            if obj.name not in self.files:
                try:
                    graph = torch.load(self.path / obj.name, map_location=device, weights_only=False)
                except Exception as e:  # noqa: BLE001 - named in one line
                    raise FxPruneError(f"--resume: cannot read {self.path / obj.name} ({type(e).__name__}); "
                                       f"delete {self.path} to start over") from None
                for node in graph.gm.graph.nodes:
                    node.meta.update(graph.meta.get(node.name, {}))
                self.files[obj.name] = graph.gm
            return self.files[obj.name]
        if isinstance(obj, dict):
            return {k: self._unpack(v, device) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._unpack(v, device) for v in obj)
        return obj


class _File:
    def __init__(self, name: str):
        self.name = name


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
