#!/usr/bin/env bash
# Creates ./.venv and installs requirements.txt into it when they are missing or changed.
# Usage: source tools/setup_env.sh   (then use $PYTHON)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EXCEL_VENV:-$ROOT/.venv}"
PYTHON="$VENV/bin/python"
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$PYTHON" ]; then
    echo "creating virtual environment in $VENV"
    python3 -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "installing requirements into $VENV (first run: a few minutes)"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements.txt"
    echo "$WANT" > "$STAMP"
fi
export PYTHON
