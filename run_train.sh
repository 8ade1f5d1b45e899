#!/usr/bin/env bash
# Train with torchrun, one process per GPU (or one CPU process with gloo when no GPU is usable).
#
#   bash run_train.sh scripts/train_voc.py [gpu_devices] [gpu_number] [master_port] [tag] [key=value ...]
#
#   gpu_devices  CUDA_VISIBLE_DEVICES, e.g. 0,1 (default 0)     gpu_number   processes per node (default 1)
#   master_port  rendezvous port (default: a free port; give one for multi-node runs)                  tag          run name: work_dir=work_dirs/<dataset>_<tag>
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
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi

if [ -z "$MASTER_PORT" ]; then
    MASTER_PORT=$("$PYTHON" -c "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])")
fi

EXTRA=()
if [ -n "$TAG" ]; then
    DATASET=$(basename "$SCRIPT" .py); DATASET=${DATASET#train_}
    EXTRA+=("work_dir=work_dirs/${DATASET}_${TAG}")
fi
if command -v nvidia-smi >/dev/null 2>&1 \
    && CUDA_VISIBLE_DEVICES=$GPU_DEVICES "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    export CUDA_VISIBLE_DEVICES=$GPU_DEVICES
else
    echo "no usable GPU: running $GPU_NUMBER CPU process(es) with gloo" >&2
    EXTRA+=(device=cpu)
fi

exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="$MASTER_PORT" \
    --nproc_per_node="$GPU_NUMBER" \
    "$SCRIPT" "$@" "${EXTRA[@]}"
