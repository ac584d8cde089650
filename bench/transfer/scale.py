"""`fxprune transfer` at scale on this machine: (a) peak memory against the number of images, (b) training
images/s against a plain fine-tuning loop in timm's train.py style, (c) the demo's wall time by --workers.

    .venv/bin/python -m bench.transfer.scale memory    # (a): 2,000 and 20,000 generated 224x224 JPEGs
    .venv/bin/python -m bench.transfer.scale speed     # (b): Lite0 at 224 px, one epoch of each loop
    .venv/bin/python -m bench.transfer.scale demo      # (c): fxprune demo with --workers 0 and 2
    .venv/bin/python -m bench.transfer.scale report    # bench/transfer/results/scale.md from the three

Results go to bench/transfer/results/scale.jsonl (one row per measurement); the generated folders to
--scratch (default /tmp/fxprune-scale), which is not kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
ROWS = RESULTS / "scale.jsonl"


def generate(root: Path, images: int, size: int = 224, classes: int = 10) -> Path:
    """`images` smooth random JPEGs (noise upsampled from 8x8, a class-dependent tint) in root/CLASS/."""
    from PIL import Image

    done = root / ".complete"
    if done.exists():
        return root
    g = torch.Generator().manual_seed(0)
    for i in range(images):
        c = i % classes
        folder = root / f"c{c}"
        folder.mkdir(parents=True, exist_ok=True)
        low = torch.rand(1, 3, 8, 8, generator=g) * 0.6 + 0.2 * torch.linspace(0, 1, classes)[c]
        pixels = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        array = (pixels[0].permute(1, 2, 0).clamp(0, 1) * 255).to(torch.uint8).numpy()
        Image.fromarray(array).save(folder / f"{i:06d}.jpg", quality=90)
    done.write_text("")
    return root


def memory_of(pid: int) -> tuple[int, int]:
    """(resident bytes of process `pid`, proportional bytes of it and all its descendants): PSS splits a page
    that forked DataLoader workers share among them, where summing their RSS would count it once per worker."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    try:
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        rss = 0
    pss, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            line = next(x for x in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines() if x.startswith("Pss:"))
            pss += int(line.split()[1]) * 1024
        except (OSError, StopIteration, IndexError, ValueError):
            pass
        todo += children.get(p, [])
    return rss, pss


def run_measured(argv: list[str]) -> dict:
    """Run a command; its wall time, peak RSS of its process and peak PSS of its process tree (with DataLoader
    workers), sampled every 0.2 s."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0, 0]

    def sample():
        while proc.poll() is None:
            peak[:] = [max(a, b) for a, b in zip(peak, memory_of(proc.pid))]
            time.sleep(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    watcher.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out[-3000:]}")
    return {"seconds": round(time.perf_counter() - start, 1), "peak_rss_gb": round(peak[0] / 2**30, 3),
            "peak_tree_pss_gb": round(peak[1] / 2**30, 3),
            "tail": out.strip().splitlines()[-3:]}


def fxprune_cli() -> str:
    return str(Path(sys.executable).with_name("fxprune"))


def memory(scratch: Path) -> list[dict]:
    rows = []
    for n in (2000, 20000):
        folder = generate(scratch / f"images-{n}", n)
        argv = [fxprune_cli(), "transfer", "timm:mobilenetv3_small_050", "--num-classes", "10", "--data", str(folder),
                "--epochs", "1", "--max-steps", "1", "--device", "cpu", "--out", str(scratch / f"out-{n}" / "small.pt2")]
        rows.append({"bench": "memory", "images": n, "command": " ".join(argv[1:]), **run_measured(argv)})
    return rows


def speed(scratch: Path, images: int = 640, batch: int = 32, device: str = "cpu", workers: int = 0) -> list[dict]:
    """Images/s of one epoch: fxprune's transfer training (scales + head) against every weight trained,
    both under the same Runtime (on CUDA: bf16 autocast, channels-last) and loader."""
    import fxprune
    from fxprune.training.data import LoaderOptions, load_image_folder, normalization
    from fxprune.training.runtime import Runtime

    from .lite0 import load_lite0

    folder = generate(scratch / f"images-{images}", images)
    runtime = Runtime.resolve(device)
    rows = []
    for name in ("fxprune", "finetune"):
        torch.manual_seed(0)
        model = load_lite0(10)
        options = LoaderOptions(batch_size=batch, workers=workers, pin_memory=runtime.device.type == "cuda")
        data = load_image_folder(folder, normalization(model, 224), options, val_split=0.01)
        if name == "fxprune":
            gm = runtime.model(fxprune.prune(model, torch.randn(1, 3, 224, 224), "decompose-conv,insert-scaling"))
            start = time.perf_counter()
            fxprune.train_scaling(gm, data.train, epochs=1, device=runtime, progress=False)
        else:  # timm train.py's loop: train mode, every parameter in the optimiser
            model = runtime.model(model).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            scaler = runtime.scaler()
            start = time.perf_counter()
            for batch_ in data.train:
                x, y = runtime.batch(batch_)
                with runtime.autocast():
                    loss = torch.nn.functional.cross_entropy(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        rows.append({"bench": "speed", "loop": name, "images": data.train.images, "batch": batch, "size": 224,
                     "device": runtime.text(), "workers": workers, "seconds": round(seconds, 1),
                     "images_per_s": round(data.train.images / seconds, 2)})
    return rows


def demo(scratch: Path) -> list[dict]:
    rows = []
    for workers in (0, 2):
        out = scratch / f"demo-{workers}"
        from fxprune.runners.demo import prepare

        weights, data, test = prepare(out)
        argv = [fxprune_cli(), "transfer", "timm:efficientnet_lite0", "--weights", str(weights), "--num-classes", "10",
                "--data", str(data), "--test", str(test), "--image-size", "64", "--epochs", "10", "--step", "0.1",
                "--max-steps", "30", "--augment", "none", "--device", "cpu", "--workers", str(workers),
                "--out", str(out / "small.pt2")]
        rows.append({"bench": "demo", "workers": workers, **run_measured(argv)})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["memory", "speed", "demo", "report"])
    ap.add_argument("--scratch", default="/tmp/fxprune-scale")
    args = ap.parse_args(argv)
    if args.what != "report":
        rows = {"memory": memory, "speed": speed, "demo": demo}[args.what](Path(args.scratch))
        meta = {"threads": torch.get_num_threads(), "cores": os.cpu_count(), "torch": torch.__version__,
                "date": time.strftime("%Y-%m-%d")}
        with ROWS.open("a") as f:
            for row in rows:
                f.write(json.dumps({**row, **meta}) + "\n")
                print(json.dumps(row))
    report()


def report() -> None:
    rows = [json.loads(line) for line in ROWS.read_text().splitlines()] if ROWS.exists() else []
    last = {}
    for r in rows:  # the latest row of each measurement
        last[(r["bench"], r.get("images") if r["bench"] == "memory" else r.get("loop", r.get("workers")))] = r
    lines = ["# Transfer at scale: memory, training speed, workers", "",
             "Reproduce: `.venv/bin/python -m bench.transfer.scale memory|speed|demo` then `... report` "
             "(rows in scale.jsonl, with threads, cores and torch). CPU only: the GPU figures come from "
             "bench/gpu/check.sh on a machine that has one.", ""]
    mem = [r for k, r in last.items() if k[0] == "memory"]
    if mem:
        lines += ["## (a) Peak memory against the number of images", "",
                  "`fxprune transfer <command below>` on generated 224x224 JPEGs (`generate()`: smooth noise, a "
                  "tint per class, 10 classes, 20% val) and a randomly initialised MobileNetV3-Small-0.5 (the memory "
                  "measured is the data's, not a big model's); images read per batch by the DataLoader (workers 0); "
                  "peak RSS of the process, sampled every 0.2 s. Before the DataLoader every image was decoded up "
                  "front: 20,000 at 224 px would have been 3.0 GB of uint8 before training.", "",
                  "| images | peak RSS (GB) | wall (s) | threads | command |", "|---|---|---|---|---|"]
        lines += [f"| {r['images']:,} | {r['peak_rss_gb']:.2f} | {r['seconds']:.0f} | {r['threads']} | `{r['command']}` |"
                  for r in sorted(mem, key=lambda r: r["images"])]
        if len(mem) == 2:
            small, big = sorted(mem, key=lambda r: r["images"])
            lines += ["", f"20,000 images take {big['peak_rss_gb'] / small['peak_rss_gb']:.2f}x the memory of 2,000 "
                          f"(target: under 3 GB and within 1.2x)."]
        lines.append("")
    fast = {r["loop"]: r for k, r in last.items() if k[0] == "speed"}
    if len(fast) == 2:
        f, b = fast["fxprune"], fast["finetune"]
        lines += ["## (b) Training images/s against a plain fine-tuning loop", "",
                  f"ImageNet EfficientNet-Lite0, new 10-class head, {f['images']} generated JPEGs at 224 px, batch "
                  f"{f['batch']}, light augmentation (RandomResizedCrop + flip), images read per batch "
                  "(workers 0), one epoch each, the same process.", "",
                  "| loop | what is trained | images/s | seconds | threads |", "|---|---|---|---|---|",
                  f"| fxprune train_scaling | basis scales + head (eval mode) | {f['images_per_s']:.2f} | {f['seconds']:.0f} | {f['threads']} |",
                  f"| timm train.py style | every weight (train mode, AdamW) | {b['images_per_s']:.2f} | {b['seconds']:.0f} | {b['threads']} |",
                  "", f"fxprune trains at **{f['images_per_s'] / b['images_per_s']:.2f}x** the plain loop's images/s "
                      "(target: at least 1.2x).", ""]
    demos = {r["workers"]: r for k, r in last.items() if k[0] == "demo"}
    if demos:
        lines += ["## (c) The demo by --workers", "",
                  "`fxprune demo`'s transfer command with `--workers N` (the same pruned model whatever N: "
                  "tests/test_transfer_scale.py). Memory: the sum of the RSS of the process and its workers, "
                  "sampled every 0.2 s (pages the forked workers share with it are counted once per process, "
                  "so with workers it overstates; `memory` rows measure PSS instead).", "",
                  "| workers | wall (s) | peak RSS, summed over the processes (GB) | result |", "|---|---|---|---|"]
        lines += [f"| {w} | {r['seconds']:.0f} | {r['peak_tree_rss_sum_gb']:.2f} | {r['tail'][-2]} |"
                  for w, r in sorted(demos.items())]
        if len(demos) == 2:
            lines += ["", f"--workers 2 took {demos[2]['seconds'] / demos[0]['seconds']:.2f}x the wall time of "
                          "--workers 0 on these 2 cores (the workers share them with training), for the same model; "
                          "the default stays 0 on the CPU."]
        lines.append("")
    (RESULTS / "scale.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
