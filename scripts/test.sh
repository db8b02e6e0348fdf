#!/usr/bin/env bash
# Runs the test suite (creates the environment on first use). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
ruff check .
exec python -m pytest -n 2 --dist loadgroup "$@"
