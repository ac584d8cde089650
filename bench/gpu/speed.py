"""On a CUDA machine: one epoch's training images/s of fxprune's transfer loop (scales + head) against a
plain fine-tuning loop (every weight), Lite0 at 224 px, bf16 autocast, channels-last, 4 and 12 loader
workers (the machine lent has 16 cores: does JPEG decoding bound either loop at 4?).

    .venv/bin/python -m bench.gpu.speed     (bench/gpu/check.sh runs it)
"""

from __future__ import annotations

from pathlib import Path

from bench.transfer.scale import speed


def main() -> None:
    for workers in (4, 12):
        for row in speed(Path("/tmp/fxprune-scale"), images=4000, batch=128, device="cuda", workers=workers):
            print(row, flush=True)


if __name__ == "__main__":
    main()
