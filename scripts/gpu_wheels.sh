#!/usr/bin/env bash
# Wheels of what scripts/gpu_checks.sh needs beyond the lent GPU machine's own python3 (torch, triton, numpy,
# matplotlib, tqdm, sacrebleu are there; Hydra is not), for its Python 3.12, into .whl/ (ignored by git).
# The device call carries .whl; gpu_checks.sh installs it. antlr4's 4.9.3 exists only as a source archive, so
# it is built into a wheel here (pure Python).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PIP=${PIP:-.venv/bin/pip}
# the versions this machine's .venv runs (make install), so both machines run the same Hydra
version() { $PIP show "$1" | sed -n 's/^Version: //p'; }
rm -f .whl/*.whl
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform any \
  -d .whl "hydra-core==$(version hydra-core)" "omegaconf==$(version omegaconf)"
$PIP wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -l .whl
