"""The parallel zoo runner when the OS kills a worker (as the out-of-memory killer does)."""

import os
import time

from fxprune.runners.zoo import ZooEntry
from fxprune.runners.zoo_run import parallel_rows


def dies_on_big(entry: ZooEntry) -> dict:
    """A stand-in for zoo.check, run in spawned workers: tv:big's worker is killed; the others take
    a moment, so one of them is usually in flight beside it and dies with the pool."""
    if entry.id == "tv:big":
        time.sleep(0.5)
        os._exit(9)
    time.sleep(0.3)
    return {"model": entry.id, "status": "ok", "seconds": 0.3}


def test_a_killed_worker_costs_only_its_model_and_the_run_goes_on():
    todo = [ZooEntry(f"tv:{name}") for name in ("a", "b", "big", "c", "d", "e")]
    rows = [row for row, _ in parallel_rows(todo, 2, dies_on_big, "fold")]
    # every model gets exactly one row: those killed beside tv:big ran again, alone
    assert sorted(r["model"] for r in rows) == sorted(e.id for e in todo)
    assert {r["model"]: r["status"] for r in rows} == {"tv:a": "ok", "tv:b": "ok", "tv:big": "error",
                                                       "tv:c": "ok", "tv:d": "ok", "tv:e": "ok"}
    big = next(r for r in rows if r["model"] == "tv:big")
    assert big["pipeline"] == "fold" and "killed (by the OS, most often for lack of memory)" in big["reason"]
