#!/usr/bin/env bash
# The checks that need a CUDA device, as one prepared run for a lent GPU machine:
#   bash scripts/gpu_checks.sh [OUT_DIR] [full|quick]
# full (at most 8 minutes, BUDGET=480 s): the CUDA tests, `make bench --device cuda` in bf16 and fp32, whole
#   training steps of every task at the paper's widths and batches (bench_tasks.py --scale 1), and a short
#   training run of each task on CUDA;
# quick (at most 4 minutes, BUDGET=240 s): the CUDA tests, the bf16 bench, bench-tasks with fewer rounds.
# Every step runs under what is left of the budget (`timeout`), so the script ends in time whatever hangs; a
# step cut short or failed is marked '!!!' in the log and the exit status is 1.
# Writes into OUT_DIR (default results/gpu): the logs, the bench .md/.json files, each stamped with the commit
# and the torch/triton versions that produced them (also in gpu-checks.log's head). Copy them into
# results/bench and results/bench-tasks to replace the stale files there.
#
# On this workplace's lent machine: python3 there has torch and triton but not Hydra; `bash scripts/gpu_wheels.sh`
# (here, once) puts the wheels into .whl/, which the device call carries (`carry: [".whl"]`); this script installs
# them into /tmp/site when .whl/ is present. A copy of the tree without .git cannot name its commit: pass it,
# `RMSNORM_COMMIT=$(git rev-parse HEAD) RMSNORM_DIRTY=0 bash scripts/gpu_checks.sh ...`, and every file says it.
set -uo pipefail
OUT=${1:-results/gpu}
MODE=${2:-full}
case "$MODE" in
  full) BUDGET=${BUDGET:-480} ;;
  quick) BUDGET=${BUDGET:-240} ;;
  *) echo "mode must be full or quick, got '$MODE'" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
START=$(date +%s)
status=0
step() {
  local left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -le 5 ]; then echo "!!! skipped, budget spent: $*"; status=1; return; fi
  echo "=== [$(($(date +%s) - START)) s] $*"
  timeout "$left" "$@"
  local rc=$?
  if [ $rc -ne 0 ]; then echo "!!! failed (exit $rc$([ $rc -eq 124 ] && echo ', out of budget')): $*"; status=1; fi
}
{
  echo "gpu_checks.sh $MODE, budget ${BUDGET} s, commit $($PY -c 'from experiments.core.provenance import describe, stamp; print(describe(stamp()))')"
  step nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
  step $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
  step $PY -m pytest -q -x -p no:cacheprovider -m cuda tests/rmsnorm/test_kernels.py tests/rmsnorm/test_cuda_dispatch.py
  if [ "$MODE" = quick ]; then
    step $PY scripts/bench.py --device cuda --dtype bfloat16 --rounds 5 --seconds-per-round 0.01 --out "$OUT"
    step $PY scripts/bench_tasks.py --device cuda --scale 1 --rounds 6 --steps 3 --no-pipeline --out "$OUT"
  else
    step $PY scripts/bench.py --device cuda --dtype bfloat16 --rounds 9 --seconds-per-round 0.01 --out "$OUT"
    step $PY scripts/bench_tasks.py --device cuda --scale 1 --rounds 10 --steps 5 --no-pipeline --out "$OUT"
    step $PY scripts/bench.py --device cuda --dtype float32 --rounds 7 --seconds-per-round 0.01 --out "$OUT"
    for task in $($PY scripts/tasks.py list); do
      step $PY scripts/prepare.py task=$task preset=demo data_dir=/tmp/gpu-data
      step $PY scripts/train.py task=$task norm=rmsnorm preset=demo logger=none device=cuda train.progress=false \
        train.max_steps=60 train.eval_every=60 data_dir=/tmp/gpu-data hydra.run.dir=/tmp/gpu-run-$task
      step $PY -c "import json; s=json.load(open('/tmp/gpu-run-$task/summary.json')); print(s['device'], s['metrics'], s['timing'], s['kernels'])"
    done
  fi
  echo "gpu_checks.sh done in $(($(date +%s) - START)) s, status $status"
  exit $status
} 2>&1 | tee "$OUT/gpu-checks.log"
exit "${PIPESTATUS[0]}"
