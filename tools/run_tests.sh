#!/usr/bin/env bash
# The test suite, in a virtual environment this script creates if needed: bash tools/run_tests.sh [pytest args]
# First the import contract of pyproject.toml (lint-imports: imports run one way, down the floors), then pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/setup_env.sh
"$(dirname "$PYTHON")/lint-imports" --no-cache
exec "$PYTHON" -m pytest -q "$@"
