"""Helper processes do not outlive a killed parent: CRF workers and the ranks torchrun starts."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GONE_WITHIN_S = 5.0

CRF_PARENT = """
import json, multiprocessing, signal, time

if __name__ == "__main__":
    # Ctrl-C as in an interactive shell: a test run started as a background job (`cmd &` in a script)
    # hands its children SIGINT already ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from excel.evaluation.segment import crf_executor     # here: the spawned workers re-run this file

    executor = crf_executor(2)
    jobs = [executor.submit(time.sleep, 0.3) for _ in range(2)]
    [job.result() for job in jobs]
    try:                                                   # Ctrl-C may come as soon as the pids are out
        print(json.dumps([child.pid for child in multiprocessing.active_children()]), flush=True)
        time.sleep(120)
    except KeyboardInterrupt:
        executor.shutdown()
        print("stopped", flush=True)
"""

RANK_SCRIPT = """
import os, sys, time
from pathlib import Path
from excel.cli import config_parser, run_with_config

def job(cfg, args):
    Path(sys.argv[1]).write_text(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    run_with_config(config_parser("sleep", "configs/voc.yaml"), job, ["device=cpu"])
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until_gone(pids, timeout_s: float = GONE_WITHIN_S) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


def kill_left_over(pids) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_crf_workers_end_with_a_killed_parent(tmp_path, signum):
    script = tmp_path / "crf_parent.py"
    script.write_text(textwrap.dedent(CRF_PARENT))
    parent = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                              text=True)
    workers = []
    try:
        workers = json.loads(parent.stdout.readline())
        assert len(workers) == 2 and all(alive(pid) for pid in workers)
        parent.send_signal(signum)
        parent.wait(timeout=10)
        assert wait_until_gone(workers) == []
    finally:
        parent.kill()
        parent.wait()
        kill_left_over(workers)


def test_ctrl_c_reaches_the_parent_only(tmp_path):
    """Ctrl-C signals the whole process group: the workers leave it to the parent, which stops the pool."""
    script = tmp_path / "crf_parent.py"
    script.write_text(textwrap.dedent(CRF_PARENT))
    parent = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    workers = []
    try:
        workers = json.loads(parent.stdout.readline())
        os.killpg(parent.pid, signal.SIGINT)
        out, err = parent.communicate(timeout=30)
        assert out.strip() == "stopped" and parent.returncode == 0
        assert "Traceback" not in err and "KeyboardInterrupt" not in err
        assert wait_until_gone(workers) == []
    finally:
        parent.kill()
        parent.wait()
        kill_left_over(workers)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_rank_ends_with_a_killed_agent(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT))
    pid_file = tmp_path / "rank.pid"
    agent = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1",
                              f"--master_port={free_port()}", str(script), str(pid_file)],
                             cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rank = None
    try:
        deadline = time.monotonic() + 120
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            assert agent.poll() is None, "torchrun ended before the rank started"
            time.sleep(0.2)
        rank = int(pid_file.read_text())
        agent.kill()
        agent.wait(timeout=10)
        assert wait_until_gone([rank]) == []
    finally:
        agent.kill()
        agent.wait()
        if rank is not None:
            kill_left_over([rank])
