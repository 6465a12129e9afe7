#!/usr/bin/env bash
# The training runs of `make demo`: every task x every norm it declares x every seed, and the Transformer's
# pre-norm placement beside its post-norm one. One Hydra sweep (over the norms) per task and seed, run in
# JOBS parallel lanes of one thread each (on a 2-core machine two one-thread runs train about twice as many
# steps a second as one two-thread run of these small models). A failed sweep does not stop the others: the
# exit status says that something failed, and the report marks the missing rows.
#   usage: bash scripts/demo_runs.sh OUT   (env: PY, JOBS=2, SEEDS="0 1 2", LOGGER=logger=none)
set -u
OUT=${1:?usage: demo_runs.sh OUT}
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-2}
SEEDS=${SEEDS:-0 1 2}
export PY OUT LOGGER=${LOGGER:-logger=none}

# every task with its norms, read once (each start of tasks.py costs seconds of imports: 18 of them inside the
# lanes cost the demo about 45 s)
TABLE=$("$PY" scripts/tasks.py table) || { echo "demo: could not read the tasks' norms from configs/"; exit 1; }
export TABLE

one() {  # one task (or transformer-pre) and one seed: a sweep over the task's norms
  local name=$1 seed=$2 task=$1 extra=()
  if [ "$name" = transformer-pre ]; then task=transformer; extra=(task.model.norm_position=pre); fi
  local norms
  norms=$(awk -v t="$task" '$1 == t {print $2}' <<< "$TABLE")
  [ -n "$norms" ] || { echo "  $name seed $seed: no norms for task $task in configs/"; return 1; }
  mkdir -p "$OUT/logs"
  local start=$SECONDS
  if OMP_NUM_THREADS=1 "$PY" scripts/train.py -m "task=$task" "norm=$norms" preset=demo "seed=$seed" "${extra[@]}" \
      "$LOGGER" train.progress=false "hydra.sweep.dir=$OUT/$name/s$seed" > "$OUT/logs/$name-s$seed.log" 2>&1; then
    echo "  $name seed $seed: done in $((SECONDS - start)) s"
  else
    echo "  $name seed $seed: FAILED after $((SECONDS - start)) s (log: $OUT/logs/$name-s$seed.log)"
    return 1
  fi
}
export -f one

# longest sweeps first (their order measured on the 2-core AMD EPYC, 2026-12-01 15:51: translation 91-103 s a
# seed, CIFAR-10 81-91, the Transformer's two placements 62-74, reading 44-48 since its batch norm runs in the
# native op, retrieval 23-30), so the lanes end together instead of one waiting on a long sweep started last;
# any task not named here runs after them, and a name here that configs/ lacks is left out
order="translation cifar10 transformer-pre transformer reading retrieval"
tasks=$(awk '{print $1}' <<< "$TABLE")
if grep -qx transformer <<< "$tasks"; then tasks=$(printf '%s\n' $tasks transformer-pre); fi
names=$(printf '%s\n' $order $tasks | awk 'NR == FNR {known[$0]; next} ($0 in known) && !seen[$0]++' \
  <(printf '%s\n' $tasks) -)
jobs=()
for name in $names; do
  for seed in $SEEDS; do jobs+=("$name $seed"); done
done
echo "demo: ${#jobs[@]} sweeps in $JOBS lanes"
printf '%s\n' "${jobs[@]}" | xargs -P "$JOBS" -L 1 bash -c 'one "$0" "$1"'
