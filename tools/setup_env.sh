#!/usr/bin/env bash
# Creates ./.venv and installs the project into it (pip install -e .) with the pinned versions of
# constraints.txt, when they are missing or changed. EXCEL_UNPINNED=1 installs the newest releases that
# requirements.txt allows instead. EXCEL_VENV=DIR puts the environment elsewhere.
# Usage: source tools/setup_env.sh   (then use $PYTHON)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EXCEL_VENV:-$ROOT/.venv}"
PYTHON="$VENV/bin/python"
STAMP="$VENV/.install.sha256"
PIN=(-c "$ROOT/constraints.txt")
if [ "${EXCEL_UNPINNED:-0}" = "1" ]; then PIN=(--upgrade); fi
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/constraints.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)${EXCEL_UNPINNED:+-unpinned}"
if [ ! -x "$PYTHON" ]; then
    echo "creating virtual environment in $VENV"
    python3 -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "installing the project into $VENV (first run: a few minutes)"
    (cd "$ROOT" && "$PYTHON" -m pip install --quiet --disable-pip-version-check \
        "${PIN[@]}" -r requirements.txt)
    echo "$WANT" > "$STAMP"
fi
export PYTHON
