#!/usr/bin/env bash
# Train with torchrun, one process per GPU (or one CPU process with gloo when no GPU is usable).
#
#   bash run_train.sh scripts/train_voc.py [gpu_devices] [gpu_number] [master_port] [tag] [options, key=value ...]
#
#   gpu_devices  CUDA_VISIBLE_DEVICES, e.g. 0,1 (default 0)     gpu_number   processes per node (default 1)
#   master_port  rendezvous port (default: a free port; give one for multi-node runs)
#   tag          run name: work_dir=work_dirs/<dataset>_<tag>   then the script's options and overrides, any order
# Multi-node: set NNODES and MASTER_ADDR (same command on every node, started in any order; c10d rendezvous).
# Environment: MAX_RESTARTS (default 0) restarts of the workers after a failure, each resuming from the
# newest checkpoint; RUN_ID the job's id (default: new per launch; multi-node: $SLURM_JOB_ID or
# MASTER_ADDR:master_port); PYTHON (default: .venv/bin/python when present, else python).
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

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
[[ "${MAX_RESTARTS:-0}" =~ ^[0-9]+$ ]] \
    || { echo "error: MAX_RESTARTS must be a non-negative integer, got '${MAX_RESTARTS}'" >&2; exit 2; }
[ -z "$MASTER_PORT" ] || check_count master_port "$MASTER_PORT"
NNODES=${NNODES:-1}
if [ "$NNODES" -gt 1 ] && { [ -z "${MASTER_ADDR:-}" ] || [ -z "$MASTER_PORT" ]; }; then
    echo "error: NNODES=$NNODES needs MASTER_ADDR (the first node's address) and a master_port, the same on every node" >&2
    exit 2
fi
pick_python
pick_device "$GPU_DEVICES" "$GPU_NUMBER"
MASTER_PORT=${MASTER_PORT:-$(free_port)}

if [ "$NNODES" -gt 1 ]; then       # the nodes meet at MASTER_ADDR:master_port, whichever starts first
    RUN_ID=${RUN_ID:-${SLURM_JOB_ID:-$MASTER_ADDR:$MASTER_PORT}}
    RENDEZVOUS=(--nnodes="$NNODES" --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT")
else
    RUN_ID=${RUN_ID:-$(new_run_id)}
    RENDEZVOUS=(--nnodes=1 --master_addr=127.0.0.1 --master_port="$MASTER_PORT")
fi

EXTRA=(${DEVICE_ARGS[@]+"${DEVICE_ARGS[@]}"})
if [ -n "$TAG" ]; then
    DATASET=$(basename "$SCRIPT" .py); DATASET=${DATASET#train_}
    EXTRA+=("work_dir=work_dirs/${DATASET}_${TAG}")
fi

# The user's options and overrides come last (any order): they win over the launcher's.
run_ranks \
    "${RENDEZVOUS[@]}" --rdzv-id="$RUN_ID" --max-restarts="${MAX_RESTARTS:-0}" \
    --nproc_per_node="$GPU_NUMBER" \
    "$SCRIPT" ${EXTRA[@]+"${EXTRA[@]}"} "$@"
