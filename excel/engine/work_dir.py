"""A training run's folder: which checkpoint a start continues from, one run at a time, the checkpoints kept.

A work_dir holds the checkpoints of one *run*: a fresh start and every resume of it share the run's id,
recorded in each checkpoint with the *job* that wrote it (torchrun's ``TORCHELASTIC_RUN_ID``) and the
resolved config. :func:`plan_start` decides, on rank 0, where a start begins:

- ``--resume CKPT``: that checkpoint, in its own work_dir unless one is given; a work_dir that holds
  another run's checkpoints is refused;
- ``--resume auto``: the newest complete checkpoint in work_dir, or a fresh start when it holds none;
- no ``--resume``: a fresh start; refused when work_dir holds checkpoints, unless ``train.overwrite``
  (which removes them first);
- and in each case, when torchrun has restarted the workers of this job: the newest complete checkpoint
  that this job wrote with this config, whatever ``train.overwrite`` says (a restart before the first
  checkpoint starts as the job did).

:func:`check_work_dir` then refuses a work_dir inside a dataset, and a resume that has nothing left to train or
whose optimisation settings differ from the checkpoint's (unless ``train.resume_allow_changes``).

Files in ``<work_dir>/checkpoints``: ``iter_NNNNNN.pth`` (one full write per save), ``latest.pth`` (a link
to the newest), ``best.pth`` and ``best.json`` (the checkpoint with the best decoder mIoU on the val
split, and its score); ``<work_dir>/train.lock`` is held by the running job's rank 0.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from excel.config import ConfigError
from excel.config_schema import DEFAULTS
from excel.data.layout import dataset_folders
from excel.io import check_output_folder, write_text
from excel.modeling.checkpoint import TRAINING_KEYS, check_training_state, load_checkpoint

log = logging.getLogger(__name__)

RESUME_TRAIN_KEYS = ("max_iters", "batch_size", "seed", "ema_decay")     # with optim.*: fixed for a resumed run
WORK_DIR_ENTRIES = ("checkpoints", "metrics", "tensorboard", "config.yaml", "train.log")   # what a run writes

AUTO = "auto"                                   # --resume auto
CHECKPOINTS = "checkpoints"
LATEST = "latest.pth"
BEST = "best.pth"
BEST_RECORD = "best.json"
LOCK = "train.lock"
_ITERATION_FILE = re.compile(r"iter_(\d+)\.pth")


@dataclass(frozen=True)
class StartPlan:
    """Where a start begins: ``resume`` (a checkpoint, or None for iteration 0) in ``work_dir``."""

    work_dir: str
    resume: str | None
    run_id: str                 # the run this start continues (or begins)
    clear: bool                 # remove the checkpoints in work_dir first (a fresh start with train.overwrite)
    note: str                   # the decision, for the log


def checkpoint_folder(work_dir: str | os.PathLike) -> Path:
    return Path(work_dir) / CHECKPOINTS


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:06d}.pth"


def iteration_checkpoints(folder: Path) -> list[Path]:
    """The ``iter_N.pth`` files of ``folder`` (regular files, not links), oldest iteration first."""
    found = [(int(m.group(1)), p) for p in folder.glob("iter_*.pth")
             if (m := _ITERATION_FILE.fullmatch(p.name)) and p.is_file() and not p.is_symlink()]
    return [p for _, p in sorted(found)]


def run_record(run_id: str, job: str | None) -> dict[str, str | None]:
    """The ``run`` entry of a checkpoint: the run's id and the job (torchrun run id) that wrote it."""
    return {"id": run_id, "job": job}


def _peek(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it is a complete training checkpoint, else None (with a warning).
    Memory-mapped: only the entries that are read are loaded."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated, corrupt, not a checkpoint: skipped
        log.warning("skipping %s: it cannot be read (%s)", path, (str(err).strip().splitlines() or [""])[0])
        return None
    if not isinstance(state, dict) or any(key not in state for key in TRAINING_KEYS):
        log.warning("skipping %s: not a complete training checkpoint", path)
        return None
    return state


def newest_complete(folder: Path, job: str | None = None, config: str | None = None,
                    mine_only: bool = False) -> tuple[Path, dict] | None:
    """(path, state) of the newest complete checkpoint in ``folder``; with ``mine_only`` the newest written
    by ``job`` with the resolved ``config`` (YAML text)."""
    for path in reversed(iteration_checkpoints(folder)):
        state = _peek(path)
        if state is None:
            continue
        if mine_only and ((state.get("run") or {}).get("job") != job or state.get("config") != config):
            continue
        return path, state
    return None


def _run_id(state: Mapping[str, Any]) -> str | None:
    run = state.get("run")
    return run.get("id") if isinstance(run, Mapping) else None


def _own_work_dir(checkpoint: Path, state: Mapping[str, Any], default: str) -> str:
    """The work_dir a checkpoint belongs to: the folder above its ``checkpoints/`` folder, else the one in
    its config, else ``default``."""
    real = checkpoint.resolve()
    if real.parent.name == CHECKPOINTS:
        return str(real.parent.parent)
    stored = OmegaConf.create(state["config"]).get("work_dir") if isinstance(state.get("config"), str) else None
    return str(stored or default)


def _config_text(cfg: DictConfig, work_dir: str) -> str:
    copy = cfg.copy()
    copy.work_dir = work_dir
    return OmegaConf.to_yaml(copy, resolve=True)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.pth")) if folder.is_dir() else []


def plan_start(cfg: DictConfig, resume: str | None, follow_checkpoint: bool, restarted: bool,
               job: str | None) -> StartPlan:
    """Decide where this start begins (see the module docstring); reads files, writes nothing.

    ``resume``: None, ``"auto"`` or a checkpoint path; ``follow_checkpoint``: a checkpoint path continues in
    the checkpoint's own work_dir (no work_dir was given); ``restarted``: torchrun restarted this job's
    workers; ``job``: this job's id (:func:`excel.utils.distributed.job_id`).
    """
    if resume not in (None, AUTO):
        return _plan_resume(cfg, Path(resume), follow_checkpoint, restarted, job)
    work_dir = str(cfg.work_dir)
    folder = checkpoint_folder(work_dir)
    if restarted:
        mine = newest_complete(folder, job, _config_text(cfg, work_dir), mine_only=True)
        if mine is not None:
            return StartPlan(work_dir, str(mine[0]), _run_id(mine[1]) or uuid.uuid4().hex, False,
                             f"restarted job: resuming from its newest checkpoint {mine[0]}")
    listed = _listing(folder)
    if resume == AUTO:
        newest = newest_complete(folder)
        if newest is not None:
            return StartPlan(work_dir, str(newest[0]), _run_id(newest[1]) or uuid.uuid4().hex, False,
                             f"--resume auto: resuming from the newest checkpoint {newest[0]}")
        if iteration_checkpoints(folder):
            raise ConfigError(f"--resume auto: no checkpoint in {folder} can be read ({', '.join(listed)}); "
                              "move them away to start afresh, or resume from another with --resume CKPT")
        return StartPlan(work_dir, None, uuid.uuid4().hex, False,
                         f"--resume auto: no checkpoint in {folder} yet, starting at iteration 0")
    if listed and not cfg.train.overwrite:
        raise ConfigError(f"work_dir {work_dir} already holds checkpoints ({', '.join(listed)} in {folder}); "
                          f"continue that run with --resume auto (or --resume {folder / listed[-1]}), choose "
                          "another work_dir, or replace them with train.overwrite=true")
    note = "restarted job: no checkpoint of it yet, starting at iteration 0" if restarted else "starting at iteration 0"
    return StartPlan(work_dir, None, uuid.uuid4().hex, bool(listed), note)


def _plan_resume(cfg: DictConfig, source: Path, follow_checkpoint: bool, restarted: bool,
                 job: str | None) -> StartPlan:
    state = load_checkpoint(source)
    check_training_state(state, str(source))
    own = _own_work_dir(source, state, str(cfg.work_dir))
    work_dir = own if follow_checkpoint else str(cfg.work_dir)
    folder = checkpoint_folder(work_dir)
    run_id = _run_id(state)
    if Path(work_dir).resolve() != Path(own).resolve() and iteration_checkpoints(folder):
        newest = newest_complete(folder)
        if newest is None or run_id is None or _run_id(newest[1]) != run_id:
            raise ConfigError(f"--resume {source}: work_dir {work_dir} holds the checkpoints of another run "
                              f"({', '.join(_listing(folder))} in {folder}); resume into the checkpoint's own "
                              f"work_dir {own} (leave work_dir unset) or into an empty folder")
    if restarted:
        mine = newest_complete(folder, job, _config_text(cfg, work_dir), mine_only=True)
        if mine is not None:
            return StartPlan(work_dir, str(mine[0]), run_id or uuid.uuid4().hex, False,
                             f"restarted job: resuming from its newest checkpoint {mine[0]}")
    return StartPlan(work_dir, str(source), run_id or uuid.uuid4().hex, False, f"resuming from {source}")


def clear_checkpoints(folder: Path) -> None:
    """Remove a previous run's checkpoints (``iter_*.pth``, ``latest.pth``, ``best.*``) from ``folder``."""
    removed = [p for p in folder.glob("*") if p.name in (LATEST, BEST, BEST_RECORD)
               or _ITERATION_FILE.fullmatch(p.name)]
    for path in removed:
        path.unlink()
    if removed:
        log.info("train.overwrite: removed the previous run's %d checkpoint file(s) from %s", len(removed), folder)


def prepare_work_dir(work_dir: Path, clear: bool) -> "RunLock":
    """Before anything is trained (rank 0): create and lock ``work_dir`` (a second run into it is refused),
    remove a replaced run's checkpoints (``clear``), check that checkpoints can be written."""
    work_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(work_dir)
    folder = checkpoint_folder(work_dir)
    if clear:
        clear_checkpoints(folder)
    check_writable(folder)
    return lock


def check_writable(folder: Path) -> None:
    """Create ``folder`` and write (then remove) a small file in it: an unwritable checkpoint folder is an
    OSError (naming the path) now rather than at the first save."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_check.") as probe:
        probe.write(b"\0" * 4096)
        probe.flush()
        os.fsync(probe.fileno())


class RunLock:
    """An exclusive lock on ``<work_dir>/train.lock`` for the life of a training run (released by the system
    when the process ends, however it ends). A second run into the same work_dir is refused."""

    def __init__(self, work_dir: str | os.PathLike):
        self.path = Path(work_dir) / LOCK
        self._file = open(self.path, "a+", encoding="utf-8")      # closing it (or its garbage) unlocks
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read(200).strip() or "unknown process"
            self._file.close()
            raise ConfigError(f"work_dir {Path(work_dir)} is in use by another training run ({holder}; "
                              f"{self.path}); wait for it to end or choose another work_dir") from None
        self._file.truncate(0)
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self._file.flush()

    def release(self) -> None:
        self._file.close()


def point_to(link: Path, target: Path) -> None:
    """Make ``link`` a relative symbolic link to ``target`` (same folder), replaced atomically; a hard link
    where the file system has no symbolic links. Either way no data is copied."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(target.name, tmp)
    except OSError:
        os.link(target, tmp)
    os.replace(tmp, link)


def record_best(folder: Path, iteration: int, miou: float) -> bool:
    """Note the val mIoU of ``iter_<iteration>.pth``; it becomes ``best.pth`` when it beats the recorded best.
    Returns whether it did."""
    record = folder / BEST_RECORD
    best = json.loads(record.read_text()) if record.is_file() else None
    checkpoint = folder / checkpoint_name(iteration)
    if best is not None and best["miou"] >= miou and (folder / best["checkpoint"]).is_file():
        return False
    write_text(record, json.dumps({"checkpoint": checkpoint.name, "iteration": iteration, "miou": miou}) + "\n")
    point_to(folder / BEST, checkpoint)
    return True


def prune_checkpoints(folder: Path, keep: int | None) -> list[Path]:
    """Remove all but the last ``keep`` ``iter_*.pth`` (None: keep all) and the best; returns the removed."""
    if keep is None:
        return []
    record = folder / BEST_RECORD
    best = json.loads(record.read_text())["checkpoint"] if record.is_file() else None
    removed = [p for p in iteration_checkpoints(folder)[:-keep] if p.name != best]
    for path in removed:
        path.unlink()
        log.info("removed %s (train.keep_checkpoints=%d, best in %s)", path.name, keep, BEST_RECORD)
    return removed


def keep_best(folder: Path, iteration: int, miou: float, keep: int | None) -> None:
    """After the validation of ``iter_<iteration>.pth``: :func:`record_best`, then :func:`prune_checkpoints`."""
    if record_best(folder, iteration, miou):
        log.info("best decoder mIoU so far (%.2f): %s", miou, checkpoint_name(iteration))
    prune_checkpoints(folder, keep)


def per_process_batch_note(state: Mapping[str, Any], source: str) -> str | None:
    """A warning for resuming a multi-process checkpoint written when ``train.batch_size`` counted the images of
    each process (before the ``precision`` key existed): its run took batch_size × processes images per step,
    a resume takes batch_size in all. None for every other checkpoint."""
    ranks = len(state.get("rng_ranks") or [])
    if ranks < 2 or not isinstance(state.get("config"), str):
        return None
    stored = OmegaConf.create(state["config"])
    if "precision" in stored:
        return None
    batch = OmegaConf.select(stored, "train.batch_size")
    return (f"--resume {source}: this checkpoint was written when train.batch_size counted the images of each "
            f"process, so its {ranks} processes took {batch} × {ranks} = {batch * ranks} images per iteration; "
            f"now train.batch_size is the batch over all processes. To continue with the run's own batch, resume "
            f"with train.batch_size={batch * ranks} train.resume_allow_changes=true")


def check_work_dir(cfg: DictConfig, resume: str | None, state: dict | None) -> None:
    """Refuse a resume whose optimisation settings differ from the checkpoint's (unless
    train.resume_allow_changes) or that has nothing left to train, and a work_dir inside a dataset's image /
    mask folders. (Whether the work_dir may be started in at all is :func:`plan_start`'s decision.)"""
    check_output_folder(cfg.work_dir, dataset_folders(Path(cfg.dataset.root)) if cfg.dataset.root is not None else (),
                        inside=WORK_DIR_ENTRIES)
    if state is not None and int(state["iteration"]) >= cfg.train.max_iters:
        raise ConfigError(f"--resume {resume}: the checkpoint is at iteration {int(state['iteration'])} and "
                          f"train.max_iters={cfg.train.max_iters}: nothing is left to train; to train further, "
                          "raise train.max_iters with train.resume_allow_changes=true")
    if state is None or not isinstance(state.get("config"), str) or cfg.train.resume_allow_changes:
        return
    changes = changed_resume_keys(OmegaConf.create(state["config"]), cfg)
    if changes:
        listed = ", ".join(f"{key} {old!r} → {new!r}" for key, old, new in changes)
        raise ConfigError(f"--resume {resume}: the checkpoint was trained with other settings ({listed}); "
                          "resume with the checkpoint's values, or set train.resume_allow_changes=true to "
                          "continue with the new ones")


def changed_resume_keys(stored: DictConfig, cfg: DictConfig) -> list[tuple[str, object, object]]:
    """(key, checkpoint value, configured value) of every optim.* key and of train.max_iters /
    batch_size / seed / ema_decay whose value differs from the checkpoint's config (a key that an older
    checkpoint's config lacks counts with its default)."""
    keys = [f"optim.{key}" for key in cfg.optim] + [f"train.{key}" for key in RESUME_TRAIN_KEYS]
    defaults = OmegaConf.create(DEFAULTS)
    changes = []
    for key in keys:
        old = OmegaConf.select(stored, key, default=OmegaConf.select(defaults, key))
        new = OmegaConf.select(cfg, key)
        old, new = (OmegaConf.to_container(v) if isinstance(v, ListConfig) else v for v in (old, new))
        if old != new:
            changes.append((key, old, new))
    return changes
