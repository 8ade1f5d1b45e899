"""The bash launchers end to end on the tiny VOC: options and overrides in any order, user errors as one
line (no torchrun traceback), bad launcher arguments caught before torchrun starts."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.elastic.multiprocessing.errors import (
    ChildFailedError,
    ProcessFailure,
)

from excel.builders import build_model
from excel.config import load_config
from excel.modeling.checkpoint import save_checkpoint
from excel.utils.launch import describe_failure

ROOT = Path(__file__).resolve().parents[1]
VOC_VAL_IDS = ["2007_000033", "2007_000042", "2007_000061", "2007_000123"]


def launcher_env() -> dict:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("MASTER_PORT", None)
    return env


def launch(*args, timeout=300):
    return subprocess.run(["bash", *map(str, args)], cwd=ROOT, env=launcher_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tiny_clip_files, tiny_voc, tmp_path_factory):
    """(overrides for the tiny CLIP on the tiny VOC, a head checkpoint)."""
    config, clip = tiny_clip_files
    work = tmp_path_factory.mktemp("launchers")
    overrides = [f"clip.model_config={config}", f"clip.pretrained={clip}", "tse.enabled=false",
                 "head.adapter_dim=32", "head.adapter_hidden=32", "head.decoder_heads=4", f"dataset.root={tiny_voc}",
                 "infer.resize=32", "infer.scales=[0.5,1.0]", "crf.workers=0", f"work_dir={work}", "device=cpu"]
    torch.manual_seed(0)
    model = build_model(load_config(ROOT / "configs" / "voc.yaml", overrides))
    checkpoint = work / "head.pth"
    save_checkpoint(checkpoint, {"head": model.head.state_dict(), "num_classes": 20, "iteration": 1})
    return overrides, checkpoint


@pytest.mark.parametrize("options_first", [False, True])
def test_infer_seg_launcher_takes_options_and_overrides_in_any_order(tiny_run, tmp_path, options_first):
    overrides, checkpoint = tiny_run
    out = tmp_path / "segment"
    tail = ["--out", out, *overrides] if options_first else [*overrides, "--out", out]
    result = launch("infer_seg_voc.sh", "tools/infer_seg_voc.py", "0", "1", "val", checkpoint, *tail)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.stem for p in (out / "raw").glob("*.png")) == VOC_VAL_IDS
    assert (out / "scores_raw.json").is_file() and (out / "scores_crf.json").is_file()


@pytest.mark.parametrize("command", [
    ["run_train.sh", "scripts/train_voc.py", "0", "1", "", ""],
    ["infer_lam.sh", "tools/infer_lam.py", "0", "1", "val", ""],
    ["infer_seg_voc.sh", "tools/infer_seg_voc.py", "0", "1", "val", "CHECKPOINT"],
])
def test_user_error_under_a_launcher_is_one_line(tiny_run, tmp_path, command):
    overrides, checkpoint = tiny_run
    command = [str(checkpoint) if arg == "CHECKPOINT" else arg for arg in command]
    out = ["--out", tmp_path / "out"] if command[0].startswith("infer") else []
    result = launch(*command, *overrides, "train.eval_interval=0", *out)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert errors == ["error: train.eval_interval=0 is not valid: use an integer >= 1 (default: 2000)"]


@pytest.mark.parametrize("args,message", [
    (["infer_seg_voc.sh", "tools/infer_seg_voc.py", "0", "two", "val", "head.pth"],
     "error: gpu_number must be a positive integer, got 'two'"),
    (["run_train.sh", "scripts/no_such_script.py"], "error: the first argument must be the Python script"),
    (["run_train.sh", "scripts/train_voc.py", "0", "1", "port"], "error: master_port must be a positive integer"),
])
def test_bad_launcher_arguments_stop_before_torchrun(args, message):
    result = launch(*args, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message)


def failure(exitcode: int) -> ProcessFailure:
    return ProcessFailure(local_rank=0, pid=123, exitcode=exitcode, error_file="<N/A>")


def test_rank_failures_are_summarised_in_one_line():
    assert describe_failure(ChildFailedError("train.py", {0: failure(1), 1: failure(1)})) == (None, 1)
    line, code = describe_failure(ChildFailedError("train.py", {0: failure(-signal.SIGKILL)}))
    assert line == "error: rank 0 of train.py was killed by SIGKILL (SIGKILL often means out of memory)"
    assert code == 128 + signal.SIGKILL
    assert describe_failure(ChildFailedError("train.py", {1: failure(3)})) == (
        "error: rank 1 of train.py ended with exit code 3", 3)


@pytest.mark.parametrize("env,message", [
    ({"MAX_RESTARTS": "three"}, "error: MAX_RESTARTS must be a non-negative integer, got 'three'"),
    ({"NNODES": "2"}, "error: NNODES=2 needs MASTER_ADDR (the first node's address) and a master_port"),
])
def test_bad_restart_or_node_settings_stop_before_torchrun(env, message):
    result = subprocess.run(["bash", "run_train.sh", "scripts/train_voc.py", "0", "1"], cwd=ROOT,
                            env={**launcher_env(), **env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message)
