#!/usr/bin/env bash
# GPU check in one go (under 10 minutes on one GPU): the device-parametrised tests on CUDA (PAR, refinement,
# backbone, segmentation, optimiser), tools/benchmark.py --device cuda, and a 200-iteration training run on
# synthetic VOC-shaped data with AMP (tools/gpu_check.py); ends with one table.
#
#   bash tools/gpu_check.sh [--out DIR] [--device cuda|cpu] [--iters N] [--dry-run] [-- section.key=value ...]
#
# --dry-run prints the commands instead of running them; overrides after -- go to the benchmark and the run.
# PYTHON selects the interpreter (default: python).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
OUT="work_dirs/gpu_check"
DEVICE="cuda"
ITERS=200
DRY_RUN=0
OVERRIDES=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --device) DEVICE="$2"; shift 2 ;;
        --iters) ITERS="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --) shift; OVERRIDES=("$@"); break ;;
        *) echo "error: unknown argument '$1' (see the usage at the top of tools/gpu_check.sh)" >&2; exit 2 ;;
    esac
done
if ! [[ "$ITERS" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: --iters must be a positive integer, got '$ITERS'" >&2
    exit 2
fi
LVC_START=$((ITERS / 2))
TESTS=(tests/test_par.py tests/test_refine.py tests/test_backbone.py tests/test_segment.py tests/test_losses.py)

run() {
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '%q ' "$@"
        printf '\n'
    else
        "$@"
    fi
}

cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
run env EXCEL_TEST_DEVICE="$DEVICE" "$PYTHON" -m pytest -q -x -p no:cacheprovider "${TESTS[@]}"
run "$PYTHON" tools/benchmark.py --device "$DEVICE" --repeats 5 --warmup 2 --out "$OUT/benchmark" "${OVERRIDES[@]}"
run "$PYTHON" tools/gpu_check.py --device "$DEVICE" --iters "$ITERS" --lvc-start "$LVC_START" --out "$OUT" \
    --benchmark "$OUT/benchmark/benchmark_${DEVICE%%:*}.json" "${OVERRIDES[@]}"
