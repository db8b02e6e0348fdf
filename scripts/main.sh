#!/usr/bin/env bash
# Main job: trains the default recipe (creates the environment on first use).
# Extra arguments go to `python -m recipes fit`, e.g. --model.init_args.core=tbptt (the TBPTT baseline).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
exec python -m recipes fit --config configs/default.yaml "$@"
