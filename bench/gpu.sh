#!/usr/bin/env bash
# The GPU check as one prepared run, for a session whose task is lent a GPU (about 15
# minutes of device time, all tries together): the CUDA tests, then the step-overhead
# table on the GPU. Through the device tool, from the repository root:
#
#   bash bench/gpu.sh                 # (timeout_s=600) outputs land in $OUT, else bench/gpu-out
#
# then paste the outputs, with this command, into BENCHMARKS.md (step_overhead) and give the
# machine back. Uses the machine's own python3 and torch (nothing is installed there).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/gpu-out}
mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
timeout 240 python3 -m pytest -p no:cacheprovider -q -rs tests/test_cuda.py 2>&1 | tee "$out/test_cuda.txt"
timeout 300 python3 bench/step_overhead.py --device cuda 2>&1 | tee "$out/step_overhead_cuda.txt"
