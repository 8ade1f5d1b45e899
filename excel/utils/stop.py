"""Stop a run cleanly on SIGTERM (a scheduler's pre-emption or time limit, torchrun's agent shutting down).

The signal only sets a flag; the training loop asks :meth:`StopRequest.agreed` once per iteration, which
takes the flag's maximum over all ranks, so that every rank stops after the same iteration (and the run
can save it) even when the signal reached only some of them.
"""
from __future__ import annotations

import signal
import threading

from excel.utils import distributed as dist

SIGNAL_EXIT_BASE = 128                 # shells report death by signal N as 128 + N


class TrainingStopped(Exception):
    """The run stopped on a signal after saving; ``exit_code`` is the shell's code for that signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = SIGNAL_EXIT_BASE + signum


class StopRequest:
    """While active (a context manager), SIGTERM sets a flag instead of ending the process."""

    def __init__(self, signum: int = signal.SIGTERM):
        self.signum = signum
        self.requested = False
        self._previous = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def agreed(self) -> bool:
        """Whether any rank has been asked to stop (a collective: every rank must call it)."""
        return dist.max_over_ranks(int(self.requested)) > 0
