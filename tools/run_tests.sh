#!/usr/bin/env bash
# The test suite, in a virtual environment this script creates if needed: bash tools/run_tests.sh [pytest args]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/setup_env.sh
exec "$PYTHON" -m pytest -q "$@"
