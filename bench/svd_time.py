"""decompose-conv's SVDs: the Gram-matrix path (fxprune.core.svd.thin_svd) against LAPACK
(torch.linalg.svd), float64, on every conv/linear weight of a few zoo models, and on vgg16's fc6.

    .venv/bin/python -m bench.svd_time [--repeat N]       # about 10 minutes on 2 cores with 2 repeats

Writes bench/results/svd_time.md: per model the summed seconds of each (least of N runs), the ratio,
how many layers sent a tail of directions to LAPACK (and how many rows of how many), and the worst
reconstruction error and orthonormality of U and V^T.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torchvision

from fxprune.core.io import atomic_write_text
from fxprune.core.lowrank import as_groups, is_dense_layer, matrix_shape
from fxprune.core.svd import GUARD, thin_svd


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    out = []
    for m in model.modules():
        if is_dense_layer(m) and matrix_shape(m)[1] > 1:
            out.append(as_groups(m.weight.detach(), matrix_shape(m)[0]).double())
    return out


def seconds(fn, mats, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for a in mats:
            fn(a)
        best = min(best, time.perf_counter() - start)
    return best


def quality(mats) -> tuple[float, float, int, int, int]:
    """(worst relative reconstruction error, worst orthonormality error of U and V^T, layers with a
    LAPACK tail, rows in those tails, rows of those layers)."""
    err = orth = 0.0
    tails = tail_rows = rows = 0
    for a in mats:
        b = a if a.shape[1] <= a.shape[2] else a.transpose(1, 2)
        lam = torch.linalg.eigvalsh(b @ b.transpose(1, 2))
        tail = int(((lam < GUARD * lam[:, -1:]) | (lam <= 0)).sum())
        tails, tail_rows, rows = tails + bool(tail), tail_rows + tail, rows + (lam.numel() if tail else 0)
        u, s, vh = thin_svd(a)
        err = max(err, (((u * s[:, None, :]) @ vh - a).abs().max() / a.abs().max()).item())
        eye = torch.eye(s.shape[1], dtype=torch.float64)
        orth = max(orth, (vh @ vh.transpose(1, 2) - eye).abs().max().item(),
                   (u.transpose(1, 2) @ u - eye).abs().max().item())
    return err, orth, tails, tail_rows, rows


def main() -> None:
    from bench.transfer.lite0 import load_lite0

    parser = argparse.ArgumentParser(description="decompose-conv's SVDs: Gram path against LAPACK")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing; the least is kept")
    repeat = parser.parse_args().repeat

    cases = {"resnet50 (random)": torchvision.models.resnet50(), "efficientnet_lite0 (ImageNet)": load_lite0(),
             "vit_b_16 (random)": torchvision.models.vit_b_16(), "regnet_y_16gf (random)": torchvision.models.regnet_y_16gf(),
             "vgg16 fc6 (random, 4096x25088)": torch.nn.Linear(25088, 4096)}
    rows = []
    for name, model in cases.items():
        mats = weights(model)
        lapack = seconds(lambda a: torch.linalg.svd(a, full_matrices=False), mats, repeat)
        gram = seconds(thin_svd, mats, repeat)
        err, orth, tails, tail_rows, of = quality(mats)
        rows.append((name, len(mats), f"{tails} ({tail_rows} of {of} rows)" if tails else "0", lapack, gram, err, orth))
        print(rows[-1], flush=True)
    lines = ["# Thin SVD: Gram matrix against LAPACK", "",
             f"Measured with {torch.get_num_threads()} torch threads, torch "
             f"{torch.__version__}, float64, least of {repeat} runs. thin_svd: the Gram matrix's eigh for every "
             f"direction whose eigenvalue is at least {GUARD:g} of the largest (singular value >= 1e-3 of the largest); "
             "the others (a tail: random square weights have a few) projected off those rows and given to LAPACK "
             "(fxprune/core/svd.py).", "",
             "| weights | layers | layers with a LAPACK tail | LAPACK s | thin_svd s | speedup | max reconstruction "
             "error (relative) | max orthonormality error of U, V^T |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {n} | {k} | {f} | {a:.2f} | {b:.2f} | {a / b:.1f}x | {e:.1e} | {o:.1e} |"
              for n, k, f, a, b, e, o in rows]
    lines += ["", f"Reproduce: `.venv/bin/python -m bench.svd_time --repeat {repeat}`."]
    atomic_write_text(Path(__file__).parent / "results" / "svd_time.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
