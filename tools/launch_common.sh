# Shared by the launchers (run_train.sh, infer_lam.sh, infer_seg_*.sh); source it, do not run it.
#   pick_python           sets PYTHON: $PYTHON, else ./.venv/bin/python when present, else python
#   pick_device DEVICES N sets DEVICE_ARGS: () with CUDA_VISIBLE_DEVICES exported when a GPU is usable
#                         (an error when DEVICES has fewer than N GPUs, or when nvidia-smi lists GPUs that
#                         torch cannot use), else (device=cpu) for N CPU processes with gloo. Expand it as
#                         ${DEVICE_ARGS[@]+"${DEVICE_ARGS[@]}"}: bash <= 4.3 under set -u rejects an empty array
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
    local visible=0 listed=0
    if command -v nvidia-smi >/dev/null 2>&1; then
        listed=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
        visible=$(CUDA_VISIBLE_DEVICES=$1 "$PYTHON" -c "import torch; print(torch.cuda.device_count())" || echo 0)
    fi
    if [ "$listed" -gt 0 ] && [ "$visible" -eq 0 ] && [ "$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))" || echo 0)" = 0 ]; then
        local driver torch_cuda
        driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)
        torch_cuda=$("$PYTHON" -c "import torch; print(torch.version.cuda or 'none (a CPU-only build)')" || echo unknown)
        echo "error: nvidia-smi lists $listed GPU(s) but torch cannot use them (torch $("$PYTHON" -c "import torch; print(torch.__version__)" || echo '?'), CUDA build $torch_cuda, driver ${driver:-unknown}); install a torch build for this driver, or hide the GPUs (CUDA_VISIBLE_DEVICES=) to train on the CPU" >&2
        exit 2
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
