"""torchrun for the launchers (run_train.sh, infer_lam.sh, infer_seg_*.sh): the same arguments, without
torchrun's traceback when a rank fails.

A rank that stops on a user error has already printed its one ``error: ...`` line and exited with code
1; torchrun would add its own log line and a traceback of the agent. Here that failure ends quietly
with exit code 1; any other failure (a crash, a rank killed by a signal) ends with one line naming the
rank and how it ended, and the rank's exit code. Ranks end themselves if this process is killed
(see excel/utils/parent_watch.py).

Restarted worker groups (``--max-restarts``) of a rendezvous with several agents get a fresh key-value store
for every attempt (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``), so that no rank reads the keys of the failed
attempt (see excel/utils/distributed.py).

    python -m excel.utils.launch [torchrun options] script.py [script arguments]
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Sequence

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun_main

from excel.utils.stop import SIGNAL_EXIT_BASE

USER_ERROR_EXIT_CODE = 1                 # what excel.cli gives a user error (after printing it)
_AGENT_LOGGER = "torch.distributed.elastic.multiprocessing.api"
_FRESH_STORE_PER_ATTEMPT = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


def _not_a_user_error_report(record: logging.LogRecord) -> bool:
    """Drop the agent's "failed (exitcode: 1)" record: the rank has explained itself already."""
    return not (str(record.msg).startswith("failed (exitcode") and record.args
                and record.args[0] == USER_ERROR_EXIT_CODE)


def describe_failure(error: ChildFailedError) -> tuple[str | None, int]:
    """The line to print (None when every rank failed with a reported user error) and the exit code."""
    rank, failure = error.get_first_failure()
    codes = {f.exitcode for f in error.failures.values()}
    if codes == {USER_ERROR_EXIT_CODE}:
        return None, USER_ERROR_EXIT_CODE
    if failure.exitcode < 0:
        name = signal.Signals(-failure.exitcode).name
        return (f"error: rank {rank} of {error.name} was killed by {name} (SIGKILL often means out of memory)",
                SIGNAL_EXIT_BASE - failure.exitcode)
    return f"error: rank {rank} of {error.name} ended with exit code {failure.exitcode}", failure.exitcode or 1


def main(argv: Sequence[str] | None = None) -> int:
    """torchrun with ``argv``; returns the exit code."""
    logging.getLogger(_AGENT_LOGGER).addFilter(_not_a_user_error_report)
    os.environ.setdefault(_FRESH_STORE_PER_ATTEMPT, "1")
    try:
        torchrun_main(list(argv) if argv is not None else None)
    except ChildFailedError as error:
        line, code = describe_failure(error)
        if line:
            print(line, file=sys.stderr)
        return code
    except SignalException as error:
        print(f"error: stopped by {error.sigval.name}; the ranks were told to stop", file=sys.stderr)
        return SIGNAL_EXIT_BASE + int(error.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
