"""What every entry point shares: --config and overrides, console logging, and user errors as one line.

A user's mistake (a bad key, a missing file, a corrupt image, a checkpoint for another model) or a
file-system refusal (no permission, a full disk, a read-only folder) ends the command with
``error: <what and how to fix it>`` on stderr and exit code 1, never a traceback. Any other exception
is a programming error and keeps its traceback.
"""
from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from omegaconf import DictConfig

from excel.config import ConfigError, load_config
from excel.io import DatasetError
from excel.modeling.checkpoint import CheckpointError
from excel.modeling.clip_loader import CLIPLoadError
from excel.modeling.description_file import DescriptionError
from excel.modeling.text_enrichment import KnowledgeBankError
from excel.utils.distributed import DeviceError, PeerLostError
from excel.utils.logging import setup_logging
from excel.utils.parent_watch import exit_with_parent
from excel.utils.stop import TrainingStopped

T = TypeVar("T")

USER_ERRORS = (ConfigError, CheckpointError, CLIPLoadError, DatasetError, DescriptionError, KnowledgeBankError,
               FileNotFoundError, PeerLostError, DeviceError)

INTERRUPTED_EXIT_CODE = 130                # what shells report for a command ended by Ctrl-C (128 + SIGINT)
TORCHRUN_VARIABLE = "TORCHELASTIC_RUN_ID"   # set by torchrun in the environment of every rank it starts

# File-system refusals that the user fixes (permissions, space, paths), with how to fix them.
_OS_ERROR_FIXES = {
    errno.EACCES: "check the permissions of that path or choose another output folder (work_dir=... or --out)",
    errno.EPERM: "check the permissions of that path or choose another output folder (work_dir=... or --out)",
    errno.EROFS: "the file system is read-only; choose another output folder (work_dir=... or --out)",
    errno.ENOSPC: "free disk space there or choose another output folder (work_dir=... or --out)",
    errno.EDQUOT: "the disk quota is used up; free space or choose another output folder (work_dir=... or --out)",
    errno.EFBIG: "the file is too large for that file system; choose another output folder",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "the path is a folder where a file is expected; check the path",
    errno.EEXIST: "it is in the way (a file where a folder is needed?); remove it or choose another path",
    errno.ENAMETOOLONG: "use a shorter path",
}
# What torch's checkpoint writer says when the disk fills up under it (a RuntimeError, not an OSError).
_TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed writing", "file write failed")


def work_dir_given(overrides: Sequence[str]) -> bool:
    """Whether the command line sets ``work_dir`` (``--resume CKPT`` otherwise continues in the checkpoint's)."""
    return any(item.split("=", 1)[0].strip() == "work_dir" for item in overrides)


def config_parser(description: str, default_config: str | os.PathLike) -> argparse.ArgumentParser:
    """An argument parser with --config (default ``default_config``) and ``section.key=value`` overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=str(default_config), help=f"YAML config (default: {default_config})")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return parser


def _free_space(folder: Path) -> str:
    """'N MiB free' on the file system of ``folder`` (or of its nearest existing parent)."""
    folder = folder.resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
    except OSError:
        return "free space unknown"


def describe_system_error(err: BaseException, out_dir: Path) -> str | None:
    """One line for a file-system refusal (naming the path, or ``out_dir`` when the error names none) or
    a failed torch write; None for anything else (a programming error, which keeps its traceback)."""
    if isinstance(err, OSError) and err.errno in _OS_ERROR_FIXES:
        paths = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
        where = paths or f"a file under {out_dir}"
        space = ""
        if err.errno == errno.ENOSPC:
            space = f" ({_free_space(Path(err.filename).parent if err.filename else out_dir)})"
        return f"{where}: {err.strerror or err}{space}; {_OS_ERROR_FIXES[err.errno]}"
    if isinstance(err, RuntimeError) and any(mark in str(err) for mark in _TORCH_WRITE_FAILURES):
        detail = " ".join(str(err).split())[-160:]
        return (f"writing a file under {out_dir} failed (torch: ...{detail}); the disk is probably full "
                f"({_free_space(out_dir)}) or the file system refused the write; free space or choose another "
                f"output folder (work_dir=... or --out)")
    return None


def run_command(job: Callable[[], T], out_dir: Callable[[], str | os.PathLike | None] = lambda: None,
                user_errors: tuple[type[Exception], ...] = ()) -> T:
    """``job()``, the one exit path of every entry point for what the user can fix.

    A user error (:data:`USER_ERRORS` or ``user_errors``) or a file-system refusal ends with one
    ``error:`` line on stderr and exit code 1, Ctrl-C with exit code 130; any other exception keeps its
    traceback. ``out_dir()`` is the folder blamed for a refusal that names no path (default: the current one).
    A run stopped by SIGTERM after saving ends with its one ``stopped by SIGTERM ...`` line and exit code 143.
    """
    try:
        return job()
    except TrainingStopped as stopped:          # saved and stopped on a signal: not an error, but not done
        print(stopped, file=sys.stderr)
        sys.exit(stopped.exit_code)
    except Exception as err:
        message = describe_system_error(err, Path(out_dir() or "."))
        if message is None and isinstance(err, (*USER_ERRORS, *user_errors)):
            message = str(err)
        if message is None:
            raise
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)


def run_with_config(parser: argparse.ArgumentParser, job: Callable[[DictConfig, argparse.Namespace], object],
                    argv: Sequence[str] | None = None) -> None:
    """Parse (options and overrides in any order), load the config, run ``job(cfg, args)`` through
    :func:`run_command` (the output folder is --out, else the config's work_dir)."""
    args = parser.parse_intermixed_args(argv)
    if TORCHRUN_VARIABLE in os.environ:
        exit_with_parent()        # torchrun starts ranks in their own session: end them if the agent dies
    setup_logging()
    loaded: list[DictConfig] = []

    def load_and_run() -> None:
        loaded.append(load_config(args.config, args.overrides))
        job(loaded[0], args)

    run_command(load_and_run, lambda: getattr(args, "out", None) or (loaded[0].work_dir if loaded else None))
