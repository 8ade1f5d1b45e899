"""Training that survives failures, end to end on the CPU (gloo, 2 processes, the tiny CLIP and VOC): a killed
worker restarted by torchrun, two agents meeting in either order, SIGTERM → save → requeue through the
Slurm script (srun and scontrol replaced by stand-ins). Each run's final head is compared with one
uninterrupted run."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixtures_clip import tiny_overrides

from excel.modeling.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MAX_ITERS = 24
INTERVAL = 6                     # checkpoint (and validation) interval
RUN_TIMEOUT_S = 240

SRUN_SHIM = """#!/usr/bin/env bash
# stand-in for srun: the command once per node ($SLURM_NNODES), all on this machine; SIGTERM is forwarded
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < ${SLURM_NNODES:-1}; i++)); do SLURM_NODEID=$i SLURM_PROCID=$i "$@" & pids+=($!); done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
status=0
for p in "${pids[@]}"; do
    while :; do wait "$p"; s=$?; kill -0 "$p" 2>/dev/null || break; done
    [ "$s" -eq 0 ] || status=$s
done
exit $status
"""
SCONTROL_SHIM = """#!/usr/bin/env bash
# stand-in for scontrol: this machine is the only host; requeue requests are written to $SHIM_LOG
case "$1" in
    show) echo 127.0.0.1 ;;
    requeue) echo "requeue $2" >> "$SHIM_LOG" ;;
esac
"""


def run_overrides(tiny_clip_files, tiny_voc, work: Path) -> list[str]:
    return tiny_overrides(tiny_clip_files, work.parent / "cache", **{
        "dataset.root": tiny_voc, "train.batch_size": 2, "train.max_iters": MAX_ITERS,
        "train.eval_interval": INTERVAL, "train.log_interval": 3, "train.eval_max_images": 1, "lvc.start_iter": 12,
        "tse.enabled": False, "work_dir": work})


def launcher_env(**extra) -> dict:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for name in ("MASTER_ADDR", "MASTER_PORT", "NNODES", "RUN_ID", "MAX_RESTARTS"):
        env.pop(name, None)
    env.update({key: str(value) for key, value in extra.items()})
    return env


def start(args, env, log: Path) -> subprocess.Popen:
    out = open(log, "w")
    return subprocess.Popen(["bash", *map(str, args)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, log: Path) -> str:
    process.wait(timeout=RUN_TIMEOUT_S)
    text = log.read_text()
    assert process.returncode == 0, text[-3000:]
    return text


def wait_for(path: Path, process: subprocess.Popen, log: Path, text: str | None = None) -> None:
    """Until ``path`` exists (and holds ``text``)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not path.exists() or (text is not None and text not in path.read_text()):
        assert process.poll() is None, f"ended before {path.name}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {path}"
        time.sleep(0.05)


def workers(agent: int) -> dict[int, int]:
    """{LOCAL_RANK: pid} of the processes torchrun's agent ``agent`` started."""
    children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
        if "LOCAL_RANK" in env:
            ranks[int(env["LOCAL_RANK"])] = pid
    return ranks


def final_head(work: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(work / "checkpoints" / f"iter_{MAX_ITERS:06d}.pth")["head"]


def assert_same_head(work: Path, reference: Path) -> None:
    head, expected = final_head(work), final_head(reference)
    assert head.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(head[key], expected[key], rtol=0, atol=1e-6, msg=key)


def logged_iterations(work: Path) -> list[int]:
    return [int(n) for n in re.findall(rf"iter (\d+)/{MAX_ITERS} ", (work / "train.log").read_text())]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference(tiny_clip_files, tiny_voc, tmp_path_factory):
    """An uninterrupted run: one agent, 2 CPU processes."""
    work = tmp_path_factory.mktemp("elastic") / "reference"
    log = work.parent / "reference.log"
    finish(start(["run_train.sh", "scripts/train_voc.py", "0", "2", "", "",
                  *run_overrides(tiny_clip_files, tiny_voc, work)], launcher_env(), log), log)
    return work


def test_killed_worker_is_restarted_and_resumes_from_the_newest_checkpoint(reference, tiny_clip_files, tiny_voc):
    work = reference.parent / "killed"
    log = work.parent / "killed.log"
    agent = start(["run_train.sh", "scripts/train_voc.py", "0", "2", "", "",
                   *run_overrides(tiny_clip_files, tiny_voc, work)], launcher_env(MAX_RESTARTS=1), log)
    wait_for(work / "checkpoints" / f"iter_{INTERVAL:06d}.pth", agent, log)
    os.kill(workers(agent.pid)[1], signal.SIGKILL)
    finish(agent, log)
    resumed = re.findall(r"restarted job: resuming from its newest checkpoint \S+iter_(\d+)\.pth",
                         (work / "train.log").read_text())
    assert len(resumed) == 1 and INTERVAL <= int(resumed[0]) < MAX_ITERS
    iterations = logged_iterations(work)
    assert iterations.count(3) == 1 and iterations[-1] == MAX_ITERS     # nothing trained again from scratch
    assert_same_head(work, reference)


def test_two_agents_started_in_either_order_train_like_one(reference, tiny_clip_files, tiny_voc):
    work = reference.parent / "two_nodes"
    port = free_port()
    agents = []
    for node in (1, 0):                     # the second node first; c10d lets either start the rendezvous
        log = work.parent / f"node{node}.log"
        env = launcher_env(NNODES=2, NODE_RANK=node, MASTER_ADDR="127.0.0.1")
        agents.append((start(["run_train.sh", "scripts/train_voc.py", "0", "1", port, "",
                              *run_overrides(tiny_clip_files, tiny_voc, work)], env, log), log))
        time.sleep(2)
    for agent, log in agents:
        finish(agent, log)
    assert logged_iterations(work)[-1] == MAX_ITERS
    assert_same_head(work, reference)


def test_slurm_job_saves_on_sigterm_is_requeued_and_resumes(reference, tiny_clip_files, tiny_voc):
    work = reference.parent / "slurm"
    shims = reference.parent / "shims"
    shims.mkdir()
    for name, text in (("srun", SRUN_SHIM), ("scontrol", SCONTROL_SHIM)):
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    requests = reference.parent / "requeue.log"
    env = launcher_env(PATH=f"{shims}{os.pathsep}{os.environ['PATH']}", SHIM_LOG=requests, SLURM_JOB_ID=4242,
                       SLURM_NNODES=1, SLURM_SUBMIT_DIR=ROOT, GPUS_PER_NODE=2)
    job = ["scripts/slurm_train.sbatch", "scripts/train_voc.py", "", *run_overrides(tiny_clip_files, tiny_voc, work)]
    log = work.parent / "slurm_1.log"
    batch = start(job, env, log)
    wait_for(work / "train.log", batch, log, text=f"iter {INTERVAL + 3}/{MAX_ITERS} ")     # between checkpoints
    batch.send_signal(signal.SIGTERM)                  # what Slurm sends before the time limit or on pre-emption
    text = finish(batch, log)
    stopped = re.findall(r"stopped by SIGTERM after iteration (\d+), saved as (\S+);", text)
    assert stopped, text[-3000:]
    iteration, saved = int(stopped[0][0]), Path(stopped[0][1])
    assert INTERVAL + 3 <= iteration < MAX_ITERS and saved.name == f"iter_{iteration:06d}.pth"
    assert load_checkpoint(work / "checkpoints" / "latest.pth")["iteration"] == iteration
    assert requests.read_text() == "requeue 4242\n"

    log = work.parent / "slurm_2.log"
    finish(start(job, env, log), log)                 # the requeued job: the same command
    assert f"--resume auto: resuming from the newest checkpoint {saved}" in (work / "train.log").read_text()
    assert logged_iterations(work).count(3) == 1
    assert_same_head(work, reference)
