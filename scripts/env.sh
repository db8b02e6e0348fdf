#!/usr/bin/env bash
# Creates or updates the project's virtual environment (.venv) and the one system library it needs.
# Sourced by scripts/main.sh and scripts/test.sh; safe to run again (it re-installs only when
# pyproject.toml or constraints.txt changed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

# ProcGen (from envpool) needs Debian's Qt 5 runtime.
if ! ldconfig -p 2>/dev/null | grep -q 'libQt5Gui.so.5'; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        echo "[setup] installing Debian's libqt5gui5 (needed by envpool's ProcGen)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libqt5gui5 >/dev/null) \
            || echo "[setup] warning: could not install libqt5gui5; ProcGen will be unavailable"
    else
        echo "[setup] warning: ProcGen needs Qt 5; run: sudo apt-get install libqt5gui5"
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.installed"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "[setup] installing the project and its dependencies into $VENV (first run takes a few minutes)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[all]"
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
