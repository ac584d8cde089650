"""Batch runs over a zoo config: one JSON line per finished model, resumable, optionally parallel."""

from __future__ import annotations

import csv
import ctypes
import io
import json
import os
import signal
import sys
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from multiprocessing import get_context
from pathlib import Path

from tabulate import tabulate

from fxprune.core.io import atomic_write_text
from fxprune.runners.zoo import ZooEntry, check, died_row
from fxprune.runners.zoo_ray import check_address, ray_rows

RESULTS = "results.jsonl"
LAYERS = "layers"
MAX_TIME_LIMIT = 86_400  # a day: longer is no limit in practice, and inf overflows the alarm timer (time_t)
SUMMARY_COLUMNS = ["model", "status", "params_before", "params_after", "params_saved", "macs_before",
                   "macs_after", "macs_saved", "rel_l2_error", "max_abs_error", "seconds", "reason"]
COMPILE_COLUMNS = ["compiled_rel_l2_error", "compile_seconds"]
FLOAT64_COLUMNS = ["float32_rel_l2_error", "float64_rel_l2_error"]  # where a row missed its float32 limit


def _one_thread(job: Callable[[ZooEntry], dict], entry: ZooEntry) -> dict:
    import torch

    torch.set_num_threads(1)  # parallel workers share the cores
    return job(entry)


def run_zoo(entries: list[ZooEntry], config: str, pipeline: str, out: str, *, resume: bool = False, jobs: int = 1,
            compile: bool = False, executor: str = "local", address: str | None = None,
            task_memory_gb: float | None = None, time_limit: float | None = None) -> list[dict]:
    """Run every entry (of the zoo config, or the patterns, that `config` names in the summary); rows
    are appended to OUT/results.jsonl as models finish, and
    each model's per-layer table is written to OUT/layers/. With `compile`, each pruned model is
    also compiled with inductor and checked against its eager outputs (see `zoo.check`).
    `executor`: "local" (`jobs` processes on this machine) or "ray" (one Ray task per model on the
    cluster at `address`, a local one by default; zoo_ray.py). `time_limit`: seconds a model may take
    (`zoo.check`'s; an error row past it)."""
    from fxprune.core.pipeline import Pipeline

    Pipeline.parse(pipeline)  # a typo fails here, not as an error row for every model
    if executor not in ("local", "ray"):
        raise ValueError(f"--executor {executor!r}: write local or ray")
    if executor == "local" and (address or task_memory_gb):
        raise ValueError("--address and --task-memory are for --executor ray")
    check_address(address)
    if not jobs >= 1:
        raise ValueError(f"--jobs {jobs}: give the number of models run at once, at least 1")
    if time_limit is not None and not 0 < time_limit <= MAX_TIME_LIMIT:
        raise ValueError(f"--time-limit {time_limit:g}: give the seconds a model may take, above 0"
                         + (f" and at most {MAX_TIME_LIMIT} (a day); leave it out for no limit" if time_limit > 0 else ""))
    out_dir = _out_dir(out)
    path = out_dir / RESULTS
    with _locked(out_dir):
        done = _read_rows(path, entries, pipeline) if resume else {}
        if not resume:
            path.unlink(missing_ok=True)
        todo = [e for e in entries if e.id not in done]
        finished = len(entries) - len(todo)
        _progress(f"[{finished}/{len(entries)}] running {', '.join(e.id for e in todo[:jobs])}")
        job = partial(check, pipeline=pipeline, layers_dir=out_dir / LAYERS, compile=compile, time_limit=time_limit)
        with open(path, "a") as log:
            rows = (_rows(todo, pipeline, jobs, job) if executor == "local" else
                    ray_rows(todo, partial(_one_thread, job), pipeline, address=address, memory_gb=task_memory_gb))
            for row, running in rows:
                log.write(json.dumps(row) + "\n")
                log.flush()
                os.fsync(log.fileno())
                done[row["model"]] = row
                finished += 1
                _progress(f"[{finished}/{len(entries)}] {row['model']}: {row['status']} ({row['seconds']} s)"
                          + (f"; running {', '.join(running)}" if running else ""))
        _progress("", last=True)
        rows = [done[e.id] for e in entries if e.id in done]
        write_summary(rows, out_dir, config, pipeline)
    return rows


def _out_dir(out: str) -> Path:
    """--out as a writable folder, or a ValueError saying what is wrong with it."""
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out}: is a file; name a folder for results.jsonl and the summaries")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create it ({e.strerror})") from None
    if not os.access(out_dir, os.W_OK):
        raise ValueError(f"--out {out}: not writable; name a folder you can write to")
    return out_dir


@contextmanager
def _locked(out_dir: Path):
    """Hold OUT/.lock for the run: a second run on the same --out is refused, not interleaved."""
    import fcntl

    with open(out_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"--out {out_dir}: another fxprune zoo run is writing there; wait for it or name "
                             "another folder") from None
        yield


def _progress(text: str, last: bool = False) -> None:
    """One status line, redrawn in place on a terminal; plain lines in a log."""
    if sys.stderr.isatty():
        print(f"\r{text}\033[K", end="\n" if last else "", file=sys.stderr, flush=True)
    elif text:
        print(text, file=sys.stderr, flush=True)


def _rows(todo: list[ZooEntry], pipeline: str, jobs: int, job: Callable[[ZooEntry], dict]):
    """(row, ids of the models now running) as models finish."""
    if jobs <= 1:
        for i, e in enumerate(todo):
            yield job(e), [n.id for n in todo[i + 1:i + 2]]
        return
    yield from parallel_rows(todo, jobs, partial(_one_thread, job), pipeline)


def parallel_rows(todo: list[ZooEntry], jobs: int, work: Callable[[ZooEntry], dict], pipeline: str):
    """`work` on each entry in `jobs` spawned processes: (row, ids now running) as models finish.

    A worker the OS kills (most often for memory: two big models at once) breaks the whole pool; the
    models then in flight run again one at a time after the others, and one that dies alone too gets
    an error row. The run goes on either way."""
    queue, retry = deque(todo), []
    while queue:
        retry += yield from _pool_rows(queue, jobs, work)
    for e in retry:
        if (yield from _pool_rows(deque([e]), 1, work)):
            yield died_row(e, pipeline, "its worker process was killed (by the OS, most often for lack of memory), "
                                        "also when run alone"), []


def _pool_rows(queue: deque, jobs: int, work):
    """Run entries from `queue` in one pool; returns the entries in flight if a worker dies."""
    # At most `jobs` models are submitted at a time, so every pending future is really running
    # (the pool would otherwise mark queued ones as running too).
    pending: dict = {}
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool:

        def fill() -> None:
            while queue and len(pending) < jobs:
                future = pool.submit(work, queue[0])  # taken off the queue only once submitted:
                pending[future] = queue.popleft()    # a broken pool refuses it, and it must not be lost

        try:
            fill()
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                rows, broken = [], False
                for f in finished:
                    try:
                        rows.append(f.result())
                    except BrokenProcessPool:
                        broken = True
                        continue
                    del pending[f]
                if not broken:
                    fill()
                for row in rows:
                    yield row, [e.id for e in pending.values()]
                if broken:
                    return list(pending.values())
            return []
        except BrokenProcessPool:  # raised by submit once the pool is broken
            return list(pending.values())


def die_with_parent(parent: int) -> None:
    """In a pool worker: ask Linux to kill this process when its parent dies (prctl PR_SET_PDEATHSIG), so a
    killed zoo run leaves no worker behind; exit at once if the parent is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown is all there is
        return
    if os.getppid() != parent:
        os._exit(1)


def _read_rows(path: Path, entries: list[ZooEntry], pipeline: str) -> dict[str, dict]:
    """Finished rows of an earlier run, for --resume. Lines that are not a row (a torn last line of a
    killed run, a line without a model) are dropped and the file is rewritten with one
    newline-terminated row per line. A row run with another pipeline than this run's is refused."""
    rows = {}
    if not path.exists():
        return rows
    text = path.read_text()
    lines = text.splitlines()
    good = []
    wanted = {e.id: e.pipeline or pipeline for e in entries}
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("model"), str) or "status" not in row:
            continue
        ran = row.get("pipeline")
        if ran is not None and row["model"] in wanted and ran != wanted[row["model"]]:
            raise ValueError(f"--resume: {path} holds {row['model']} run with pipeline '{ran}', not "
                             f"'{wanted[row['model']]}'; resume with that pipeline, or name a new --out")
        rows[row["model"]] = row
        good.append(line)
    if len(good) != len(lines) or (text and not text.endswith("\n")):
        atomic_write_text(path, "".join(f"{g}\n" for g in good))
    return rows


def _columns(rows: list[dict]) -> list[str]:
    compiled = any("compiled_rel_l2_error" in r for r in rows)
    wide = any("float64_rel_l2_error" in r for r in rows)
    return (SUMMARY_COLUMNS[:-2] + (FLOAT64_COLUMNS if wide else []) + (COMPILE_COLUMNS if compiled else [])
            + SUMMARY_COLUMNS[-2:])


def _with_reductions(row: dict) -> dict:
    """The row plus params_saved / macs_saved: the reduction in percent."""
    row = dict(row)
    for what in ("params", "macs"):
        if row.get(f"{what}_before"):
            row[f"{what}_saved"] = f"{100 * (1 - row[f'{what}_after'] / row[f'{what}_before']):.1f}%"
    return row


def summary_table(rows: list[dict], fmt: str = "github") -> str:
    def cell(row, c):
        v = row.get(c, "")
        if isinstance(v, int):
            return f"{v:,}"
        return f"{v:.2e}" if c.endswith("_error") and v != "" else v

    columns = _columns(rows)
    table = [[cell(_with_reductions(r), c) for c in columns] for r in rows]
    return tabulate(table, headers=columns, tablefmt=fmt, disable_numparse=True)


_ERROR_NOTE = {
    True: "The pipeline is lossless: rel_l2_error and max_abs_error are numerical error, and a model is `ok` only "
          "within its tolerance, of the original's float32 outputs or, where it misses that, of its float64 outputs "
          "(float64_rel_l2_error; float32_rel_l2_error: how far float32 itself takes the original).",
    False: "The pipeline is lossy: rel_l2_error and max_abs_error are the *expected change* of the outputs that "
           "pruning random weights causes, not a failure; `ok` means the outputs kept their shapes and params fell.",
}


def _lossless(pipeline: str) -> bool:
    from fxprune.core.pipeline import Pipeline

    return all(p.lossless for p in Pipeline.parse(pipeline).passes)


def write_summary(rows: list[dict], out_dir: Path, config: str, pipeline: str) -> None:
    counts = {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})}
    head = (f"# Zoo run: `{config}`\n\nPipeline: `{pipeline}`; random weights (zero-initialised parameters "
            "given small random values, BatchNorm given random statistics: `fxprune.runners.zoo.wake`), batch 1, "
            "float32, CPU.\n"
            f"MACs are multiply-accumulates. Status counts: {counts}.\n"
            + (_ERROR_NOTE[_lossless(pipeline)] + "\n")
            + ("Compiled: each pruned model through `torch.compile(fullgraph=True)` (inductor), "
               "`torch._dynamo.reset()` between models; compiled_rel_l2_error is against its eager outputs.\n"
               if "compiled_rel_l2_error" in _columns(rows) else "") + "\n")
    atomic_write_text(out_dir / "summary.md", head + summary_table(rows) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(rows), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(_with_reductions(r) for r in rows)
    atomic_write_text(out_dir / "summary.csv", buf.getvalue())
