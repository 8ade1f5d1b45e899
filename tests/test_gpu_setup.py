"""What a first GPU run needs, checked on the CPU: each process's device, each rank's own RNG state, the global
batch, and the launchers' GPU checks (bash arrays under set -u, a GPU torch cannot use)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from excel.config import ConfigError
from excel.data.sampler import per_process_batch
from excel.utils import distributed as dist

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = ["run_train.sh", "infer_lam.sh", "infer_seg_voc.sh", "infer_seg_coco.sh"]


@pytest.fixture()
def cuda_present(monkeypatch):
    """Pretend CUDA is available (resolve_device only names devices; nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.parametrize("name", ["cuda", "auto"])
def test_indexless_cuda_takes_the_local_rank(cuda_present, monkeypatch, name):
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert dist.resolve_device(name) == torch.device("cuda", 3)


def test_numbered_gpu_is_kept_for_one_process_and_refused_for_several(cuda_present, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert dist.resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(dist.DeviceError, match=r"^device=cuda:1 would put every process .* use device=cuda"):
        dist.resolve_device("cuda:1")


def test_cuda_without_cuda_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(dist.DeviceError, match="device=cuda was asked for but CUDA is not available"):
        dist.resolve_device("cuda")


def test_rng_state_of_a_cpu_process_restores_exactly():
    state = dist.rng_state(torch.device("cpu"))
    assert state["cuda"] is None
    first = torch.rand(5)
    dist.set_rng_state(state, torch.device("cpu"))
    assert torch.equal(torch.rand(5), first)


def test_rng_state_restores_this_ranks_own_gpu_state(monkeypatch):
    """Each rank saves its own device's state and restores it into its device; an old checkpoint's list of
    every visible GPU is indexed by the device, falling back to the first entry when it has fewer."""
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    cpu = torch.get_rng_state()
    dist.set_rng_state({"torch": cpu, "cuda": "own"}, torch.device("cuda", 2))
    dist.set_rng_state({"torch": cpu, "cuda": ["gpu0", "gpu1"]}, torch.device("cuda", 1))
    dist.set_rng_state({"torch": cpu, "cuda": ["gpu0"]}, torch.device("cuda", 3))       # fewer GPUs: no IndexError
    dist.set_rng_state({"torch": cpu, "cuda": []}, torch.device("cuda", 0))             # saved on a CPU: nothing
    dist.set_rng_state({"torch": cpu, "cuda": "own"}, torch.device("cpu"))
    assert restored == [("own", torch.device("cuda", 2)), ("gpu1", torch.device("cuda", 1)),
                        ("gpu0", torch.device("cuda", 3))]


@pytest.mark.parametrize("batch,processes,share", [(4, 1, 4), (4, 2, 2), (4, 4, 1), (8, 4, 2)])
def test_global_batch_is_shared_by_the_processes(batch, processes, share):
    assert per_process_batch(batch, processes, 100, "train") == share


def test_global_batch_that_does_not_divide_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^train.batch_size=4 is the batch over all processes and must be "
                                          r"divisible by the 3 processes") as info:
        per_process_batch(4, 3, 100, "train")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"^train.batch_size=4 needs at least that many images, but split 'tiny' "
                                          r"has 3; lower train.batch_size"):
        per_process_batch(4, 2, 3, "tiny")


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_launchers_expand_possibly_empty_arrays_safely(launcher):
    """bash <= 4.3 under set -u stops on "${A[@]}" of an empty array: DEVICE_ARGS is empty on the GPU path,
    so every expansion of it (and of arrays built from it) uses the guarded form."""
    text = (ROOT / launcher).read_text()
    for name in ("DEVICE_ARGS", "EXTRA"):
        bare = [m.start() for m in re.finditer(r'"\$\{%s\[@\]\}"' % name, text)
                if not text[:m.start()].endswith(f"${{{name}[@]+")]
        assert not bare, f"{launcher}: unguarded \"${{{name}[@]}}\""


def test_guarded_expansion_of_an_empty_array_runs_under_set_u():
    script = 'set -u; DEVICE_ARGS=(); EXTRA=(${DEVICE_ARGS[@]+"${DEVICE_ARGS[@]}"}); echo "${#EXTRA[@]}"'
    assert subprocess.run(["bash", "-c", script], capture_output=True, text=True).stdout.strip() == "0"


def test_launcher_refuses_gpus_that_torch_cannot_use(tmp_path):
    """nvidia-smi lists a GPU, torch (this CPU machine) cannot use it: one error line with the torch CUDA
    build and the driver version instead of a CPU training run."""
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "nvidia-smi").write_text('#!/usr/bin/env bash\n'
                                     'case "$1" in -L) echo "GPU 0: NVIDIA Test GPU (UUID: GPU-0)";; '
                                     '--query-gpu=driver_version) echo 418.67;; esac\n')
    (shim / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PYTHON": sys.executable, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "run_train.sh", "scripts/train_voc.py", "0", "1"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "nvidia-smi lists 1 GPU(s) but torch cannot use them" in errors[0]
    assert "driver 418.67" in errors[0] and f"CUDA build {torch.version.cuda or 'none'}" in errors[0]
