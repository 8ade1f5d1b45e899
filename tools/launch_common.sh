# Shared by the launchers (run_train.sh, infer_lam.sh, infer_seg_*.sh); source it, do not run it.
#   pick_python           sets PYTHON: $PYTHON, else ./.venv/bin/python when present, else python
#   pick_device DEVICES N sets DEVICE_ARGS: () with CUDA_VISIBLE_DEVICES exported when a GPU is usable,
#                         else (device=cpu) for N CPU processes with gloo
#   free_port             prints a free TCP port

pick_python() {
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if [ -z "${PYTHON:-}" ]; then
        if [ -x "$root/.venv/bin/python" ]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python; fi
    fi
}

pick_device() {
    if command -v nvidia-smi >/dev/null 2>&1 \
        && CUDA_VISIBLE_DEVICES=$1 "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
        export CUDA_VISIBLE_DEVICES=$1
        DEVICE_ARGS=()
    else
        echo "no usable GPU: running $2 CPU process(es) with gloo" >&2
        DEVICE_ARGS=(device=cpu)
    fi
}

free_port() {
    "$PYTHON" -c "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])"
}
