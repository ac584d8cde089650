"""Batch runs over a zoo config: one JSON line per finished model, resumable, optionally parallel."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from tabulate import tabulate

from .io import atomic_write_text
from .zoo import ZooEntry, check, load

RESULTS = "results.jsonl"
LAYERS = "layers"
SUMMARY_COLUMNS = ["model", "status", "params_before", "params_after", "macs_before", "macs_after",
                   "rel_l2_error", "seconds", "reason"]


def _check_one_thread(entry: ZooEntry, pipeline: str, layers_dir: Path) -> dict:
    import torch

    torch.set_num_threads(1)  # parallel workers share the cores
    return check(entry, pipeline, layers_dir)


def run_zoo(config: str, pipeline: str, out: str, *, resume: bool = False, jobs: int = 1) -> list[dict]:
    """Run every entry of `config`; rows are appended to OUT/results.jsonl as models finish, and
    each model's per-layer table is written to OUT/layers/."""
    entries = load(config)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS
    done = _read_rows(path) if resume else {}
    if not resume:
        path.unlink(missing_ok=True)
    todo = [e for e in entries if e.id not in done]
    with open(path, "a") as log:
        for i, row in enumerate(_rows(todo, pipeline, jobs, out_dir / LAYERS), 1):
            log.write(json.dumps(row) + "\n")
            log.flush()
            os.fsync(log.fileno())
            done[row["model"]] = row
            _progress(f"[{i + len(entries) - len(todo)}/{len(entries)}] {row['model']}: {row['status']} "
                      f"({row['seconds']} s)")
    _progress("", last=True)
    rows = [done[e.id] for e in entries if e.id in done]
    write_summary(rows, out_dir, config, pipeline)
    return rows


def _progress(text: str, last: bool = False) -> None:
    """One status line, redrawn in place on a terminal; plain lines in a log."""
    if sys.stderr.isatty():
        print(f"\r{text}\033[K", end="\n" if last else "", file=sys.stderr, flush=True)
    elif text:
        print(text, file=sys.stderr, flush=True)


def _rows(todo: list[ZooEntry], pipeline: str, jobs: int, layers_dir: Path):
    if jobs <= 1:
        yield from (check(e, pipeline, layers_dir) for e in todo)
        return
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_check_one_thread, e, pipeline, layers_dir) for e in todo]
        yield from (f.result() for f in as_completed(futures))


def _read_rows(path: Path) -> dict[str, dict]:
    """Finished rows of an earlier run; a torn last line (the run was killed mid-write) is dropped."""
    rows = {}
    if path.exists():
        lines = path.read_text().splitlines()
        good = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row["model"]] = row
            good.append(line)
        if len(good) != len(lines):
            atomic_write_text(path, "".join(f"{g}\n" for g in good))
    return rows


def summary_table(rows: list[dict], fmt: str = "github") -> str:
    def cell(row, c):
        v = row.get(c, "")
        return f"{v:.2e}" if c == "rel_l2_error" and v != "" else v

    table = [[cell(r, c) for c in SUMMARY_COLUMNS] for r in rows]
    return tabulate(table, headers=SUMMARY_COLUMNS, tablefmt=fmt, intfmt=",")


def write_summary(rows: list[dict], out_dir: Path, config: str, pipeline: str) -> None:
    counts = {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})}
    head = (f"# Zoo run: `{config}`\n\nPipeline: `{pipeline}`; random weights (zero-initialised parameters "
            "given small random values, BatchNorm given random statistics: `fxprune.zoo.wake`), batch 1, "
            "float32, CPU.\n"
            f"MACs are multiply-accumulates. Status counts: {counts}.\n\n")
    atomic_write_text(out_dir / "summary.md", head + summary_table(rows) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "summary.csv", buf.getvalue())
