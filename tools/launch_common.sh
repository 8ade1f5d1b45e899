# Shared by the launchers (run_train.sh, infer_lam.sh, infer_seg_*.sh); source it, do not run it.
#   pick_python           sets PYTHON: $PYTHON, else ./.venv/bin/python when present, else python
#   pick_device DEVICES N sets DEVICE_ARGS: () with CUDA_VISIBLE_DEVICES exported when a GPU is usable
#                         (an error when DEVICES has fewer than N GPUs), else (device=cpu) for N CPU
#                         processes with gloo
#   free_port             prints a free TCP port
#   new_run_id            prints a new random job id (torchrun's --rdzv-id)
#   check_count NAME VALUE  exits with an error line unless VALUE is a positive integer
#   check_script PATH     exits with an error line unless PATH is a Python file
#   run_ranks ARGS...     replaces the shell by torchrun (python -m excel.utils.launch: the same options, and a
#                         rank's user error ends as its one error line instead of a torchrun traceback)

LAUNCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

pick_python() {
    if [ -z "${PYTHON:-}" ]; then
        if [ -x "$LAUNCH_ROOT/.venv/bin/python" ]; then PYTHON="$LAUNCH_ROOT/.venv/bin/python"; else PYTHON=python; fi
    fi
}

check_count() {
    if ! [[ "$2" =~ ^[0-9]+$ ]] || [ "$((10#$2))" -eq 0 ]; then
        echo "error: $1 must be a positive integer, got '$2'" >&2
        exit 2
    fi
}

check_script() {
    if [ ! -f "$1" ] || [[ "$1" != *.py ]]; then
        echo "error: the first argument must be the Python script to run (e.g. scripts/train_voc.py), got '$1'" >&2
        exit 2
    fi
}

run_ranks() {
    exec "$PYTHON" -m excel.utils.launch "$@"
}

pick_device() {
    local visible=0
    if command -v nvidia-smi >/dev/null 2>&1; then
        visible=$(CUDA_VISIBLE_DEVICES=$1 "$PYTHON" -c "import torch; print(torch.cuda.device_count())" || echo 0)
    fi
    if [ "$visible" -gt 0 ]; then
        if [ "$2" -gt "$visible" ]; then
            echo "error: gpu_number=$2 processes but gpu_devices=$1 gives $visible usable GPU(s); one process per GPU" >&2
            exit 2
        fi
        export CUDA_VISIBLE_DEVICES=$1
        DEVICE_ARGS=()
    else
        echo "no usable GPU: running $2 CPU process(es) with gloo" >&2
        DEVICE_ARGS=(device=cpu)
    fi
}

new_run_id() {
    "$PYTHON" -c "import uuid; print(uuid.uuid4().hex)"
}

free_port() {
    "$PYTHON" -c "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])"
}
