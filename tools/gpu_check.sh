#!/usr/bin/env bash
# GPU check in one go (under 10 minutes on one GPU): the device-parametrised tests on CUDA, tools/benchmark.py
# in fp32, bf16 and fp16, and a 200-iteration training run (random ViT-B/16, batch 4×320², synthetic data)
# with peak memory; ends with one table (DIR/gpu_check.md). Every step is reported, also after another failed.
#
#   bash tools/gpu_check.sh [--out DIR] [--device cuda|cpu] [--iters N] [--precision bf16] [--dry-run]
#                           [section.key=value ...]
#
# --dry-run prints the steps' commands; overrides go to the benchmark and the training run. A rerun into the
# same --out replaces its files. PYTHON selects the interpreter (default: ./.venv/bin/python when present).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/tools/launch_common.sh"
pick_python
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" tools/gpu_check.py "$@"
