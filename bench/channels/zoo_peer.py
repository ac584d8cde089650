"""prune-channels{ratio=R} against Torch-Pruning's MetaPruner at the same ratio, model by model.

    .venv/bin/python -m bench.channels.zoo_peer zoo_configs/torchvision.toml --out bench/channels/results/tv.jsonl

Per model and tool: status (ok: runs, output shape kept, params fell; otherwise the error), params
after, and the wall time of the pruning call alone (1 thread; a call is stopped after LIMIT_S; the
process measuring a model may hold --memory-gib of address space, beyond that an allocation fails and is that tool's error). Also
fxprune's lossless check (zeroed channels are removed and the outputs do not change). Random
weights (fxprune.runners.zoo.wake).
Resumable: models already in --out are skipped.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import resource
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

import fxprune
from fxprune.analysis.channels import analyse, as_removed, zero
from fxprune.core.errors import first_line
from fxprune.core.api import traced_for_passes
from fxprune.runners.models import create
from fxprune.core.verify import output_error
from fxprune.runners.zoo import load, wake


def classifier(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The layer whose outputs are the logits (Torch-Pruning must be told to keep it)."""
    if hasattr(model, "get_classifier") and isinstance(model.get_classifier(), torch.nn.Module):
        head = model.get_classifier()
        return [head] if any(True for _ in head.parameters()) else []
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    return layers[-1:]


LIMIT_S = 600  # per tool and model; Torch-Pruning's dependency search never ends on some models
MEMORY_GIB = 11  # default address-space limit of the process measuring one model (--memory-gib):
# Torch-Pruning grew past 24 GiB on timm:efficientformerv2_s0 and the kernel killed the run


class OutOfTime(BaseException):
    """Not an Exception: a tool's own `except Exception` (Torch-Pruning's shape inference has them)
    must not swallow the time limit and go on."""


def _out_of_time(signum, frame):
    raise OutOfTime(f"gave up after {LIMIT_S} s")


def attempt(prune, model, x, shape: torch.Size) -> dict:
    params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _out_of_time)
    try:
        signal.alarm(LIMIT_S)
        try:
            pruned = prune(model, x)
        finally:
            signal.alarm(0)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            same = pruned(x).shape == shape
        after = sum(p.numel() for p in pruned.parameters())
        status = "ok" if same and after < params else "shape-changed" if not same else "no-gain"
        return {"status": status, "params_after": after, "seconds": round(seconds, 2)}
    except (Exception, OutOfTime) as e:  # noqa: BLE001 - the failure is the result
        text = first_line(e)[:160]
        return {"status": "error", "reason": f"{type(e).__name__}: {text}",
                "seconds": round(time.perf_counter() - start, 2)}


def zeroed_channels_check(model, x, heads: str = "whole") -> dict:
    """fxprune's lossless check: zero half the channels of every prunable group, prune-channels
    with l1 importance must remove exactly those and keep the outputs (norms over channels computing
    their statistics without them: channels.as_removed). `heads`: prune-channels' option."""
    try:
        gm = traced_for_passes(model)  # a copy, as prune() sees it: the groups it will cut
        graph = analyse(gm, (x,), heads)
        chosen = {c for g in graph.prunable for c in g.classes[:g.size - max(1, g.size // 2)]}
        zero(graph, chosen)
        with torch.no_grad():
            reference = as_removed(graph, chosen)(x)
        small = fxprune.prune(gm, x, f"prune-channels{{criterion=l1 ratio=0.5 heads={heads}}}")
        removed = fxprune.history(small)[-1].stats["channels-before"] - fxprune.history(small)[-1].stats["channels-after"]
        with torch.no_grad():
            err = output_error(small(x), reference)
        ok = removed == len(chosen) > 0 and err.ok()
        return {"status": "ok" if ok else "mismatch", "zeroed": len(chosen), "removed": removed,
                "rel_l2_error": err.rel_l2}
    except Exception as e:  # noqa: BLE001
        return {"status": "error", "reason": f"{type(e).__name__}: {str(e).strip()[:160]}"}


def fxprune_prune(ratio: float):
    return lambda model, x: fxprune.prune(model, x, f"prune-channels{{ratio={ratio}}}")


def tp_prune(ratio: float):
    def run(model, x):
        import torch_pruning as tp

        model = copy.deepcopy(model)
        for p in model.parameters():
            p.requires_grad_(True)
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=classifier(model))
        pruner.step()
        return model
    return run


def measure(model_id: str, input_size: tuple[int, ...], ratio: float, memory_gib: int, peer: dict | None) -> dict:
    """One model, both tools and the lossless check; runs in a fresh process (see main). `peer`:
    Torch-Pruning's result from an earlier run (--peer-from), reused instead of running it again."""
    torch.set_num_threads(1)
    resource.setrlimit(resource.RLIMIT_AS, (memory_gib << 30, memory_gib << 30))
    torch.manual_seed(0)
    row = {"model": model_id, "ratio": ratio}
    x = torch.randn(1, *input_size)
    try:
        model = wake(create(model_id)).eval()
        with torch.no_grad():
            shape = model(x).shape
    except Exception as e:  # noqa: BLE001
        row["error"] = f"cannot build or run: {e}"
        return row
    row["params_before"] = sum(p.numel() for p in model.parameters())
    row["fxprune"] = attempt(fxprune_prune(ratio), model, x, shape)
    row["torch_pruning"] = peer if peer is not None else attempt(tp_prune(ratio), model, x, shape)
    row["fxprune_lossless"] = zeroed_channels_check(model, x)
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--memory-gib", type=int, default=MEMORY_GIB, help="address space per model (GiB)")
    ap.add_argument("--models", nargs="*", help="only these model ids (default: all of the config)")
    ap.add_argument("--peer-from", type=Path, help="take Torch-Pruning's rows from this earlier results file "
                                                  "(same ratio) instead of running it again")
    args = ap.parse_args(argv)
    peers = {}
    for line in args.peer_from.read_text().splitlines() if args.peer_from else []:
        row = json.loads(line)
        if row.get("ratio") == args.ratio and "torch_pruning" in row:
            peers[row["model"]] = row["torch_pruning"]
    out = Path(args.out)
    done = set()
    for line in out.read_text().splitlines() if out.exists() else []:
        try:
            done.add(json.loads(line)["model"])
        except json.JSONDecodeError:  # a torn last line of a killed run: that model runs again
            pass
    for entry in load(args.config):
        if entry.id in done or entry.skip or args.models and entry.id not in args.models:
            continue
        # A fresh process per model: memory one model (or Torch-Pruning) leaves behind must not
        # make the next one fail, and a run the kernel kills is that model's result, not the end.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                row = pool.submit(measure, entry.id, entry.input_size, args.ratio, args.memory_gib,
                                  peers.get(entry.id)).result()
            except BrokenProcessPool:
                row = {"model": entry.id, "ratio": args.ratio,
                       "error": "the process was killed (out of the machine's memory)"}
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(entry.id, *(row.get(k, {}).get("status") for k in ("fxprune", "torch_pruning", "fxprune_lossless")),
              flush=True)


if __name__ == "__main__":
    main()
