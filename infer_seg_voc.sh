#!/usr/bin/env bash
# Segmentation inference with a trained checkpoint, one process per GPU (torchrun).
#
#   bash infer_seg_voc.sh tools/infer_seg_voc.py [gpu_devices] [gpu_number] [split] checkpoint [key=value ...]
#
#   gpu_devices  CUDA_VISIBLE_DEVICES, e.g. 0,1 (default 0)      gpu_number  processes (default 1)
#   split        split list to segment (default val; test* is predicted without scoring)
# Empty strings ("") select the defaults. Without a usable GPU, gpu_number CPU processes run with
# gloo (device=cpu). Environment: PYTHON (default python), MASTER_PORT (default: a free port).
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
PYTHON=${PYTHON:-python}

if command -v nvidia-smi >/dev/null 2>&1 \
    && CUDA_VISIBLE_DEVICES=$GPU_DEVICES "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    DEVICE=()
    export CUDA_VISIBLE_DEVICES=$GPU_DEVICES
else
    echo "no usable GPU: running $GPU_NUMBER CPU process(es) with gloo" >&2
    DEVICE=(device=cpu)
fi
MASTER_PORT=${MASTER_PORT:-$("$PYTHON" -c "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])")}

exec "$PYTHON" -m torch.distributed.run --nproc_per_node="$GPU_NUMBER" --master_port="$MASTER_PORT" \
    "$SCRIPT" --split "$SPLIT" --checkpoint "$CHECKPOINT" "$@" "${DEVICE[@]}"
