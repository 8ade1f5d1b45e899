#!/usr/bin/env bash
# Segmentation inference with a trained checkpoint, one process per GPU (torchrun).
#
#   bash infer_seg_coco.sh tools/infer_seg_coco.py [gpu_devices] [gpu_number] [split] checkpoint [options, key=value ...]
#
#   gpu_devices  CUDA_VISIBLE_DEVICES, e.g. 0,1 (default 0)      gpu_number  processes (default 1)
#   split        split list to segment (default val; test* is predicted without scoring)
# Empty strings ("") select the defaults. Without a usable GPU, gpu_number CPU processes run with
# gloo (device=cpu). Environment: PYTHON (default: .venv/bin/python when present, else python), MASTER_PORT (default: a free port).
set -euo pipefail

usage() {
    echo "error: the checkpoint argument is required" >&2
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
[ $# -ge 5 ] && [ -n "$5" ] || usage

SCRIPT=$1
GPU_DEVICES=${2:-0}
GPU_NUMBER=${3:-1}
SPLIT=${4:-val}
CHECKPOINT=$5
shift 5
source "$(dirname "${BASH_SOURCE[0]}")/tools/launch_common.sh"
check_script "$SCRIPT"
check_count gpu_number "$GPU_NUMBER"
pick_python
pick_device "$GPU_DEVICES" "$GPU_NUMBER"
MASTER_PORT=${MASTER_PORT:-$(free_port)}

# The user's options and overrides come last (any order): they win over the launcher's.
run_ranks --nproc_per_node="$GPU_NUMBER" --master_port="$MASTER_PORT" \
    "$SCRIPT" --split "$SPLIT" --checkpoint "$CHECKPOINT" ${DEVICE_ARGS[@]+"${DEVICE_ARGS[@]}"} "$@"
