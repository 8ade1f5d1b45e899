"""End a helper process when its parent dies, so that no worker outlives a killed parent.

A process whose parent is killed (SIGKILL included) is re-parented (to init or a sub-reaper), so its
``os.getppid()`` changes; a daemon thread polls for that and ends the process. Used by the CRF worker
processes and by the ranks torchrun starts (torchrun puts them in their own session, so killing the
agent alone would leave them training).
"""
from __future__ import annotations

import os
import signal
import threading
import time

PARENT_POLL_S = 0.5        # how often the parent is checked; a dead parent's helpers end within this
PARENT_GONE_EXIT_CODE = 1


def exit_with_parent(parent_pid: int | None = None, poll_s: float = PARENT_POLL_S) -> None:
    """Start a daemon thread that ends this process once ``parent_pid`` (default: the current parent) is
    no longer its parent. Returns at once."""
    parent = os.getppid() if parent_pid is None else parent_pid

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.write(2, f"parent process {parent} is gone; process {os.getpid()} exits\n".encode())
        os._exit(PARENT_GONE_EXIT_CODE)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def init_helper_process(parent_pid: int) -> None:
    """Initializer of pool worker processes: Ctrl-C (sent to the whole process group) is left to the parent,
    which stops the pool, instead of a traceback from every worker; and the worker ends with its parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(parent_pid)
