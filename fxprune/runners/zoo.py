"""Model-zoo configs: zoo_configs/*.toml, one `[[model]]` table per model.

    [[model]]
    id = "tv:resnet50"          # tv:NAME or timm:NAME
    input-size = "3,224,224"    # optional, default 3,224,224
    pipeline = "..."            # optional: overrides the run's pipeline for this model
    rel-l2 = 1e-5               # optional: tolerance of the lossless check (relative L2 error)
    skip = "why"                # optional: the model is listed but not run, with the reason
    inputs = 2                  # optional: the model takes this many inputs of input-size (optical flow: 2)
    submodule = "backbone"      # optional: prune only this part (fxprune.prune_submodule) of a model that
                                # does not trace whole; the model gets a list of one image (torchvision
                                # detection) or, with inputs = N, N tensors; the part's outputs are compared
"""

from __future__ import annotations

import re
import signal
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REL_L2 = 1e-5  # the lossless check of a full-rank pipeline: relative L2 error of the logits
_KEYS = {"id", "input-size", "pipeline", "rel-l2", "skip", "submodule", "inputs"}


@dataclass(frozen=True)
class ZooEntry:
    id: str
    input_size: tuple[int, ...] = (3, 224, 224)
    pipeline: str | None = None
    rel_l2: float = REL_L2
    skip: str | None = None
    submodule: str | None = None
    inputs: int = 1


def load(path: str | Path) -> list[ZooEntry]:
    """Entries of one zoo config file, every value checked; raises ValueError naming the file, the
    entry and the key."""
    from fxprune.core.pipeline import Pipeline

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"zoo config {path}: {e}") from None
    if set(data) - {"model"}:
        raise ValueError(f"zoo config {path}: unknown top-level keys {sorted(set(data) - {'model'})}; a config is a "
                         "list of [[model]] tables")
    raws = data.get("model", [])
    if not isinstance(raws, list) or not all(isinstance(r, dict) for r in raws):
        raise ValueError(f"zoo config {path}: 'model' must be a list of [[model]] tables")
    entries, seen = [], {}
    for i, raw in enumerate(raws, 1):
        where = f"zoo config {path}, model #{i}"
        unknown = set(raw) - _KEYS
        if "id" not in raw or unknown:
            problem = f"unknown keys {sorted(unknown)}" if unknown else "no id"
            raise ValueError(f"{where}: {problem}; keys are {sorted(_KEYS)}")
        for key in ("id", "input-size", "pipeline", "skip", "submodule"):
            if key in raw and not isinstance(raw[key], str):
                raise ValueError(f"{where}: '{key}' must be a string, got {raw[key]!r}")
        where = f"zoo config {path}, model #{i} ({raw['id']})"
        try:
            size = tuple(int(v) for v in raw.get("input-size", "3,224,224").split(","))
        except ValueError:
            size = ()
        if not size or min(size) < 1:
            raise ValueError(f"{where}: 'input-size' must be positive integers separated by commas, e.g. "
                             f"\"3,224,224\", got {raw['input-size']!r}")
        rel_l2 = raw.get("rel-l2", REL_L2)
        if isinstance(rel_l2, bool) or not isinstance(rel_l2, (int, float)) or not rel_l2 > 0:
            raise ValueError(f"{where}: 'rel-l2' must be a positive number such as 1e-5, got {rel_l2!r}")
        if raw.get("pipeline") is not None:
            try:
                Pipeline.parse(raw["pipeline"])
            except ValueError as e:
                raise ValueError(f"{where}: 'pipeline': {e}") from None
        inputs = raw.get("inputs", 1)
        if isinstance(inputs, bool) or not isinstance(inputs, int) or inputs < 1:
            raise ValueError(f"{where}: 'inputs' must be a positive integer (the number of model inputs), got {inputs!r}")
        if raw["id"] in seen:
            raise ValueError(f"{where}: the same id as model #{seen[raw['id']]}; give each model once")
        seen[raw["id"]] = i
        entries.append(ZooEntry(raw["id"], size, raw.get("pipeline"), float(rel_l2), raw.get("skip"),
                                raw.get("submodule"), inputs))
    if not entries:
        raise ValueError(f"zoo config {path} lists no [[model]]")
    return entries


def select(patterns: list[str], exclude: list[str] = ()) -> list[ZooEntry]:
    """Entries for model patterns instead of a config: `tv:GLOB` (torchvision's classification
    models), `timm:GLOB` (timm's registry, its own wildcard rules); `exclude` globs drop ids (with or
    without their `tv:`/`timm:` prefix). A pattern matching nothing is an error naming it."""
    from fnmatch import fnmatch

    ids: list[str] = []
    for pattern in patterns:
        source, sep, glob = pattern.partition(":")
        if not sep or source not in ("tv", "timm") or not glob:
            raise ValueError(f"model pattern {pattern!r}: write tv:GLOB or timm:GLOB, e.g. 'timm:resnet*' or 'tv:*', "
                             "or name a zoo config (.toml)")
        if source == "timm":
            import timm

            names = timm.list_models(glob)
        else:
            import torchvision.models as tvm

            names = tvm.list_models(module=tvm, include=glob)
        found = [f"{source}:{n}" for n in names]
        if not found:
            raise ValueError(f"model pattern {pattern!r} matches no model")
        ids += [i for i in found if i not in ids]
    kept = [i for i in ids if not any(fnmatch(i, x) or fnmatch(i.partition(":")[2], x) for x in exclude)]
    if not kept:
        raise ValueError(f"--exclude {' '.join(exclude)} leaves none of the {len(ids)} models matched")
    return [ZooEntry(i) for i in kept]


def wake(model):
    """Make every layer matter to the logits of a randomly initialised model, so that comparing
    logits tests all of it: parameters initialised to exactly zero (zero-init heads, layer scales,
    norm biases) get N(0, 0.02) values and BatchNorm gets non-trivial running statistics."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and not p.any():
                p.normal_(0, 0.02)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model


def died_row(entry: ZooEntry, pipeline: str, reason: str) -> dict:
    """The row of a model whose worker process died (no measurement to report)."""
    return {"model": entry.id, "pipeline": entry.pipeline or pipeline, "status": "error", "seconds": 0.0,
            "reason": reason}


def whole_inputs(entry: ZooEntry) -> tuple:
    """What the whole model of an entry is called with: a list of one random image for a part of a
    detector (`submodule` with one input), else `inputs` random batches of one."""
    import torch

    if entry.submodule and entry.inputs == 1:
        return ([torch.rand(*entry.input_size)],)
    return tuple(torch.randn(1, *entry.input_size) for _ in range(entry.inputs))


def example(entry: ZooEntry, model):
    """(the module an entry prunes, its example inputs): the model with random inputs of input-size, or,
    with `submodule`, that part with what it receives when the model runs on `whole_inputs` (the seed
    is set first, so they are the same each time)."""
    import torch

    from fxprune.core.submodule import submodule_inputs

    if entry.submodule:
        torch.manual_seed(0)
        return model.get_submodule(entry.submodule), submodule_inputs(model, entry.submodule, whole_inputs(entry))
    return model, whole_inputs(entry)


@contextmanager
def _time_limit(seconds: float | None):
    """Raise TimeoutError in this (main) thread once `seconds` have passed: between two Python-level
    steps, so one long torch call finishes first."""
    if seconds is None:
        yield
        return

    def stop(signum, frame):
        raise TimeoutError(f"stopped after --time-limit {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check(entry: ZooEntry, pipeline: str, layers_dir: Path | None = None, compile: bool = False,
          time_limit: float | None = None) -> dict:
    """Run `pipeline` on one zoo model: sizes before/after, output error, wall time, status.

    Status: a lossless pipeline is "ok" when the logits match within the entry's tolerance
    ("mismatch" otherwise, "vacuous" when they are all zero); a lossy one is "ok" when the outputs
    keep their shapes and params fell ("no-gain", "shape-changed" otherwise). Failures are "error"
    with the reason. With `layers_dir`, the per-layer savings table is written there (.md and .csv).
    With `compile`, the pruned model is also compiled (inductor, fullgraph) and must match its eager
    outputs within the lossless tolerance ("compile-mismatch" otherwise). With `time_limit`, a model
    still running after that many seconds is stopped: an error row (TimeoutError) and the run goes on.
    """
    import time

    from fxprune.core.errors import first_line

    if entry.skip:
        return {"model": entry.id, "status": "skipped", "reason": entry.skip, "seconds": 0.0}
    pipeline = entry.pipeline or pipeline
    start = time.perf_counter()
    try:
        with _time_limit(time_limit):
            row = _measure(entry, pipeline, layers_dir, compile)
    except Exception as e:  # noqa: BLE001 - one model's failure is recorded, the run goes on
        row = {"model": entry.id, "pipeline": pipeline, "status": "error",
               "reason": f"{type(e).__name__}: {first_line(e)}"}
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _measure(entry: ZooEntry, pipeline: str, layers_dir: Path | None, compile: bool) -> dict:
    """check's row, less its time (see check)."""
    import torch
    from torch.utils._pytree import tree_leaves

    from fxprune.core.api import prune
    from fxprune.core.submodule import prune_submodule
    from fxprune.core.io import atomic_write_text
    from fxprune.runners.models import create
    from fxprune.core.pipeline import Pipeline
    from fxprune.analysis.report import savings
    from fxprune.core.verify import output_error, run_model

    torch.manual_seed(0)
    whole = wake(create(entry.id)).eval()
    model, x = example(entry, whole)
    if entry.submodule:  # the part is pruned and compared; the whole must still run
        torch.manual_seed(0)
        inputs = whole_inputs(entry)
        pruned = prune_submodule(whole, entry.submodule, inputs, pipeline)
        run_model(pruned, inputs)
        small = pruned.get_submodule(entry.submodule)
    else:
        small = prune(model, x, pipeline)
    reference = run_model(model, x)
    small_out = run_model(small, x)
    err = output_error(small_out, reference)
    report = savings(model, small, x)
    totals = report.totals
    row = {"model": entry.id, "pipeline": pipeline,
           "params_before": totals["params_before"], "params_after": totals["params_after"],
           "params_unused": sum(report.unused.values()), "macs_before": totals["macs_before"],
           "macs_after": totals["macs_after"],
           "max_abs_error": err.max_abs, "rel_l2_error": err.rel_l2, "rel_l2_limit": entry.rel_l2}
    if entry.submodule:
        row["submodule"] = entry.submodule
    if all(p.lossless for p in Pipeline.of(pipeline).passes):
        nonzero = any(t.abs().max() > 0 for t in tree_leaves(reference) if isinstance(t, torch.Tensor))
        row["status"] = "vacuous" if not nonzero else "ok" if err.rel_l2 < entry.rel_l2 else "mismatch"
        if row["status"] == "mismatch":
            row.update(float64_errors(model, x, reference, small_out))
            if row["float64_rel_l2_error"] < entry.rel_l2:
                row["status"] = "ok"
    else:
        shapes = [[tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
                  for out in (reference, run_model(small, x))]
        row["status"] = ("shape-changed" if shapes[0] != shapes[1] else
                         "ok" if row["params_after"] < row["params_before"] else "no-gain")
    if compile:
        row.update(compiled_check(small, x))
        if row["status"] == "ok" and row["compiled_rel_l2_error"] >= entry.rel_l2:
            row["status"] = "compile-mismatch"
    if layers_dir is not None:
        name = file_name(entry.id)
        atomic_write_text(Path(layers_dir) / f"{name}.md", f"# {entry.id}: `{pipeline}`\n\n"
                          f"{report.to_markdown()}\n")
        report.to_csv(Path(layers_dir) / f"{name}.csv")
    return row


def file_name(model_id: str) -> str:
    """A model id as one safe file name inside the layers folder: every character but letters, digits, '.',
    '-' and '_' (a path separator, ':') becomes '_', and no name starts with '.' (no '..', no hidden file):
    'tv:resnet18' -> 'tv_resnet18', '/models/../net.py:tiny' -> '_models_.._net.py_tiny'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", model_id).lstrip(".") or "_"


def float64_errors(model, x: tuple, reference, rewritten) -> dict:
    """The original model's float64 outputs against its float32 ones (`float32_rel_l2_error`: how far
    float32 itself takes it, the precision a float32 rewrite can be held to) and against the rewrite's
    (`float64_rel_l2_error`). Computed where the rewrite misses the limit against the float32 outputs: a
    rewrite within the limit of the exact (float64) outputs computes the model's function as well as the
    original does in float32, and its row is ok."""
    import copy

    from fxprune.core.verify import output_error, run_model

    exact = run_model(copy.deepcopy(model).double(), tuple(t.double() for t in x))
    return {"float32_rel_l2_error": output_error(reference, exact).rel_l2,
            "float64_rel_l2_error": output_error(rewritten, exact).rel_l2}


def compiled_check(model, x: tuple) -> dict:
    """Compile `model` with inductor (fullgraph) and compare with its eager outputs. Dynamo's caches
    are reset before and after: many models in one process would otherwise hit the recompile limit
    and silently run eagerly."""
    import time

    import torch

    from fxprune.core.errors import FxPruneError, first_line
    from fxprune.core.verify import output_error, run_model

    torch._dynamo.reset()
    start = time.perf_counter()
    try:
        compiled = torch.compile(model, fullgraph=True, backend="inductor")
        err = output_error(run_model(compiled, x), run_model(model, x))
    except Exception as e:  # noqa: BLE001 - named and re-raised as the model's failure
        raise FxPruneError(f"torch.compile(fullgraph=True) of the pruned model failed: {type(e).__name__}: "
                           f"{first_line(e)}") from e
    finally:
        torch._dynamo.reset()
    return {"compiled_rel_l2_error": err.rel_l2, "compile_seconds": round(time.perf_counter() - start, 2)}
