#!/usr/bin/env bash
# The GPU check for a machine that has one (the `device` tool lends one to some sessions), from the
# repository root after README's install: writes everything under ${OUT:-bench/gpu/results}.
#   bash bench/gpu/check.sh
# 1. the device-parametrised tests on CUDA; 2. the lossless smoke zoo on CUDA against the CPU;
# 3. the demo's transfer on CUDA (--device cuda --amp bf16 --workers 4); 4. training images/s, CUDA vs CPU;
# 5. where the float64 SVD and fold run faster.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-bench/gpu/results}
mkdir -p "$out"
py=${PY:-.venv/bin/python}
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
$py -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())" \
  > "$out/torch.txt" 2>&1
$py -m pytest -q -p no:cacheprovider tests/test_transfer_scale.py -k "device or bf16" > "$out/tests.txt" 2>&1
echo "tests: $(tail -1 "$out/tests.txt")"
$py -m bench.gpu.lossless > "$out/lossless.md" 2>&1
echo "lossless: $(tail -1 "$out/lossless.md")"
d=/tmp/fxprune-demo-data
$py -c "from pathlib import Path; from fxprune.runners.demo import prepare; prepare(Path('$d'))"
timer=""; [ -x /usr/bin/time ] && timer="/usr/bin/time -v"  # peak memory where GNU time is installed
$timer $py -m fxprune transfer timm:efficientnet_lite0 --weights $d/efficientnet_lite0_imagenet.pt \
  --num-classes 10 --data $d/digits --test $d/digits-test --image-size 64 --epochs 10 \
  --augment none --device cuda --amp bf16 --workers 4 --out "$out/demo/small.pt2" > "$out/demo.txt" 2>&1
echo "demo: $(grep -E 'params .* fewer' "$out/demo.txt")"
$py -m bench.gpu.speed > "$out/speed.md" 2>&1
echo "speed: $(tail -3 "$out/speed.md")"
