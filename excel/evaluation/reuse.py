"""Reusing the per-image outputs of an earlier run (``infer.skip_existing``) only when they were made with the
same settings.

Every inference run records, in ``<out>/settings.json``, the settings that decide the content of its
per-image files: the resolved config without the keys that do not (:data:`IGNORED_KEYS`,
:data:`IGNORED_SECTIONS`), the split and the SHA-256 of the checkpoint file. A later run with
``infer.skip_existing=true`` reuses that folder's files only when its own settings are the same; otherwise
it stops, naming every differing key, before anything is written (``config.yaml`` keeps describing the
files that are there). A run that redoes a folder made with other settings removes the record first and
writes its own only when every image is done, so an interrupted redo is never taken for a finished one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from excel.io import DatasetError, write_json
from excel.modeling.checkpoint import CheckpointError

RECORD_FILE = "settings.json"
# Keys that change where files go, which images are processed or how fast, never what a file holds.
IGNORED_KEYS = ("infer.skip_existing", "infer.save_overlays", "crf.enabled", "crf.workers", "device", "work_dir",
                "dataset.split", "dataset.train_split", "dataset.val_split", "dataset.split_dir", "tse.cache_dir")
IGNORED_SECTIONS = ("train", "optim")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def checkpoint_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a checkpoint file's bytes (hex)."""
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def output_settings(cfg: DictConfig, checkpoint: str | os.PathLike | None, split: str) -> dict[str, Any]:
    """{dotted key: value} of every setting that decides the per-image outputs, plus ``split`` and
    ``checkpoint`` (its SHA-256, or None for training-free pseudo labels)."""
    flat = _flatten(OmegaConf.to_container(cfg, resolve=True))
    settings = {key: value for key, value in flat.items()
                if key not in IGNORED_KEYS and key.split(".")[0] not in IGNORED_SECTIONS}
    settings["split"] = split
    settings["checkpoint"] = checkpoint_digest(checkpoint) if checkpoint is not None else None
    return settings


def check_reuse(out_dir: Path, settings: dict[str, Any], skip_existing: bool, folders: Sequence[Path]) -> bool:
    """Whether the per-image files in ``folders`` (if any) were made with ``settings``.

    With ``skip_existing`` a folder whose files were not is refused with a :class:`DatasetError`: a record
    with other values (each differing key is named with its old → new value), or files without a record.
    """
    record = out_dir / RECORD_FILE
    fix = "set infer.skip_existing=false to redo every image, or choose another output folder"
    has_files = any(folder.is_dir() and any(folder.iterdir()) for folder in folders)
    if not record.is_file():
        if has_files and skip_existing:
            raise DatasetError(f"infer.skip_existing=true, but {out_dir} holds outputs without a record of the "
                               f"settings they were made with ({record} is missing); {fix}")
        return not has_files
    try:
        stored = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        stored = f"unreadable ({error})"
    if not isinstance(stored, dict):
        if skip_existing:
            raise DatasetError(f"{record} is not a settings record ({stored}); {fix}")
        return False
    differing = [f"{key} {stored.get(key)!r} → {settings.get(key)!r}"
                 for key in sorted(set(stored) | set(settings)) if stored.get(key) != settings.get(key)]
    if differing and skip_existing:
        raise DatasetError(f"infer.skip_existing=true, but the outputs in {out_dir} were made with other settings "
                           f"({'; '.join(differing)}); {fix}")
    return not differing


def begin_record(out_dir: Path, settings: dict[str, Any], consistent: bool) -> None:
    """Before the first per-image file: record ``settings`` when every file there was made with them
    (``consistent``), else remove the old record until :func:`record_settings` at the end of the run."""
    if consistent:
        record_settings(out_dir, settings)
    else:
        (out_dir / RECORD_FILE).unlink(missing_ok=True)


def record_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """Write ``<out_dir>/settings.json``."""
    write_json(out_dir / RECORD_FILE, settings)
