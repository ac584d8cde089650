import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fxprune.runners.cli import main


def test_run_prints_passes_and_the_savings_table(capsys, tmp_path):
    out = tmp_path / "r.json"
    assert main(["run", "tv:resnet18", "--input-size", "3,64,64", "--pipeline",
                 "decompose-conv,prune-basis{energy=0.9},fold", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tv:resnet18: pipeline decompose-conv,prune-basis{energy=0.9},fold, input (1, 3, 64, 64)" in text
    assert "prune-basis{energy=0.9}" in text and "bases-before=4864" in text
    assert "layer4.1.conv2" in text and "params saved" in text
    data = json.loads(out.read_text())
    assert data["totals"]["params_before"] == 11_689_512


def test_passes_lists_every_pass_with_its_options(capsys):
    assert main(["passes"]) == 0
    text = capsys.readouterr().out
    for needle in ("decompose-conv", "prune-basis", "fold", "min-rank=1", "linear=true", "target-macs=unset"):
        assert needle in text


@pytest.mark.parametrize("argv, message", [
    (["run", "resnet18"], "model id 'resnet18': write tv:NAME, timm:NAME or path/to/file.py:factory"),
    (["run", "tv:resnet19"], "torchvision has no model 'resnet19'"),
    (["run", "timm:resnet5O"], "timm has no model 'resnet5O'"),
    (["run", "tv:resnet18", "--pipeline", "decompose,fold"], "unknown pass 'decompose': did you mean"),
    (["run", "tv:resnet18", "--input-size", "3x64"], "--input-size '3x64': write positive integers"),
    (["run", "tv:resnet18", "--out", "r.txt"], "--out r.txt: write a .md, .csv or .json file (the table) or .pt2"),
])
def test_bad_input_gets_one_clear_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxprune: error: ") and message in err and "Traceback" not in err


def test_zoo_run_resumes_without_redoing_or_corrupting(tmp_path, capsys):
    config = tmp_path / "z.toml"
    config.write_text('[[model]]\nid = "tv:squeezenet1_1"\ninput-size = "3,64,64"\n\n'
                      '[[model]]\nid = "tv:nope"\n\n[[model]]\nid = "tv:alexnet"\nskip = "reason here"\n')
    out = tmp_path / "out"
    assert main(["zoo", str(config), "--pipeline", "decompose-conv,fold", "--out", str(out)]) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    assert [r["status"] for r in rows] == ["ok", "error", "skipped"]
    assert "torchvision has no model 'nope'" in rows[1]["reason"]
    # a run killed mid-write leaves a torn line; --resume drops it and reruns only that model
    (out / "results.jsonl").write_text(lines[0] + "\n" + lines[1][:20])
    assert main(["zoo", str(config), "--pipeline", "decompose-conv,fold", "--out", str(out), "--resume"]) == 0
    rows2 = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["model"] for r in rows2] == ["tv:squeezenet1_1", "tv:nope", "tv:alexnet"]
    assert rows2[0] == rows[0]
    summary = (out / "summary.md").read_text()
    assert "| tv:squeezenet1_1 | ok" in summary
    header = next(x for x in summary.splitlines() if x.startswith("| model"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "model", "status", "params_before", "params_after", "params_saved", "macs_before", "macs_after",
        "macs_saved", "rel_l2_error", "max_abs_error", "seconds", "reason"]


def test_zoo_run_compiles_each_pruned_model_and_compares_with_eager(tmp_path, capsys):
    config = tmp_path / "z.toml"
    config.write_text('[[model]]\nid = "tv:squeezenet1_1"\ninput-size = "3,64,64"\n')
    out = tmp_path / "out"
    assert main(["zoo", str(config), "--pipeline", "prune-channels{ratio=0.3},fold", "--out", str(out),
                 "--compile"]) == 0
    row = json.loads((out / "results.jsonl").read_text())
    assert row["status"] == "ok" and row["params_after"] < row["params_before"]
    assert row["compiled_rel_l2_error"] < 1e-5
    assert "compiled_rel_l2_error" in (out / "summary.md").read_text().splitlines()[-3]
    assert "[0/1] running tv:squeezenet1_1" in capsys.readouterr().err


def test_parallel_zoo_progress_names_only_the_models_really_running(tmp_path, capsys):
    config = tmp_path / "z.toml"
    config.write_text("".join(f'[[model]]\nid = "tv:nope{i}"\n\n' for i in range(4)))
    out = tmp_path / "out"
    assert main(["zoo", str(config), "--pipeline", "fold", "--out", str(out), "--jobs", "2"]) == 0
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["model"] for r in rows) == [f"tv:nope{i}" for i in range(4)]
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("[")]
    assert lines[0] == "[0/4] running tv:nope0, tv:nope1"
    done = set()
    for line in lines[1:]:
        done.add(re.match(r"\[\d/4\] (tv:\w+): ", line).group(1))
        running = line.split("; running ")[1].split(", ") if "; running " in line else []
        assert len(running) <= 2 and not done & set(running), line
    assert "running" not in lines[-1] and len(done) == 4


def _smoke(tmp_path):
    config = tmp_path / "z.toml"
    config.write_text('[[model]]\nid = "tv:nope"\n\n[[model]]\nid = "tv:alexnet"\nskip = "reason here"\n')
    return config


def test_zoo_resume_repairs_and_validates_the_results_file(tmp_path):
    config, out = _smoke(tmp_path), tmp_path / "out"
    assert main(["zoo", str(config), "--pipeline", "fold", "--out", str(out)]) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    # the last line lost its newline, and a line without a model: resume keeps the good rows, one per line
    (out / "results.jsonl").write_text(lines[0] + "\n" + '{"status": "ok"}\n' + lines[1])
    assert main(["zoo", str(config), "--pipeline", "fold", "--out", str(out), "--resume"]) == 0
    assert (out / "results.jsonl").read_text() == lines[0] + "\n" + lines[1] + "\n"


def test_zoo_resume_refuses_another_pipeline(tmp_path, capsys):
    config, out = _smoke(tmp_path), tmp_path / "out"
    assert main(["zoo", str(config), "--pipeline", "fold", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["zoo", str(config), "--pipeline", "decompose-conv,fold", "--out", str(out), "--resume"]) == 2
    assert capsys.readouterr().err == (
        f"fxprune: error: --resume: {out / 'results.jsonl'} holds tv:nope run with pipeline 'fold', not "
        "'decompose-conv,fold'; resume with that pipeline, or name a new --out\n")


def test_zoo_refuses_a_second_run_on_the_same_out(tmp_path, capsys):
    import fcntl

    config, out = _smoke(tmp_path), tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert main(["zoo", str(config), "--pipeline", "fold", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"fxprune: error: --out {out}: another fxprune zoo run is writing there; "
                                       "wait for it or name another folder\n")
    assert not (out / "results.jsonl").exists()


@pytest.mark.parametrize("argv_tail, message", [
    (["--pipeline", "fold,prune-basiss"], "unknown pass 'prune-basiss'"),
    (["--out", "{file}"], "--out {file}: is a file; name a folder for results.jsonl and the summaries"),
])
def test_zoo_checks_pipeline_and_out_before_running(tmp_path, capsys, argv_tail, message):
    config = _smoke(tmp_path)
    (tmp_path / "f").write_text("")
    tail = [a.format(file=tmp_path / "f") for a in argv_tail]
    argv = ["zoo", str(config), "--out", str(tmp_path / "out"), *tail]
    if "--pipeline" not in tail:
        argv += ["--pipeline", "fold"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxprune: error: ") and message.format(file=tmp_path / "f") in err
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_zoo_summary_says_what_the_error_columns_mean(tmp_path):
    from fxprune.runners.zoo_run import write_summary

    rows = [{"model": "tv:a", "status": "ok", "rel_l2_error": 0.4, "seconds": 1.0}]
    write_summary(rows, tmp_path, "z.toml", "decompose-conv,prune-basis{energy=0.9},fold")
    assert ("The pipeline is lossy: rel_l2_error and max_abs_error are the *expected change* of the outputs that "
            "pruning random weights causes, not a failure") in (tmp_path / "summary.md").read_text()
    write_summary(rows, tmp_path, "z.toml", "decompose-conv,fold")
    assert "The pipeline is lossless: rel_l2_error and max_abs_error are numerical error" in (
        tmp_path / "summary.md").read_text()
    assert "| float64_rel_l2_error" not in (tmp_path / "summary.md").read_text()
    rows.append({"model": "tv:b", "status": "ok", "rel_l2_error": 2e-5, "float32_rel_l2_error": 9e-6,
                 "float64_rel_l2_error": 8e-6, "seconds": 1.0})
    write_summary(rows, tmp_path, "z.toml", "decompose-conv,fold")
    line = next(x for x in (tmp_path / "summary.md").read_text().splitlines() if x.startswith("| tv:b "))
    assert [c.strip() for c in line.split("|")[9:12]] == ["2.00e-05", "", "9.00e-06"]
    assert line.split("|")[12].strip() == "8.00e-06"


def test_zoo_takes_model_patterns_instead_of_a_config(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["zoo", "tv:squeezenet1_*", "--exclude", "*1_0", "--pipeline", "fold", "--out", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["model"], r["status"]) for r in rows] == [("tv:squeezenet1_1", "ok")]
    assert (out / "summary.md").read_text().startswith("# Zoo run: `tv:squeezenet1_* --exclude *1_0`")


@pytest.mark.parametrize("argv, message", [
    (["tv:nothing_like_this*"], "model pattern 'tv:nothing_like_this*' matches no model"),
    (["resnet*"], "model pattern 'resnet*': write tv:GLOB or timm:GLOB"),
    (["timm:resnet18", "--exclude", "resnet*"], "--exclude resnet* leaves none of the 1 models matched"),
    (["zoo_configs/smoke.toml", "timm:resnet18"], "name one zoo config, or model patterns (with --exclude), not both"),
])
def test_bad_model_patterns_get_one_line(tmp_path, capsys, argv, message):
    assert main(["zoo", *argv, "--pipeline", "fold", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fxprune: error: {message}") and err.count("\n") == 1


def test_zoo_names_an_out_folder_it_cannot_write(tmp_path, capsys, monkeypatch):
    import os

    out = tmp_path / "out"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(out) else real(p, mode, **kw))
    assert main(["zoo", str(_smoke(tmp_path)), "--pipeline", "fold", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"fxprune: error: --out {out}: not writable; name a folder you can write to\n"


SLOW = '''
import time
import torch


def slow():
    while True:  # a model that never finishes building
        time.sleep(0.01)


def fast():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
'''


@pytest.mark.parametrize("jobs", ["1", "2"])  # in this process, and in the pool's workers
def test_zoo_time_limit_stops_a_model_and_the_run_goes_on(tmp_path, jobs):
    (tmp_path / "models.py").write_text(SLOW)
    config = tmp_path / "z.toml"
    config.write_text("".join(f'[[model]]\nid = "{tmp_path}/models.py:{f}"\ninput-size = "3,8,8"\n\n'
                              for f in ("slow", "fast")))
    out = tmp_path / "out"
    assert main(["zoo", str(config), "--pipeline", "decompose-conv,fold", "--out", str(out), "--jobs", jobs,
                 "--time-limit", "1.5"]) == 0
    rows = {r["model"].rpartition(":")[2]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert rows["slow"]["status"] == "error" and rows["slow"]["reason"] == "TimeoutError: stopped after --time-limit 1.5 s"
    assert 1.5 <= rows["slow"]["seconds"] < 5
    assert rows["fast"]["status"] == "ok"
    # a model id that is a path names its per-layer table inside OUT/layers, nowhere else
    name = str(tmp_path / "models.py").replace("/", "_") + "_fast"
    assert sorted(p.name for p in (out / "layers").iterdir()) == [f"{name}.csv", f"{name}.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.py", "out", "z.toml"]


def test_a_model_id_becomes_one_safe_file_name():
    from fxprune.runners.zoo import file_name

    assert file_name("tv:resnet18") == "tv_resnet18"
    assert file_name("timm:vit_base_patch16_224.augreg_in21k") == "timm_vit_base_patch16_224.augreg_in21k"
    assert file_name("../../etc/net.py:tiny") == "_.._etc_net.py_tiny"
    assert file_name("..") == "_"


STARTED = '''
import os
import time
from pathlib import Path


def slow():  # a model that never finishes building, in a worker that says it has started
    Path(__file__).with_name(f"started-{os.getpid()}").write_text("")
    while True:
        time.sleep(0.01)


slow_too = slow
'''


def test_killing_the_zoo_leaves_no_worker_alive(tmp_path):
    (tmp_path / "models.py").write_text(STARTED)
    config = tmp_path / "z.toml"
    config.write_text("".join(f'[[model]]\nid = "{tmp_path}/models.py:{f}"\ninput-size = "3,8,8"\n\n'
                              for f in ("slow", "slow_too")))
    run = subprocess.Popen([sys.executable, "-m", "fxprune", "zoo", str(config), "--pipeline", "fold", "--out",
                            str(tmp_path / "out"), "--jobs", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(workers := [int(p.name[8:]) for p in tmp_path.glob("started-*")]) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert len(workers) == 2 and all(_alive(p) for p in workers)  # both workers are building their models
    run.kill()
    run.wait()
    time.sleep(5)
    assert [p for p in workers if _alive(p)] == []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_zoo_time_limit_must_be_positive(tmp_path, capsys):
    assert main(["zoo", str(_smoke(tmp_path)), "--pipeline", "fold", "--out", str(tmp_path / "out"),
                 "--time-limit", "0"]) == 2
    assert capsys.readouterr().err == "fxprune: error: --time-limit 0: give the seconds a model may take, above 0\n"
    for jobs in ("0", "-1"):
        assert main(["zoo", str(_smoke(tmp_path)), "--pipeline", "fold", "--out", str(tmp_path / "out"),
                     "--jobs", jobs]) == 2
        assert capsys.readouterr().err == f"fxprune: error: --jobs {jobs}: give the number of models run at once, at least 1\n"
    for value in ("inf", "1e10"):
        assert main(["zoo", str(_smoke(tmp_path)), "--pipeline", "fold", "--out", str(tmp_path / "out"),
                     "--time-limit", value]) == 2
        assert capsys.readouterr().err == (f"fxprune: error: --time-limit {float(value):g}: give the seconds a model "
                                           "may take, above 0 and at most 86400 (a day); leave it out for no limit\n")
