"""Logging of every run: one "excel" logger, console on every rank, log file on rank 0.

Modules log through ``logging.getLogger(__name__)`` (children of "excel"), so one call here routes them all.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from excel.utils.distributed import is_main


def setup_logging(log_file: str | os.PathLike | None = None) -> logging.Logger:
    """Console + file logging on rank 0; other ranks log warnings only to the console."""
    logger = logging.getLogger("excel")
    logger.handlers.clear()
    logger.setLevel(logging.INFO if is_main() else logging.WARNING)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if log_file is not None and is_main():
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger
