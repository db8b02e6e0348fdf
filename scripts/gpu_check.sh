#!/usr/bin/env bash
# The GPU checks in one run: the CUDA runs of the core, module and loss tests (pytest -m cuda), then
# the core and learner benchmarks on CUDA (learner at M = 5 and M = 50, RTRL vs TBPTT vs TorchRL's
# LSTMModule). Writes the test log and the benchmark tables (Markdown and JSON) to OUT_DIR.
#
#   bash scripts/gpu_check.sh [OUT_DIR]            # default OUT_DIR: gpu_results
#   PYTHON=/path/to/python bash scripts/gpu_check.sh
#   DEVICE=cpu QUICK=1 bash scripts/gpu_check.sh   # a dry run of the script itself on the CPU
#
# Needs a Python whose torch is a CUDA build, with the project's dependencies (torchrl, tensordict,
# lightning, omegaconf: e.g. `pip install torchrl==0.14.1 tensordict==0.14.3 omegaconf` beside a
# CUDA torch; scripts/env.sh pins the CPU build); PYTHON defaults to .venv/bin/python, else python3.
# Each step has a time limit so the whole run stays under eight minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DEVICE=${DEVICE:-cuda}
OUT_DIR=${1:-gpu_results}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ "$DEVICE" == cuda ]]; then
    "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
    "$PYTHON" -c "import torch; print('#', torch.__version__, torch.cuda.get_device_name())" | tee "$OUT_DIR/device.txt"
    timeout 150 "$PYTHON" -m pytest -q -p no:xdist -p no:cacheprovider -m cuda tests/core tests/modules \
        tests/objectives 2>&1 | tee "$OUT_DIR/tests.txt"
fi
quick=()
if [[ -n "${QUICK:-}" ]]; then quick=(--quick); fi
timeout 150 "$PYTHON" benchmarks/bench_core.py --device "$DEVICE" --threads 0 --reps 9 "${quick[@]}" \
    --json "$OUT_DIR/core.json" | tee "$OUT_DIR/core.md"
for steps in 5 50; do
    timeout 100 "$PYTHON" benchmarks/bench_learner.py --device "$DEVICE" --sizes procgen --steps "$steps" \
        --cores tbptt rtrl lstm "${quick[@]}" --json "$OUT_DIR/learner_m$steps.json" \
        | tee "$OUT_DIR/learner_m$steps.md"
done
echo "# tables in $OUT_DIR"
