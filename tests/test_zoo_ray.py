"""`fxprune zoo --executor ray`: the same rows as the local executor, and a dead worker's model retried once."""

import json
import os
from pathlib import Path

import pytest

from fxprune.runners.cli import main
from fxprune.runners.zoo import ZooEntry
from fxprune.runners.zoo_ray import ray_rows

ray = pytest.importorskip("ray", reason="install the [ray] extra")



@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def rows_without_times(out: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {r["model"]: {k: v for k, v in r.items() if "seconds" not in k} for r in rows}


def test_ray_gives_the_rows_and_summary_of_the_local_executor(tmp_path, cluster):
    patterns = ["tv:resnet18", "tv:mobilenet_v3_small", "--pipeline", "decompose-conv,fold"]
    assert main(["zoo", *patterns, "--out", str(tmp_path / "local"), "--jobs", "2"]) == 0  # 1 thread a model, as Ray
    assert main(["zoo", *patterns, "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    local, remote = rows_without_times(tmp_path / "local"), rows_without_times(tmp_path / "ray")
    assert local == remote and sorted(local) == ["tv:mobilenet_v3_small", "tv:resnet18"]
    assert all(r["status"] == "ok" for r in local.values())
    layers = sorted(p.name for p in (tmp_path / "ray" / "layers").iterdir())
    assert layers == sorted(p.name for p in (tmp_path / "local" / "layers").iterdir())
    assert layers == ["tv_mobilenet_v3_small.csv", "tv_mobilenet_v3_small.md", "tv_resnet18.csv", "tv_resnet18.md"]


def test_a_dead_worker_is_retried_once_and_its_model_gets_one_row(tmp_path, cluster):
    marker = tmp_path / "died-once"

    def dies_once(entry: ZooEntry) -> dict:  # a closure: Ray ships it by value to its workers
        if entry.id == "tv:b" and not marker.exists():
            marker.write_text("")
            os._exit(9)
        return {"model": entry.id, "status": "ok", "seconds": 0.0}

    rows = [row for row, _ in ray_rows([ZooEntry("tv:a"), ZooEntry("tv:b")], dies_once, "fold")]
    assert marker.exists() and sorted((r["model"], r["status"]) for r in rows) == [("tv:a", "ok"), ("tv:b", "ok")]


def test_a_worker_that_always_dies_gives_an_error_row(cluster):
    def dies(entry: ZooEntry) -> dict:
        os._exit(9)

    rows = [row for row, _ in ray_rows([ZooEntry("tv:a", pipeline="fold")], dies, "decompose-conv,fold")]
    assert rows == [{"model": "tv:a", "pipeline": "fold", "status": "error", "seconds": 0.0,
                     "reason": "its Ray worker process died 2 times (killed by the OS, most often for lack of memory)"}]


def test_ray_options_need_the_ray_executor(tmp_path, capsys):
    assert main(["zoo", "tv:resnet18", "--out", str(tmp_path), "--address", "auto"]) == 2
    assert capsys.readouterr().err == "fxprune: error: --address and --task-memory are for --executor ray\n"


@pytest.mark.parametrize("address, why", [
    ("127.0.0.1:1", "no Ray cluster answers there (Connection refused within 10 s)"),
    ("nohost", "write host:port, ray://host:port or auto")])
def test_an_address_nothing_answers_at_fails_in_one_line_before_any_work(tmp_path, capsys, address, why):
    assert main(["zoo", "tv:resnet18", "--out", str(tmp_path / "out"), "--executor", "ray", "--address", address]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fxprune: error: --address {address}: {why}") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()

