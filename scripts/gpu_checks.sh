#!/usr/bin/env bash
# The checks that need a CUDA device, as one prepared run for a lent GPU machine, in stages:
#   bash scripts/gpu_checks.sh [OUT_DIR] [--dry-run] [--rounds N]        (OUT_DIR default: $OUT, else results/gpu)
# Each stage runs in a process of its own under its own time limit (seconds; their sum is the budget):
#   preflight 20    versions, the installs the stages import, the commit, free memory     -> preflight.jsonl
#   smoke 60        one training step of every task's model on the GPU                     -> smoke.jsonl
#   tests 150       the CUDA tests, a per-test timeout where pytest-timeout is installed    -> cuda-tests.xml
#   bench 120       the norms at the tasks' shapes and a recurrent step, bf16, interleaved  -> bench.jsonl
#   bench-tasks 120 whole training steps of every task, fused norms, interleaved            -> bench-tasks.jsonl
# 470 s in all, under 8 minutes. Every stage writes its rows as it goes (scripts/gpu_checks.py: JSON lines,
# flushed per row), so a timeout, a crash, SIGTERM or SIGKILL keeps every finished row; a failing row is
# recorded and its stage goes on; a failing stage is recorded in stages.jsonl and the next one runs. At most 7
# files: those five, stages.jsonl and gpu-checks.log. --rounds reaches every timed stage.
# --dry-run: the same stages on the CPU with tiny sizes (CUDA-only rows say "skipped: no GPU"), one injected
# failing row in the bench stage; tests/scripts/test_gpu_checks.py runs it on every commit.
#
# On this workplace's lent machine python3 has torch and triton but not Hydra: `bash scripts/gpu_wheels.sh`
# (here, once) puts the wheels into .whl/, which the device call carries (`carry: [".whl"]`); they are installed
# into /tmp/site here, and a failed install is a failed stage, not a silent one. A copy of the tree without
# .git cannot name its commit: pass RMSNORM_COMMIT=$(git rev-parse HEAD) RMSNORM_DIRTY=0.
set -uo pipefail
OUT=${OUT:-results/gpu}
DRY=""
ROUNDS=5
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY="--dry-run" ;;
    --rounds) ROUNDS=$2; shift ;;
    -*) echo "gpu_checks.sh: unknown option $1 (use [OUT_DIR] [--dry-run] [--rounds N])" >&2; exit 2 ;;
    *) OUT=$1 ;;
  esac
  shift
done
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
START=$(date +%s)
status=0
record() {  # stage, exit code, seconds
  echo "{\"stage\": \"$1\", \"exit\": $2, \"seconds\": $3, \"timed_out\": $([ "$2" -eq 124 ] || [ "$2" -eq 137 ] && echo true || echo false)}" >> "$OUT/stages.jsonl"
}
stage() {  # name, limit in seconds, command...
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  echo "=== [$((t0 - START)) s] $name (limit ${limit} s): $*"
  timeout -k 5 "$limit" "$@"
  rc=$?
  record "$name" "$rc" "$(($(date +%s) - t0))"
  if [ $rc -ne 0 ]; then echo "!!! $name: exit $rc$([ $rc -eq 124 ] && echo ', out of time')"; status=1; fi
}
{
  if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    stage wheels 30 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
  fi
  stage preflight 20 $PY scripts/gpu_checks.py preflight --out "$OUT" $DRY
  stage smoke 60 $PY scripts/gpu_checks.py smoke --out "$OUT" $DRY
  TIMEOUT_ARGS=""
  if $PY -c "import pytest_timeout" 2>/dev/null; then TIMEOUT_ARGS="--timeout 60"; fi  # its plugin loads itself
  stage tests 150 $PY -m pytest -q -p no:cacheprovider -m cuda $TIMEOUT_ARGS --junitxml "$OUT/cuda-tests.xml" \
    -o addopts="" tests/rmsnorm tests/experiments/core/test_training_core.py
  stage bench 120 $PY scripts/gpu_checks.py bench --out "$OUT" --rounds "$ROUNDS" $DRY \
    $([ -n "$DRY" ] && echo --inject-failure)
  stage bench-tasks 120 $PY scripts/gpu_checks.py bench-tasks --out "$OUT" --rounds "$ROUNDS" $DRY
  echo "gpu_checks.sh done in $(($(date +%s) - START)) s, status $status"
  exit $status
} 2>&1 | tee -a "$OUT/gpu-checks.log"
exit "${PIPESTATUS[0]}"
