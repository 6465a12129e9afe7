#!/usr/bin/env bash
# The checks that need a CUDA device, as one prepared run for a lent GPU machine:
#   bash scripts/gpu_checks.sh OUT_DIR [quick]
# CUDA tests, `make bench --device cuda` in bf16 and fp32, `make bench-tasks` on the GPU, and a short
# training run of each task on CUDA. Writes logs and results into OUT_DIR (default results/gpu).
# `quick` leaves out the layer benchmark (bench.py), the longest part.
# Expects python3 with torch+triton; hydra wheels may be pre-installed on PYTHONPATH by the caller.
set -uo pipefail
OUT=${1:-results/gpu}
QUICK=${2:-}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
status=0
step() { echo "=== $*"; "$@" || { echo "!!! failed: $*"; status=1; }; }
{
  step nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
  step python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  step python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_kernels.py
  if [ "$QUICK" != quick ]; then
    step python3 scripts/bench.py --device cuda --dtype bfloat16 --out "$OUT"
    step python3 scripts/bench.py --device cuda --dtype float32 --out "$OUT"
  fi
  step python3 scripts/bench_tasks.py --device cuda --out "$OUT"
  for task in $(python3 scripts/tasks.py list); do
    step python3 scripts/prepare.py task=$task preset=demo data_dir=/tmp/gpu-data
    step python3 scripts/train.py task=$task norm=rmsnorm preset=demo logger=none device=cuda train.progress=false \
      train.max_steps=60 train.eval_every=60 data_dir=/tmp/gpu-data hydra.run.dir=/tmp/gpu-run-$task
    step python3 -c "import json,sys; s=json.load(open('/tmp/gpu-run-$task/summary.json')); print(s['device'], s['metrics'], s['timing'])"
  done
} 2>&1 | tee "$OUT/gpu-checks.log"
exit $status
