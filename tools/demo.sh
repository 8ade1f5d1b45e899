#!/usr/bin/env bash
# The main job: ExCEL end to end on synthetic shapes with a tiny CLIP, on a CPU, in minutes.
# Creates ./.venv on first use. Arguments go to tools/demo.py (e.g. --quick, section.key=value).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/setup_env.sh
exec "$PYTHON" tools/demo.py "$@"
