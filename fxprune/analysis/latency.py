"""Measured latency: of one layer shape (timed once per machine and cached on disk) and of a model.

A model's latency is predicted as the sum of its conv/linear layers' times, as fold will leave them
(fxprune.analysis.layer_shapes), plus the rest of the model (activations, pooling, adds, and what
fold removes: BatchNorm, scales), measured once as the whole model's time minus its layers' times
as they are, and then held fixed: removing channels only makes that rest cheaper, so the prediction
errs on the slow side.

The cache is one JSON file per device, torch version and thread count (`LatencyTable.path`), under
$FXPRUNE_CACHE (default ~/.cache/fxprune): a new torch or another machine starts a new table, and
a file whose header names another device, torch or thread count is not read.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fxprune.analysis.counting import propagate_shapes
from fxprune.analysis.layer_shapes import Layer, current_layers, folded_layers
from fxprune.core.io import atomic_write_text

Timer = Callable[[nn.Module, tuple], float]  # seconds of one call of module(*inputs)


def median_time(module: nn.Module, inputs: tuple, repeats: int = 7, warmup: int = 2) -> float:
    """Median seconds of `module(*inputs)` under inference_mode over `repeats` calls after `warmup`."""
    cuda = any(isinstance(x, torch.Tensor) and x.is_cuda for x in inputs)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            module(*inputs)
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} ({os.cpu_count()} cpus)"


class LatencyTable:
    """Seconds per layer shape on one device, measured on first use and kept on disk.

    `timer` times a module on inputs (default: median_time); tests pass a fake one. `cache_dir`
    None uses $FXPRUNE_CACHE or ~/.cache/fxprune; `persist=False` keeps the table in memory only.
    """

    def __init__(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 timer: Timer | None = None, cache_dir: str | Path | None = None, persist: bool = True):
        self.device, self.dtype = torch.device(device), dtype
        self.timer = timer or median_time
        self.persist = persist
        self.header = {"device": device_name(self.device), "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "dtype": str(dtype).removeprefix("torch.")}
        root = Path(cache_dir or os.environ.get("FXPRUNE_CACHE") or Path.home() / ".cache" / "fxprune")
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", "-".join(str(v) for v in self.header.values())).strip("-")
        self.path = root / "latency" / f"{slug}.json"
        self.times: dict[str, float] = self._load()
        self._new = 0

    def _load(self) -> dict[str, float]:
        if not self.persist or not self.path.exists():
            return {}
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # an unreadable table is measured again, not trusted
        return saved.get("times", {}) if saved.get("header") == self.header else {}

    def layer(self, layer: Layer) -> float:
        """Seconds of one call of `layer` (timed on first use)."""
        key = layer.key()
        if key not in self.times:
            module, x = layer.build(self.dtype, self.device)
            self.times[key] = self.timer(module, (x,))
            self._new += 1
        return self.times[key]

    def layers(self, layers: list[Layer]) -> float:
        return sum(self.layer(layer) for layer in layers)

    def model(self, module: nn.Module, inputs: tuple) -> float:
        """Seconds of one call of a whole model (not cached: models change)."""
        return self.timer(module, inputs)

    def save(self) -> None:
        """Write the new measurements (atomically; merged with what another process saved meanwhile)."""
        if not self.persist or not self._new:
            return
        merged = {**self._load(), **self.times}
        atomic_write_text(self.path, json.dumps({"header": self.header, "times": merged}, indent=0, sort_keys=True))
        self._new = 0


def table_for(given: LatencyTable | None, module: nn.Module) -> LatencyTable:
    """The table a pass uses: the one given as `latency=`, else the cached one for the device the
    module's weights are on (the CPU for a module without weights)."""
    if given is not None:
        return given
    return LatencyTable(next((p.device for p in module.parameters()), torch.device("cpu")))


def rest_and_folded(table: LatencyTable, gm, inputs: tuple) -> tuple[float, float]:
    """(seconds of everything in `gm` but its conv/linear layers, measured once; seconds of `gm` as
    fold will leave it, predicted). Runs ShapeProp on `gm`, which folded_layers then reads."""
    propagate_shapes(gm, inputs)
    rest = max(0.0, table.model(gm, inputs) - table.layers(current_layers(gm)))
    return rest, rest + table.layers(folded_layers(gm))


def folded_seconds(table: LatencyTable, gm, inputs: tuple) -> float:
    """Measured seconds of `gm` once fold has run on it (BatchNorm and scales folded, pairs that do
    not pay merged): the model a budget is about. `gm` itself is left as it is."""
    return _fold_and_time(table, copy.deepcopy(gm), inputs)


def _fold_and_time(table: LatencyTable, gm, inputs: tuple) -> float:
    """folded_seconds of a copy nobody else holds (fold may edit its layers)."""
    from fxprune.core.api import prune  # the fold pass, run as prune runs it

    return table.model(prune(gm, inputs, "fold"), inputs)


def measured_prefix(table: LatencyTable, gm, inputs: tuple, fraction: float, trial: Callable[[int], nn.Module],
                    bound: int, n: int) -> tuple[int, bool, dict]:
    """(k, met, stats) for a ranking of n cuts: the fewest first cuts k whose model `trial(k)` (a fresh
    copy of `gm` with them made) measures, folded, within `fraction` of `gm` folded. `bound` is where
    the table's prediction (it errs slow) says the budget holds: the bisection searches [0, bound], or
    [bound, n] where the model at `bound` still measures too slow. Each k is timed once."""
    goal = fraction * folded_seconds(table, gm, inputs)
    times: dict[int, float] = {}

    def measured(k: int) -> float:
        if k not in times:
            times[k] = _fold_and_time(table, trial(k), inputs)
        return times[k]

    lo, hi = (0, bound) if measured(bound) <= goal else (bound, n)
    k = first_fit(lambda k: measured(k) <= goal, lo, hi)
    return k, measured(k) <= goal, {"latency-ms": round(goal / fraction * 1e3, 3),
                                    "latency-ms-after": round(measured(k) * 1e3, 3)}


def first_fit(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """The smallest k in [lo, hi] with fits(k), by bisection (fits is taken as monotone: cutting more
    never makes a model slower); hi if none below it fits."""
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
