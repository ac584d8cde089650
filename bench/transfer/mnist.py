"""Transfer ImageNet EfficientNet-Lite0 to MNIST digits by training only the basis scaling factors
and the new head, then prune without fine-tuning any weight; Torch-Pruning as the peer.

    .venv/bin/python -m bench.transfer.mnist            # about 30 minutes on 2 cores
    .venv/bin/python -m bench.transfer.mnist --quick    # a check of the whole flow: 512 digits at 32x32, a few minutes

Writes results.json, README.md (tables, headline) and accuracy_vs_params.png to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import fxprune
from fxprune.analysis.counting import total_macs, total_params
from fxprune.core.io import atomic_write_text

from .digits import batches, digits
from .lite0 import load_lite0
from .peer import BISECTIONS, at_budget
from .peer import iterative as tp_iterative
from .report import write_report

BUDGETS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4)
ENERGIES = (0.999, 0.99, 0.95, 0.9)
CRITERIA = ("energy", "taylor")  # |s| (scale) was dropped: 0.505 at 90% of params vs taylor 0.933 (2026-11 run)


SCHEDULE = "constant"  # the lr schedule these results were measured with (before cosine became the default)


def measure(model, x, test, reference: dict, **row) -> dict:
    params, macs = total_params(model), total_macs(model, (x,))
    row.update(test_accuracy=fxprune.evaluate(model, test)["accuracy"], params=params, macs=macs,
               params_kept=params / reference["params"], macs_kept=macs / reference["macs"])
    return show(row)


def show(row: dict) -> dict:
    print(f"  {row['method']:<36} {row['setting']:<48} acc {row['test_accuracy']:.3f}  "
          f"params {row['params_kept']:.3f}  macs {row['macs_kept']:.3f}", flush=True)
    return row


def one_shot(gm, x, test, reference, taylor_data, budgets, energies) -> list[dict]:
    """Prune once and fold: bases (every criterion at each budget; energy also per layer), channels, both."""
    runs = [(f"bases {c}", f"prune-basis{{criterion={c} target-params={b}}}") for c in CRITERIA for b in budgets]
    runs += [("bases energy", f"prune-basis{{criterion=energy energy={e}}}") for e in energies]
    runs += [(f"channels {c}", f"prune-channels{{criterion={c} target-params={b}}}")
             for c in ("taylor",) for b in budgets]
    half = {b: round(b ** 0.5, 4) for b in budgets}  # each half of double pruning keeps sqrt(b)
    runs += [("double taylor", f"prune-basis{{criterion=taylor target-params={half[b]}}},"
                               f"prune-channels{{criterion=taylor target-params={half[b]}}}") for b in budgets]
    rows = []
    for name, pipeline in runs:
        small = fxprune.prune(gm, x, pipeline + ",fold", data=taylor_data)
        rows.append(measure(small, x, test, reference, method=f"fxprune one-shot {name}",
                            setting=pipeline.replace("prune-", "")))
    return rows


def iterative(gm, x, train, test, reference, prune_what: str, step: float, until: float, taylor_data,
              label: str = "") -> list[dict]:
    """Prune `step` of the params, retrain the scales one epoch, repeat (Taylor importance)."""
    history = fxprune.prune_iteratively(gm, x, data=train, val_data=test, criterion="taylor",
                                           prune_what=prune_what, step=step, until=f"params={until}", epochs=1,
                                           importance_data=taylor_data, schedule=SCHEDULE, progress=False).history
    return [show(dict(method=f"fxprune iterative {prune_what}{label} taylor", setting=f"step {h['step']}",
                      test_accuracy=h["val_accuracy"], params=h["params"], macs=h["macs"],
                      params_kept=h["params"] / reference["params"], macs_kept=h["macs"] / reference["macs"]))
            for h in history[1:]]


def channel_scaling(model, x, train, test, reference, epochs: int, budgets, l1: float) -> list[dict]:
    """Wong et al.'s channel-scaling layers: train basis and channel scales (and the head) with an L1
    penalty on every scale, then remove the channels whose scales are smallest and fold."""
    gm = fxprune.prune(model, x, "decompose-conv,insert-scaling,insert-channel-scaling")
    print(f"transfer with channel scales: {epochs} epochs, l1={l1}", flush=True)
    fxprune.train_scaling(gm, train, epochs=epochs, lr=1e-2, l1=l1, val_data=test, schedule=SCHEDULE)
    rows = [measure(fxprune.prune(gm, x, "fold"), x, test, reference, method="transferred with channel scales",
                    setting=f"l1={l1}, unpruned, scales folded")]
    for b in budgets:
        pipeline = f"prune-channels{{criterion=scale target-params={b}}}"
        rows.append(measure(fxprune.prune(gm, x, pipeline + ",fold"), x, test, reference,
                            method="fxprune one-shot channels scale", setting=f"{pipeline.replace('prune-', '')}, l1={l1}"))
    return rows


def data_bases(model, x, train, test, reference, epochs: int, budgets, step: float, until: float,
               taylor_data) -> list[dict]:
    """decompose-conv{basis=data}: each layer's bases are the principal directions of its responses on
    1,024 training digits (whitened SVD), then the same transfer; bases pruned one shot by energy
    (now the RMS response on those digits) and iteratively by taylor."""
    gm = fxprune.prune(model, x, "decompose-conv{basis=data},insert-scaling", data=train[:16])
    print(f"transfer with data-aware bases: {epochs} epochs", flush=True)
    fxprune.train_scaling(gm, train, epochs=epochs, lr=1e-2, val_data=test, schedule=SCHEDULE)
    rows = [measure(fxprune.prune(gm, x, "fold"), x, test, reference, method="transferred with data bases",
                    setting="decompose-conv{basis=data}, unpruned")]
    for b in budgets:
        pipeline = f"prune-basis{{criterion=energy target-params={b}}}"
        rows.append(measure(fxprune.prune(gm, x, pipeline + ",fold"), x, test, reference,
                            method="fxprune one-shot bases (data) energy", setting=pipeline.replace("prune-", "")))
    return rows + iterative(gm, x, train, test, reference, "bases", step, until, taylor_data, label=" (data)")


def peer(folded, x, train, test, reference, data, budgets, step: float, until: float, bisections: int) -> list[dict]:
    """Torch-Pruning with its Taylor importance: one shot at each budget, and on the iterative schedule
    (each budget's ratio found in `bisections` halvings)."""
    rows = []
    for keep in budgets:
        pruned, ratio = at_budget(folded, x, keep, "taylor", data, bisections)
        rows.append(measure(pruned, x, test, reference, method="Torch-Pruning taylor",
                            setting=f"params<={keep} (ratio {ratio:.3f})"))
    for k, pruned in tp_iterative(folded, x, step, until, "taylor", data, train, bisections):
        rows.append(measure(pruned, x, test, reference, method="Torch-Pruning iterative taylor", setting=f"step {k}"))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/transfer/results")
    ap.add_argument("--size", type=int, help="input side (default 64, a 2x2 final feature map; --quick: 32)")
    ap.add_argument("--epochs", type=int, default=6, help="epochs of scales + head before pruning")
    ap.add_argument("--step", type=float, default=0.15, help="share of params pruned per iterative step")
    ap.add_argument("--until", type=float, default=0.15, help="iterative run stops at this share of params")
    ap.add_argument("--l1", type=float, default=1e-5, help="L1 weight on the scales in the channel-scaling run")
    ap.add_argument("--quick", action="store_true", help="tiny settings, to check the flow")
    args = ap.parse_args(argv)
    args.size = args.size or (32 if args.quick else 64)
    start = time.time()
    torch.manual_seed(0)
    (x_train, y_train), (x_test, y_test) = digits(args.size)
    epochs, budgets, energies = args.epochs, BUDGETS, ENERGIES
    if args.quick:
        x_train, y_train, x_test, y_test = x_train[:512], y_train[:512], x_test[:256], y_test[:256]
        epochs, budgets, energies, args.until = 1, (0.7,), (0.99,), 0.8
    train, test = batches(x_train, y_train, 64, shuffle_seed=0), batches(x_test, y_test, 250)
    x = x_train[:1]

    model = load_lite0(num_classes=10)
    gm = fxprune.prune(model, x, "decompose-conv,insert-scaling")
    print(f"transfer: {epochs} epochs of scales + head", flush=True)
    transfer = fxprune.train_scaling(gm, train, epochs=epochs, lr=1e-2, val_data=test, schedule=SCHEDULE)
    folded = fxprune.prune(gm, x, "fold")
    reference = {"params": total_params(folded), "macs": total_macs(folded, (x,))}
    a0 = measure(folded, x, test, reference, method="transferred (A0)", setting="unpruned, BN folded")
    rows, arm_seconds = [a0], {"transfer": round(time.time() - start)}
    arms = {"one-shot": lambda: one_shot(gm, x, test, reference, train[:16], budgets, energies),
            "channel scaling": lambda: channel_scaling(model, x, train, test, reference, epochs, budgets, args.l1),
            "Torch-Pruning": lambda: peer(folded, x, train, test, reference, train[:4], budgets, args.step, args.until,
                                          6 if args.quick else BISECTIONS)}
    arms.update({f"iterative {w}": lambda w=w: iterative(gm, x, train, test, reference, w, args.step, args.until,
                                                         train[:8]) for w in ("bases", "channels", "joint")})
    arms["data bases"] = lambda: data_bases(model, x, train, test, reference, epochs, budgets, args.step, args.until,
                                            train[:8])
    for arm, run in arms.items():
        t = time.time()
        rows += run()
        arm_seconds[arm] = round(time.time() - t)
    meta = {"size": args.size, "epochs": epochs, "train": len(y_train), "test": len(y_test), "step": args.step, "l1": args.l1,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "original_params": total_params(model), "seconds": round(time.time() - start), "until": args.until,
            "arm_seconds": arm_seconds,
            "transfer_history": transfer, "quick": args.quick}
    out = Path(args.out)
    atomic_write_text(out / "results.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
    write_report(out, rows, meta)
    print(f"done in {meta['seconds']} s: {out}/README.md")


if __name__ == "__main__":
    main()
