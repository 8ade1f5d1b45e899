#!/usr/bin/env bash
# Pseudo labels for a split with torchrun, one process per GPU (CPU processes with gloo when no GPU is usable).
#
#   bash infer_lam.sh tools/infer_lam.py [gpu_devices] [gpu_number] [split] [checkpoint] [options, key=value ...]
#
#   gpu_devices  CUDA_VISIBLE_DEVICES (default 0)      gpu_number  processes (default 1)
#   split        split list (default train)            checkpoint  trained head ("" or absent: training-free)
# Environment: PYTHON (default: .venv/bin/python when present, else python), MASTER_PORT (default: a free port).
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

SCRIPT=$1
GPU_DEVICES=${2:-0}
GPU_NUMBER=${3:-1}
SPLIT=${4:-train}
CHECKPOINT=${5:-}
shift $(( $# < 5 ? $# : 5 ))
source "$(dirname "${BASH_SOURCE[0]}")/tools/launch_common.sh"
check_script "$SCRIPT"
check_count gpu_number "$GPU_NUMBER"
pick_python
pick_device "$GPU_DEVICES" "$GPU_NUMBER"
MASTER_PORT=${MASTER_PORT:-$(free_port)}

ARGS=("dataset.split=$SPLIT")
[ -z "$CHECKPOINT" ] || ARGS=(--checkpoint "$CHECKPOINT" "${ARGS[@]}")
ARGS+=(${DEVICE_ARGS[@]+"${DEVICE_ARGS[@]}"})

# The user's options and overrides come last (any order): they win over the launcher's.
run_ranks --nproc_per_node="$GPU_NUMBER" --master_port="$MASTER_PORT" "$SCRIPT" "${ARGS[@]}" "$@"
