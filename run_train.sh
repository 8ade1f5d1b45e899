#!/usr/bin/env bash
# Train with torchrun, one process per GPU (or one CPU process with gloo when no GPU is usable).
#
#   bash run_train.sh scripts/train_voc.py [gpu_devices] [gpu_number] [master_port] [tag] [options, key=value ...]
#
#   gpu_devices  CUDA_VISIBLE_DEVICES, e.g. 0,1 (default 0)     gpu_number   processes per node (default 1)
#   master_port  rendezvous port (default: a free port; give one for multi-node runs)
#   tag          run name: work_dir=work_dirs/<dataset>_<tag>   then the script's options and overrides, any order
# Multi-node: set NNODES, NODE_RANK and MASTER_ADDR (same command on every node).
# Environment: PYTHON (default: .venv/bin/python when present, else python).
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

SCRIPT=$1
GPU_DEVICES=${2:-0}
GPU_NUMBER=${3:-1}
MASTER_PORT=${4:-}
TAG=${5:-}
shift $(( $# < 5 ? $# : 5 ))
source "$(dirname "${BASH_SOURCE[0]}")/tools/launch_common.sh"
check_script "$SCRIPT"
check_count gpu_number "$GPU_NUMBER"
check_count NNODES "${NNODES:-1}"
[ -z "$MASTER_PORT" ] || check_count master_port "$MASTER_PORT"
pick_python
pick_device "$GPU_DEVICES" "$GPU_NUMBER"
MASTER_PORT=${MASTER_PORT:-$(free_port)}

EXTRA=("${DEVICE_ARGS[@]}")
if [ -n "$TAG" ]; then
    DATASET=$(basename "$SCRIPT" .py); DATASET=${DATASET#train_}
    EXTRA+=("work_dir=work_dirs/${DATASET}_${TAG}")
fi

# The user's options and overrides come last (any order): they win over the launcher's.
run_ranks \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="$MASTER_PORT" \
    --nproc_per_node="$GPU_NUMBER" \
    "$SCRIPT" "${EXTRA[@]}" "$@"
