#!/usr/bin/env bash
# The GPU check for a machine that has one (the `device` tool lends one to some sessions), from the
# repository root after README's install: writes everything under ${OUT:-bench/gpu/results}.
#   bash bench/gpu/check.sh            (PY=python3 where the install is not .venv)
# 1. the device-parametrised tests on CUDA; 2. the demo's transfer on CUDA (--device cuda --amp bf16
# --workers 4); 3. training images/s, CUDA vs CPU; 4. the lossless smoke zoo on CUDA against the CPU.
# Each step has its own time limit (STEP_S seconds, default 240; the demo twice that) so that one slow step
# leaves the others their time.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-bench/gpu/results}
mkdir -p "$out"
py=${PY:-.venv/bin/python}
limit=${STEP_S:-240}
step() {  # step NAME SECONDS COMMAND...: the command's output in $out/NAME, its last line on stdout
  local name=$1 seconds=$2; shift 2
  local start=$SECONDS
  timeout "$seconds" "$@" > "$out/$name" 2>&1
  echo "$name: rc $? in $((SECONDS - start)) s: $(tail -1 "$out/$name")"
}
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
$py -c "import torch, torchvision, timm; print(torch.__version__, torchvision.__version__, timm.__version__,
torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())" > "$out/torch.txt" 2>&1
cat "$out/torch.txt"
step tests.txt "$limit" $py -m pytest -q -p no:cacheprovider tests/test_transfer_scale.py -k "device or bf16"
d=/tmp/fxprune-demo-data
$py -c "from pathlib import Path; from fxprune.runners.demo import prepare; prepare(Path('$d'))"
timer=""; [ -x /usr/bin/time ] && timer="/usr/bin/time -v"  # peak memory where GNU time is installed
step demo.txt "$((2 * limit))" $timer $py -m fxprune transfer timm:efficientnet_lite0 \
  --weights $d/efficientnet_lite0_imagenet.pt --num-classes 10 --data $d/digits --test $d/digits-test \
  --image-size 64 --epochs 10 --augment none --device cuda --amp bf16 --workers 4 --out /tmp/fxprune-gpu/small.pt2
grep -E 'params .* fewer|test|check' "$out/demo.txt" | tail -4
step speed.md "$limit" $py -m bench.gpu.speed
step lossless.md "$limit" $py -m bench.gpu.lossless
